"""XLA compiler options that make jaxsep's programs faster on a given backend.

XLA:CPU vectorises its fused loops for 256-bit registers unless told otherwise, even on CPUs
with 512-bit ones (AVX-512). The depthwise taps lowering is made of such loops, so on the CPU
jaxsep asks for 512-bit vectors (``xla_cpu_prefer_vector_width=512``): faster where the CPU has
them, no change where it has not (figures per machine: ``docs/performance.md``). Results change
only by float rounding (a vectorised reduction sums in another order).

These are per-compilation options, not process-wide flags, so they change nobody else's
programs: ``jaxsep train``/``sweep``/``eval`` and the benchmarks compile with them, and users
pass them to their own ``jax.jit``::

    step = jax.jit(train_step, compiler_options=jaxsep.compiler_options())

(``XLA_FLAGS=--xla_cpu_prefer_vector_width=512`` does the same for a whole process.)
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
