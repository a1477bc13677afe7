"""``impl="auto"`` by measurement: the candidate lowerings timed once per shape, the fastest kept.

The first time ``auto`` meets a key (backend, device kind, jax and jaxsep versions, op, input
and kernel shapes and dtypes, strides, dilation, padding, groups, data format, precision), the
candidates' forward+backward (the value and the gradients with respect to the input and the
kernel, each compiled with ``jax.jit``) run on concrete arrays of that shape and dtype, under
``jax.ensure_compile_time_eval()``: outside the trace that asked, whose jaxpr gets only the
chosen lowering. The choice is kept in memory and in ``autotune.json`` in the jaxsep cache
folder, so it is made once per machine and then deterministic. The fixed rule's choice stays
unless another candidate is faster by :data:`MARGIN`, so noise cannot undo a measured rule.
``JAXSEP_AUTOTUNE=0``, :func:`set_autotune` or the :func:`autotune` context manager switch
back to the fixed rules. How and why: ``docs/design/lowerings.md`` ("auto by measurement").
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.metadata
import json
import math
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from jaxsep._choices import CONV_IMPLS, GROUPED_IMPLS, IMPLS
from jaxsep._geometry import Geometry
from jaxsep._io import atomic_write, cache_dir, env_flag

__all__ = ["autotune", "cache_file", "choose", "enabled", "measure", "set_autotune"]

ENV_VAR = "JAXSEP_AUTOTUNE"
CACHE_ENV_VAR = "JAXSEP_AUTOTUNE_CACHE"  # a file path; default <jaxsep cache folder>/autotune.json
CACHE_NAME = "autotune.json"
# Bump when what a cached choice means changes (its key, or the candidates' meaning).
CACHE_FORMAT = 1
# Every lowering a cached entry may name, per op.
LOWERINGS = {
    "conv": tuple(i for i in CONV_IMPLS if i != "auto"),
    "depthwise_conv": tuple(i for i in IMPLS if i != "auto"),
    "grouped_conv": tuple(i for i in GROUPED_IMPLS if i != "auto"),
}

# Another candidate replaces the fixed rule's choice only when it is this many times faster.
MARGIN = 1.10
# A candidate whose first call is this many times slower than the best first call so far is
# dropped without further calls (XLA's depthwise backward on the CPU: > 1 s at batch 128).
SLOW_FACTOR = 3.0
ROUNDS = 3  # blocks per candidate, the order rotated between rounds
BLOCK = 3  # calls per block at least; the first of each block is dropped (it warms caches)
# Fast calls get longer blocks, up to MAX_BLOCK calls, so that a block lasts about MIN_BLOCK_S:
# a median of three 0.1 ms calls says little on a busy CPU.
MIN_BLOCK_S = 0.02
MAX_BLOCK = 50
BUDGET_S = 2.0  # seconds of timed blocks per key after the first calls, roughly

_context: contextvars.ContextVar[bool | None] = contextvars.ContextVar("jaxsep_autotune", default=None)
_process_setting: bool | None = None
_memory: dict[str, str] = {}
_lock = threading.RLock()
_warned = False
_clock: Callable[[], float] = time.perf_counter  # the timer of choose(); tests replace it


# --------------------------------------------------------------------------------------------
# The switch


def enabled() -> bool:
    """Whether ``impl="auto"`` measures: the innermost :func:`autotune` context, else
    :func:`set_autotune`'s setting, else ``$JAXSEP_AUTOTUNE`` (default on)."""
    inner = _context.get()
    if inner is not None:
        return inner
    if _process_setting is not None:
        return _process_setting
    return env_flag(ENV_VAR, True)


def set_autotune(enabled: bool | None) -> None:
    """Turns measuring on or off for the process (``None``: back to ``$JAXSEP_AUTOTUNE``).

    Off, ``impl="auto"`` follows today's fixed rules (reproducible across machines). It acts
    when an op is traced: a function already compiled keeps the lowerings it was traced with.
    """
    global _process_setting
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_autotune: enabled must be a bool or None, but got {enabled!r}")
    _process_setting = enabled


@contextlib.contextmanager
def autotune(enabled: bool = True) -> Iterator[None]:
    """A context in which ``impl="auto"`` measures (or, ``autotune(False)``, follows the fixed
    rules); it overrides :func:`set_autotune` and ``$JAXSEP_AUTOTUNE`` in this thread::

        with jaxsep.autotune(False):
            y = jax.jit(model)(x)  # traced with the fixed rules
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"autotune: enabled must be a bool, but got {enabled!r}")
    token = _context.set(enabled)
    try:
        yield
    finally:
        _context.reset(token)


# --------------------------------------------------------------------------------------------
# Measuring


def _time_call(call: Callable[[], Any], clock: Callable[[], float]) -> float:
    start = clock()
    call()
    return clock() - start


def measure(
    calls: Mapping[str, Callable[[], Any]],
    default: str,
    *,
    clock: Callable[[], float] = time.perf_counter,
    rounds: int = ROUNDS,
    block: int = BLOCK,
    budget_s: float = BUDGET_S,
) -> tuple[str, dict[str, float | None]]:
    """Times synchronized zero-argument ``calls`` (one per candidate) and picks one.

    Each candidate's first call is timed alone (``default`` first); a candidate whose first
    call takes over :data:`SLOW_FACTOR` times the best first call so far is dropped there.
    Then up to ``rounds`` rounds time a block of ``block`` calls (more for fast calls, see
    :data:`MIN_BLOCK_S`) of each remaining candidate, the order rotated, the first call of a
    block dropped; fewer rounds (and blocks of two) when the first calls say they would take
    over ``budget_s``. A candidate's figure is the median over rounds of its blocks' medians.
    ``default`` wins unless another candidate is :data:`MARGIN` times faster. A candidate
    whose call raises is out.

    Returns:
      ``(winner, seconds)``: ``seconds`` per candidate (its first call when dropped, None when
      it raised).
    """
    order = [default] + [name for name in calls if name != default]
    first: dict[str, float | None] = {}
    alive = []
    for name in order:
        try:
            seconds = _time_call(calls[name], clock)
        except Exception:  # a candidate that cannot run here (e.g. out of memory) is out
            first[name] = None
            continue
        best = min((t for t in first.values() if t is not None), default=None)
        first[name] = seconds
        if best is None or seconds <= SLOW_FACTOR * best:
            alive.append(name)
    if not alive:
        return default, dict(first)
    quickest = max(min(first[name] for name in alive), 1e-9)
    block = max(block, min(MAX_BLOCK, math.ceil(MIN_BLOCK_S / quickest) + 1))
    round_cost = sum(first[name] for name in alive) * block
    if round_cost > budget_s:
        block, planned = 2, 1
    else:
        planned = max(1, min(rounds, int(budget_s // max(round_cost, 1e-9))))
    per_round: dict[str, list[float]] = {name: [] for name in alive}
    for r in range(planned):
        for name in alive[r % len(alive) :] + alive[: r % len(alive)]:
            times = [_time_call(calls[name], clock) for _ in range(block)]
            per_round[name].append(statistics.median(times[1:]))
    seconds = dict(first)
    seconds.update({name: statistics.median(v) for name, v in per_round.items()})
    fastest = min(alive, key=lambda name: seconds[name])
    if default in alive and seconds[fastest] * MARGIN >= seconds[default]:
        return default, seconds
    return fastest, seconds


def _fwd_bwd_calls(
    run: Callable[[str, jax.Array, jax.Array], jax.Array],
    candidates: Sequence[str],
    x_aval: Any,
    kernel_aval: Any,
) -> dict[str, Callable[[], Any]]:
    """One synchronized call per candidate: its compiled forward+backward on concrete random
    arrays of ``x_aval``'s and ``kernel_aval``'s shapes and dtypes (to be run, like this, under
    ``jax.ensure_compile_time_eval()``)."""
    key = jax.random.key(0)
    x = jax.random.normal(key, x_aval.shape, x_aval.dtype)
    kernel = jax.random.normal(jax.random.fold_in(key, 1), kernel_aval.shape, kernel_aval.dtype)
    out = jax.eval_shape(functools.partial(run, candidates[0]), x, kernel)
    cotangent = jax.random.normal(jax.random.fold_in(key, 2), out.shape, out.dtype)

    def fwd_bwd(impl, x, kernel, cotangent):
        # The value is returned with the gradients, as a training step keeps it.
        out, vjp = jax.vjp(functools.partial(run, impl), x, kernel)
        return out, vjp(cotangent)

    calls = {}
    for impl in candidates:
        try:
            compiled = jax.jit(functools.partial(fwd_bwd, impl)).lower(x, kernel, cotangent).compile()
        except Exception:  # pragma: no cover - a candidate that does not compile here
            calls[impl] = _raises
            continue
        calls[impl] = functools.partial(
            lambda c: jax.block_until_ready(c(x, kernel, cotangent)), compiled
        )
    return calls


def _raises() -> None:
    raise RuntimeError("this candidate did not compile")


# --------------------------------------------------------------------------------------------
# The cache


def cache_file() -> Path:
    """``$JAXSEP_AUTOTUNE_CACHE``, else ``autotune.json`` in the jaxsep cache folder
    (``$JAXSEP_DATA_DIR``, else ``~/.cache/jaxsep``)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else cache_dir() / CACHE_NAME


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _valid_entry(key: str, entry: Any) -> bool:
    """An entry names one of its op's lowerings."""
    try:
        op = json.loads(key)["op"]
    except (ValueError, TypeError, KeyError):
        return False
    return isinstance(entry, dict) and entry.get("impl") in LOWERINGS.get(op, ())


def _read(path: Path) -> dict[str, dict]:
    """The valid entries of the cache file ({} when there is none). A file that is not one,
    of another format, or with invalid entries is ignored (whole or those entries) with one
    warning per process; the next write replaces it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as error:
        _warn_once(f"jaxsep autotune: cannot read {path} ({error}); measuring again")
        return {}
    try:
        content = json.loads(text)
        if content.get("format") != CACHE_FORMAT or not isinstance(content.get("entries"), dict):
            raise ValueError(f"not an autotune cache of format {CACHE_FORMAT}")
    except (ValueError, AttributeError) as error:
        _warn_once(f"jaxsep autotune: ignoring {path} ({error}); it will be rebuilt")
        return {}
    entries = {k: e for k, e in content["entries"].items() if _valid_entry(k, e)}
    if len(entries) < len(content["entries"]):
        _warn_once(f"jaxsep autotune: ignoring {len(content['entries']) - len(entries)} invalid "
                   f"entries of {path}; they will be measured again")
    return entries


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serializes read-modify-write of ``path`` between processes (where ``fcntl`` exists);
    readers need no lock, since the file is always replaced whole."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Windows: a rare lost entry is re-measured
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _store(path: Path, key: str, entry: dict) -> None:
    """Adds ``entry`` to the cache file, merged with what another process may have written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path):
            entries = _read(path)
            entries[key] = entry
            content = {"format": CACHE_FORMAT, "entries": dict(sorted(entries.items()))}
            atomic_write(path, json.dumps(content, indent=1) + "\n")
    except OSError as error:
        _warn_once(f"jaxsep autotune: cannot write {path} ({error}); choices are kept in memory")


def clear_memory() -> None:
    """Forgets the choices made or read in this process (the file stays): as a new process."""
    _memory.clear()


# --------------------------------------------------------------------------------------------
# Choosing


@functools.cache
def _jaxsep_version() -> str:
    try:
        return importlib.metadata.version("jaxsep")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_key(op: str, x: Any, kernel: Any, geometry: Geometry, **static: Any) -> str:
    """The measurement's key: where it runs, what runs (shapes, dtypes, window geometry) and
    ``static`` (groups, precision), as canonical JSON."""
    device = jax.devices()[0]
    fields = {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", device.platform),
        "jax": jax.__version__,
        "jaxsep": _jaxsep_version(),
        "op": op,
        "x": [list(x.shape), str(x.dtype)],
        "kernel": [list(kernel.shape), str(kernel.dtype)],
        "strides": list(geometry.strides),
        "dilation": list(geometry.dilation),
        "padding": [list(p) for p in geometry.padding],
        "data_format": geometry.data_format,
        **{name: value if isinstance(value, (int, str)) else str(value)
           for name, value in static.items()},
    }
    return json.dumps(fields, sort_keys=True)


def choose(
    op: str,
    x: Any,
    kernel: Any,
    geometry: Geometry,
    candidates: Sequence[str],
    default: str,
    run: Callable[[str, jax.Array, jax.Array], jax.Array],
    **static: Any,
) -> str:
    """The fastest of ``candidates`` for this key: from memory, else the cache file, else
    measured (:func:`measure` of each ``run(impl, x, kernel)``'s forward+backward) and stored.

    ``x`` and ``kernel`` may be tracers: only their shapes and dtypes are read; the measurement
    runs on concrete arrays outside the caller's trace, timed by ``_clock``.
    """
    if len(candidates) < 2:
        return default
    key = cache_key(op, x, kernel, geometry, **static)
    with _lock:
        impl = _memory.get(key)
        if impl is None:
            entry = _read(cache_file()).get(key)
            impl = entry["impl"] if entry else None
        if impl not in candidates:  # absent, or valid for the op but not for this key
            if impl is not None:
                _warn_once(f"jaxsep autotune: cached {impl!r} is not a candidate here; measuring again")
            with jax.ensure_compile_time_eval():
                calls = _fwd_bwd_calls(run, candidates, x, kernel)
                impl, seconds = measure(calls, default, clock=_clock)
                del calls
            if any(seconds.get(name) is not None for name in candidates):
                ms = {name: None if s is None else round(1e3 * s, 4) for name, s in seconds.items()}
                _store(cache_file(), key, {"impl": impl, "default": default, "ms": ms})
        _memory[key] = impl
        return impl
