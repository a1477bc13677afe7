"""jaxsep.host_memory: glibc keeps freed blocks for reuse; importing jaxsep and the command
line apply it."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxsep import cli, host_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocates a block of argv[2] bytes from a worker thread (as XLA:CPU's temporaries are),
# touches its first 64 MiB and frees it, twice, and prints the minor page faults of the second
# round: a block served by a fresh mmap faults on every touched page again, a reused one
# hardly at all.
_FAULTS = textwrap.dedent(
    """
    import ctypes, resource, sys, threading
    from jaxsep import host_memory
    applied = host_memory.reuse_host_memory() if sys.argv[1] == "on" else None
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = int(sys.argv[2])
    def once():
        p = libc.malloc(size)
        ctypes.memset(p, 1, 64 << 20)
        libc.free(p)
    def worker(out):
        once()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        once()
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    out = []
    t = threading.Thread(target=worker, args=(out,))
    t.start(); t.join()
    print(applied, out[0])
    """
)


def _second_round_faults(
    mode: str, tunables: str | None = None, opt_out: str | None = "0", size: int = 64 << 20
) -> tuple[str, int]:
    """``opt_out``: $JAXSEP_REUSE_HOST_MEMORY in the child (None: unset, so that importing
    jaxsep applies the setting)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", host_memory.ENV_VAR)}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    if opt_out is not None:
        env[host_memory.ENV_VAR] = opt_out
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode, str(size)], capture_output=True, text=True, env=env,
        timeout=120, check=True,
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


PAGES = (64 << 20) // 4096  # touched per round


@pytest.mark.skipif(not GLIBC, reason="the setting exists only under glibc")
# 3 GiB: over the largest mmap threshold mallopt takes (a C int), as EfficientNet-B0's training
# step's scratch is at batch 128; only its first 64 MiB are touched, so it costs no more.
@pytest.mark.parametrize("size", [64 << 20, 3 << 30], ids=["64MiB", "3GiB"])
def test_freed_block_is_reused_instead_of_faulted_in_again(size):
    applied, faults_on = _second_round_faults("on", size=size)
    _, faults_off = _second_round_faults("off", size=size)
    assert applied == "True"
    assert faults_off > PAGES // 2, faults_off  # glibc's default: a fresh mapping every time
    assert faults_on < PAGES // 20, faults_on  # reused: (almost) no page touched anew


@pytest.mark.skipif(not GLIBC, reason="the setting exists only under glibc")
def test_importing_jaxsep_applies_it_unless_opted_out():
    # "off" calls nothing itself: only the import can have applied the setting.
    _, faults = _second_round_faults("off", opt_out=None)
    assert faults < PAGES // 20, faults
    _, faults = _second_round_faults("off", opt_out="0")
    assert faults > PAGES // 2, faults


@pytest.mark.skipif(not GLIBC, reason="the setting exists only under glibc")
def test_glibc_tunables_string_has_the_same_effect():
    # The documented alternative for other programs: the same settings read at process start.
    _, faults = _second_round_faults("off", host_memory.GLIBC_TUNABLES, size=3 << 30)
    assert faults < PAGES // 20, faults


def test_without_glibc_nothing_is_applied(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.reuse_host_memory() is False


def test_a_refused_setting_is_reported(monkeypatch):
    class FakeMallopt:
        def __init__(self):
            self.calls = []

        def __call__(self, param, value):
            self.calls.append((param, value))
            return 0 if param == host_memory._M_ARENA_MAX else 1

    class FakeLibc:
        mallopt = FakeMallopt()

    monkeypatch.setattr(host_memory, "_glibc", lambda: FakeLibc)
    assert host_memory.reuse_host_memory() is False
    assert FakeLibc.mallopt.calls == [(-8, 1), (-4, 0), (-1, -1)]


@pytest.mark.parametrize("value, applied", [("0", False), ("off", False), ("1", True), (None, True)])
def test_env_opt_out(monkeypatch, value, applied):
    calls = []
    monkeypatch.setattr(host_memory, "reuse_host_memory", lambda: calls.append(1) or True)
    if value is None:
        monkeypatch.delenv(host_memory.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(host_memory.ENV_VAR, value)
    assert host_memory.reuse_host_memory_from_env() is applied
    assert len(calls) == int(applied)


def test_cli_commands_that_compute_apply_it_first(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(host_memory, "reuse_host_memory_from_env", lambda: calls.append("reuse"))
    from jaxsep import sweep

    def fake_sweep(args):
        calls.append("sweep")
        return 0

    monkeypatch.setattr(sweep, "run_sweep_command", fake_sweep)
    assert cli.main(["sweep", str(tmp_path / "x.toml")]) == 0
    assert calls == ["reuse", "sweep"]
    calls.clear()
    assert cli.main(["info", "mobilenet_v1", "--width", "0.25"]) == 0
    assert calls == []
