"""The old import path of the depthwise taps lowering, now :mod:`jaxsep._lowering.taps`.

Kept for code that imports it: every attribute read or written here is that module's (so
``monkeypatch.setattr(_taps, "_KERNEL_GRAD_CHUNK_BYTES", ...)`` reaches the lowering), and
``choose_impl`` is :func:`jaxsep._lowering.choose_depthwise_impl`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from jaxsep._lowering import choose_depthwise_impl as choose_impl
from jaxsep._lowering import taps as _target

__all__ = ["choose_impl"]


class _Alias(types.ModuleType):
    """A module whose missing attributes, and every attribute set, are ``_target``'s."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_target, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(_target, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(_target, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(_target)) | {"choose_impl"})


sys.modules[__name__].__class__ = _Alias
