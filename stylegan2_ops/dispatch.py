"""Choose between the reference code and the CUDA plugin for one call.

Rules (kept in one place so every op behaves the same):

* `MAD_OPS=ref|cuda|auto` in the environment overrides the `impl` argument of
  every op: it is the global switch for "is it the kernels?" debugging.
* `ref` always runs the pure-PyTorch specification.
* `auto` runs the plugin for CUDA tensors when it builds, and otherwise the
  reference (after one warning line naming the reason and the build log).
* `cuda` insists: a CPU tensor or a plugin that cannot be built is an error,
  never a silent slowdown.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from . import build
from ._args import IMPLS, parse_impl


def effective_impl(impl: str) -> str:
    """`impl` after validation and the MAD_OPS override."""
    parse_impl(impl)
    env = os.environ.get("MAD_OPS", "").strip().lower()
    if not env:
        return impl
    if env not in IMPLS:
        raise ValueError(f"MAD_OPS: expected one of {', '.join(IMPLS)}, got {os.environ['MAD_OPS']!r}")
    return env


def plugin_for(impl: str, x: torch.Tensor, plugin: str) -> ModuleType | None:
    """The plugin module to run on `x`, or None for the reference path."""
    impl = effective_impl(impl)
    if impl == "ref":
        return None
    if x.device.type != "cuda":
        if impl == "cuda":
            if os.environ.get("MAD_OPS", "").strip():
                raise ValueError(f"MAD_OPS: 'cuda' needs CUDA tensors, but x is on {x.device} (unset MAD_OPS or "
                                 "set it to auto)")
            raise ValueError(f"impl: 'cuda' needs CUDA tensors, but x is on {x.device} (use impl='auto' or 'ref')")
        return None
    if impl == "cuda":
        return build.get_plugin(plugin)
    return build.try_get_plugin(plugin)
