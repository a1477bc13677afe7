"""``impl="auto"`` by measurement (jaxsep._lowering.autotune), timed by a fake clock.

No test here measures real speed: the clock is injected and advances by a cost per candidate,
so which lowering wins is decided by the test. The suite runs with ``JAXSEP_AUTOTUNE=0``
(conftest.py); the ``tuning`` fixture turns measuring on with a cache file in ``tmp_path``.
"""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsep
from conftest import rand
from jaxsep import ops
from jaxsep._lowering import autotune

X, K = (2, 6, 6, 4), (3, 3, 1, 4)  # depthwise: NHWC input, (*K, 1, C) kernel
GX, GK, G = (2, 6, 6, 8), (3, 3, 2, 8), 4  # grouped: C // G = 2, so "taps" is a candidate


class FakeClock:
    """A timer that only moves when a fake call advances it."""

    def __init__(self):
        self.now = 0.0
        self.calls: dict[str, int] = {}

    def __call__(self) -> float:
        return self.now

    def call(self, name: str, seconds: float):
        def run():
            self.calls[name] = self.calls.get(name, 0) + 1
            self.now += seconds

        return run


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Measuring on, a fresh cache file and memory, one warning allowed again, a fake clock;
    returns ``(clock, set_costs)``: ``set_costs({impl: seconds})`` makes the candidates'
    calls advance the clock by those costs instead of running (``set_costs(None)`` runs them
    for real, still timed by the fake clock)."""
    monkeypatch.setenv(autotune.CACHE_ENV_VAR, str(tmp_path / "autotune.json"))
    monkeypatch.setattr(autotune, "_warned", False)
    clock = FakeClock()
    monkeypatch.setattr(autotune, "_clock", clock)
    costs = {"value": {}}
    real = autotune._fwd_bwd_calls

    def calls(run, candidates, x, kernel):
        if costs["value"] is None:
            built = real(run, candidates, x, kernel)
            return {n: _then(built[n], clock.call(n, 1e-3)) for n in candidates}
        return {n: clock.call(n, costs["value"][n]) for n in candidates}

    monkeypatch.setattr(autotune, "_fwd_bwd_calls", calls)
    autotune.clear_memory()
    with jaxsep.autotune(True):
        yield clock, lambda value: costs.__setitem__("value", value)
    autotune.clear_memory()


def _then(first, second):
    def run():
        first()
        second()

    return run


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured, but the choice should have come from a cache or a rule")


def _entries(path) -> dict:
    return json.loads(path.read_text())["entries"]


def _depthwise_jaxpr(impl: str) -> str:
    def user(x, k):
        return jnp.sum(jnp.tanh(ops.depthwise_conv(x, k, impl=impl)))

    return str(jax.make_jaxpr(jax.jit(user))(rand(X), rand(K, seed=1)))


# ------------------------------------------------------------------ measure()


def test_measure_picks_the_cheaper_candidate():
    clock = FakeClock()
    calls = {"taps": clock.call("taps", 0.06), "xla": clock.call("xla", 0.03)}
    winner, seconds = autotune.measure(calls, "taps", clock=clock)
    assert winner == "xla"
    assert seconds == {"taps": pytest.approx(0.06), "xla": pytest.approx(0.03)}
    # one first call, then ROUNDS blocks of BLOCK calls each
    assert clock.calls == {n: 1 + autotune.ROUNDS * autotune.BLOCK for n in calls}


def test_measure_lengthens_the_blocks_of_fast_calls():
    clock = FakeClock()
    calls = {"taps": clock.call("taps", 1e-5), "xla": clock.call("xla", 2e-5)}
    assert autotune.measure(calls, "taps", clock=clock)[0] == "taps"
    assert clock.calls == {n: 1 + autotune.ROUNDS * autotune.MAX_BLOCK for n in calls}


def test_measure_keeps_the_default_within_the_margin():
    clock = FakeClock()
    nearly = 1e-3 / autotune.MARGIN * 1.01  # faster, but by less than the margin
    winner, _ = autotune.measure(
        {"taps": clock.call("taps", 1e-3), "xla": clock.call("xla", nearly)}, "taps", clock=clock
    )
    assert winner == "taps"


def test_measure_drops_a_candidate_whose_first_call_is_far_slower():
    clock = FakeClock()
    slow = 1e-3 * autotune.SLOW_FACTOR * 2
    calls = {"taps": clock.call("taps", 1e-3), "xla": clock.call("xla", slow)}
    winner, seconds = autotune.measure(calls, "taps", clock=clock)
    assert winner == "taps" and clock.calls["xla"] == 1 and seconds["xla"] == pytest.approx(slow)


def test_measure_stays_within_the_budget_and_survives_a_failing_candidate():
    clock = FakeClock()

    def broken():
        raise RuntimeError("out of memory")

    calls = {"xla": broken, "taps": clock.call("taps", 1.5)}
    winner, seconds = autotune.measure(calls, "xla", clock=clock, budget_s=2.0)
    assert winner == "taps" and seconds["xla"] is None
    assert clock.calls["taps"] == 1 + 2  # its first call, then one block of two calls


# ------------------------------------------------------------------ through the ops


@pytest.mark.parametrize("cheap", ["xla", "taps"])
def test_auto_runs_the_cheaper_lowering_and_caches_it(tuning, cheap):
    clock, set_costs = tuning
    set_costs({"xla": 1e-3, "taps": 1e-3, cheap: 1e-4})
    x, k = rand(X), rand(K, seed=1)
    got = ops.depthwise_conv(x, k, impl="auto")
    np.testing.assert_array_equal(got, ops.depthwise_conv(x, k, impl=cheap))
    (entry,) = _entries(autotune.cache_file()).values()
    assert entry["impl"] == cheap and set(entry["ms"]) == {"xla", "taps"}
    # Known now: no second measurement, in memory or (a "new process") from the file.
    calls = dict(clock.calls)
    ops.depthwise_conv(x, k, impl="auto")
    autotune.clear_memory()
    ops.depthwise_conv(x, k, impl="auto")
    assert clock.calls == calls


def test_grouped_auto_measures_its_candidates(tuning):
    clock, set_costs = tuning
    set_costs({"xla": 3e-3, "split": 2e-3, "taps": 1e-3})
    x, k = rand(GX), rand(GK, seed=1)
    got = ops.grouped_conv(x, k, G, impl="auto")
    np.testing.assert_array_equal(got, ops.grouped_conv(x, k, G, impl="taps"))
    assert set(clock.calls) == {"xla", "split", "taps"}
    # Wide groups leave "taps" out.
    set_costs({"xla": 1e-3, "split": 2e-3})
    wide = ops.grouped_conv(rand((2, 6, 6, 40)), rand((1, 1, 20, 8), seed=1), 2, impl="auto")
    np.testing.assert_array_equal(
        wide, ops.grouped_conv(rand((2, 6, 6, 40)), rand((1, 1, 20, 8), seed=1), 2, impl="xla")
    )
    assert {e["impl"] for e in _entries(autotune.cache_file()).values()} == {"taps", "xla"}


@pytest.mark.parametrize("cheap", ["xla", "patches"])
def test_conv_auto_measures_patches_where_they_are_narrow(tuning, cheap):
    """A stem (27 patch channels) is measured; a conv with over 576 patch channels is not, and
    runs "xla"."""
    clock, set_costs = tuning
    set_costs({"xla": 1e-3, "patches": 1e-3, cheap: 1e-4})
    x, k = rand((2, 8, 8, 3)), rand((3, 3, 3, 32), seed=1)
    np.testing.assert_array_equal(ops.conv(x, k), ops.conv(x, k, impl=cheap))
    (entry,) = _entries(autotune.cache_file()).values()
    assert entry["impl"] == cheap and set(entry["ms"]) == {"xla", "patches"}
    calls = dict(clock.calls)
    wide_x, wide_k = rand((2, 4, 4, 65)), rand((3, 3, 65, 8), seed=1)  # 585 patch channels
    np.testing.assert_array_equal(ops.conv(wide_x, wide_k), ops.conv(wide_x, wide_k, impl="xla"))
    assert clock.calls == calls and len(_entries(autotune.cache_file())) == 1


def test_results_equal_across_lowerings(tuning):
    """Whichever lowering wins, auto's value and gradients are that lowering's, and the
    candidates agree with each other (float32 tolerance)."""
    _, set_costs = tuning
    x, k = rand(GX), rand(GK, seed=1)
    ct = rand(ops.grouped_conv(x, k, G, impl="xla").shape, seed=2)

    def value_and_grads(impl):
        out, vjp = jax.vjp(lambda x, k: ops.grouped_conv(x, k, G, impl=impl), x, k)
        return (out, *vjp(ct))

    results = {}
    for impl in ("xla", "split", "taps"):
        autotune.clear_memory()
        autotune.cache_file().unlink(missing_ok=True)
        set_costs({"xla": 1e-3, "split": 1e-3, "taps": 1e-3, impl: 1e-5})
        results[impl] = value_and_grads(impl)
        for got, want in zip(value_and_grads("auto"), results[impl]):
            np.testing.assert_array_equal(got, want)
    for impl in ("split", "taps"):
        for got, want in zip(results[impl], results["xla"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_traced_jaxpr_holds_only_the_chosen_lowering(tuning):
    """The real candidates are compiled and run while a jitted user function is traced; its
    jaxpr is the one it has with the chosen impl written out: no timing, no random inputs."""
    clock, set_costs = tuning
    set_costs(None)  # real compiled calls; the fake clock decides ("taps" is the CPU default)
    traced = _depthwise_jaxpr("auto")
    assert set(clock.calls) == {"xla", "taps"}  # both really ran during the trace
    (entry,) = _entries(autotune.cache_file()).values()
    assert traced == _depthwise_jaxpr(entry["impl"])
    other = "xla" if entry["impl"] == "taps" else "taps"
    assert traced != _depthwise_jaxpr(other)
    for word in ("random", "threefry", "device_put"):
        assert word not in traced


# ------------------------------------------------------------------ the switch


def test_switched_off_follows_the_fixed_rule_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "_fwd_bwd_calls", _no_measuring)
    monkeypatch.setenv(autotune.CACHE_ENV_VAR, str(tmp_path / "autotune.json"))
    autotune.clear_memory()
    rule = "taps" if jax.default_backend() == "cpu" else "xla"
    x, k = rand(X), rand(K, seed=1)
    monkeypatch.setenv(autotune.ENV_VAR, "0")
    assert not autotune.enabled()
    assert _depthwise_jaxpr("auto") == _depthwise_jaxpr(rule)
    monkeypatch.setenv(autotune.ENV_VAR, "1")
    with jaxsep.autotune(False):
        assert not autotune.enabled()
        np.testing.assert_array_equal(
            ops.depthwise_conv(x, k, impl="auto"), ops.depthwise_conv(x, k, impl=rule)
        )
    try:
        jaxsep.set_autotune(False)
        assert not autotune.enabled()
        with jaxsep.autotune(True):  # the context wins over the process setting
            assert autotune.enabled()
    finally:
        jaxsep.set_autotune(None)
    assert autotune.enabled()  # back to $JAXSEP_AUTOTUNE
    assert not (tmp_path / "autotune.json").exists()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        jaxsep.set_autotune("no")


# ------------------------------------------------------------------ the cache file


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"format": 0, "entries": {}}), json.dumps([1, 2])],
    ids=["corrupt", "stale-format", "not-a-dict"],
)
def test_a_bad_cache_file_is_ignored_with_one_warning_and_rebuilt(tuning, content):
    _, set_costs = tuning
    path = autotune.cache_file()
    path.write_text(content)
    set_costs({"xla": 1e-4, "taps": 1e-3})
    x, k = rand(X), rand(K, seed=1)
    with pytest.warns(RuntimeWarning, match="ignoring") as caught:
        ops.depthwise_conv(x, k, impl="auto")
        autotune.clear_memory()
        ops.depthwise_conv(rand((2, 5, 5, 4)), k, impl="auto")  # a second key, one more read
    assert len(caught) == 1
    assert {e["impl"] for e in _entries(path).values()} == {"xla"}  # rebuilt, both keys
    assert len(_entries(path)) == 2


def test_an_invalid_entry_is_measured_again(tuning):
    clock, set_costs = tuning
    set_costs({"xla": 1e-3, "taps": 1e-4})
    x, k = rand(X), rand(K, seed=1)
    ops.depthwise_conv(x, k, impl="auto")
    path = autotune.cache_file()
    content = json.loads(path.read_text())
    (key,) = content["entries"]
    content["entries"][key]["impl"] = "cuda"  # not a lowering of the op
    content["entries"]["not a key"] = {"impl": "taps"}
    path.write_text(json.dumps(content))
    autotune.clear_memory()
    set_costs({"xla": 1e-4, "taps": 1e-3})
    with pytest.warns(RuntimeWarning, match="2 invalid entries"):
        np.testing.assert_array_equal(
            ops.depthwise_conv(x, k, impl="auto"), ops.depthwise_conv(x, k, impl="xla")
        )
    assert _entries(path) == {key: _entries(path)[key]} and _entries(path)[key]["impl"] == "xla"


def test_writes_merge_with_another_process(tuning):
    """An entry another process wrote since this one read the file is kept."""
    _, set_costs = tuning
    set_costs({"xla": 1e-3, "taps": 1e-4})
    path = autotune.cache_file()
    ops.depthwise_conv(rand(X), rand(K, seed=1), impl="auto")
    (mine,) = _entries(path)
    other = json.dumps({**json.loads(mine), "x": [[9, 6, 6, 4], "float32"]}, sort_keys=True)
    path.write_text(json.dumps({"format": autotune.CACHE_FORMAT,
                                "entries": {other: {"impl": "xla"}}}))
    autotune.clear_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.depthwise_conv(rand(X), rand(K, seed=1), impl="auto")
    assert set(_entries(path)) == {mine, other}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]
