"""jaxsep.compilation_cache: a second process finds the first one's compiled program on disk (a
count of JAX's cache hits, not a timing); a corrupt entry is compiled afresh; the switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxsep import compilation_cache

# One process: enable the cache (as the CLI does), compile and run one jitted function, print
# JAX's cache events and the result. The minimum compile time is lowered so that this tiny
# program is cached at all (JAX skips programs that compile in under a second).
SCRIPT = """
import json, warnings
import jax, jax.numpy as jnp
from jax._src import monitoring
from jaxsep.compilation_cache import enable_compilation_cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
events = []
monitoring.register_event_listener(lambda event, **_: events.append(event))
folder = enable_compilation_cache()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    value = float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum())
print(json.dumps({
    "folder": None if folder is None else str(folder),
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "misses": events.count("/jax/compilation_cache/cache_misses"),
    "warnings": [str(w.message) for w in caught],
    "value": value,
}))
"""


def _run(env_value: str, data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAXSEP_COMPILATION_CACHE=env_value, JAXSEP_DATA_DIR=str(data_dir))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_cache_and_a_corrupt_entry_is_recompiled(tmp_path):
    first = _run("1", tmp_path)
    folder = tmp_path / "xla"
    assert first["folder"] == str(folder)
    assert first["misses"] >= 1 and first["hits"] == 0  # the function and jnp.ones' program
    entries = [p for p in folder.iterdir() if p.is_file()]
    assert entries, "the first process wrote no cache entry"

    second = _run("1", tmp_path)
    assert second["hits"] == first["misses"] and second["misses"] == 0
    assert second["value"] == first["value"]

    for entry in entries:  # a torn write or a foreign file: unreadable, not a crash
        entry.write_bytes(b"not an executable")
    third = _run("1", tmp_path)
    assert third["hits"] == 0
    assert third["value"] == first["value"]
    assert any("cache" in message.lower() for message in third["warnings"]), third["warnings"]


def test_a_path_chooses_the_folder_and_zero_turns_it_off(tmp_path):
    chosen = tmp_path / "elsewhere"
    assert _run(str(chosen), tmp_path)["folder"] == str(chosen)
    off = _run("0", tmp_path)
    assert off["folder"] is None and off["hits"] == 0 and off["misses"] == 0


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_off_values(monkeypatch, value):
    monkeypatch.setenv(compilation_cache.ENV_VAR, value)
    assert compilation_cache.compilation_cache_dir() is None
