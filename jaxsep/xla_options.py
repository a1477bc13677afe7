"""XLA compiler options that make jaxsep's programs faster on a given backend.

XLA:CPU vectorises its fused loops for 256-bit registers unless told otherwise, even on CPUs
with 512-bit ones (AVX-512). The depthwise taps lowering (:mod:`jaxsep._taps`) is made of such
loops, so asking for 512-bit vectors (``xla_cpu_prefer_vector_width=512``) speeds it up on
CPUs that have them; on a CPU without (a 2-core AVX2 AMD EPYC, three runs of
``experiments/bench_ops.py``) depthwise forward+backward with and without the option differed
by no more than run-to-run noise (0.94-1.01x the time). Results
change only by float rounding: a vectorised reduction sums in a different order with more
lanes (elementwise loops give identical bits). Measured on
the 2-core AVX-512 CPU (same process, batch 128): depthwise forward+backward 0.91-0.93x the
time on three MobileNet layers, and a whole MobileNetV1-CIFAR training step 0.91x (width 1.0)
and 0.95x (width 0.5). Other XLA:CPU options tried (concurrency-optimised scheduler, tiling
propagation) made no difference.

These are per-compilation options, not process-wide flags, so jaxsep can use them for its
own programs without changing anyone else's: ``jaxsep train``/``sweep``/``eval`` and the
benchmarks compile with them, and users pass them to their own ``jax.jit``::

    step = jax.jit(train_step, compiler_options=jaxsep.compiler_options())

or to ``jax.jit(f).lower(...).compile(compiler_options=...)``. The same setting can be made
for a whole process, before JAX starts, with ``XLA_FLAGS=--xla_cpu_prefer_vector_width=512``.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["compiler_options"]

_BY_BACKEND: dict[str, dict[str, Any]] = {
    "cpu": {"xla_cpu_prefer_vector_width": 512},
}


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The compiler options jaxsep uses on ``backend`` (default: JAX's default backend).

    Returns a new dict, empty where jaxsep knows of nothing better than XLA's defaults (every
    backend but ``"cpu"`` for now), for ``jax.jit(..., compiler_options=...)`` or
    ``Lowered.compile(compiler_options=...)``.
    """
    if backend is None:
        backend = jax.default_backend()
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str such as 'cpu' or None, got {type(backend).__name__} {backend!r}")
    return dict(_BY_BACKEND.get(backend.lower(), {}))
