"""How inference runs, without changing what it computes: compute precision (autocast), memory layout
(channels_last), torch.compile of the residual blocks, and a process-wide malloc setting for the CPU.

Why these and not more is measured in benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["compute_dtype", "conv_dtype", "Runtime", "keep_freed_memory", "DTypeLike", "inference_method"]

DTypeLike = str | torch.dtype | None
_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def compute_dtype(value: DTypeLike, name: str = "dtype") -> torch.dtype | None:
    """Read a compute precision: None, a torch dtype, or one of 'float32', 'bfloat16', 'float16' (or fp32/bf16/fp16)."""
    if value is None or isinstance(value, torch.dtype) and value in _DTYPE_NAMES.values():
        return value
    if isinstance(value, str) and value.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[value.lower()]
    raise ValueError(f"{name} must be one of float32, bfloat16, float16 (or fp32, bf16, fp16), got {value!r}")


def conv_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the convolutions run in: autocast's when it is on for x's device, else x's own."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


class _CompiledForward:
    """A module's forward run through torch.compile, falling back to eager (with one warning for the whole
    model) when compilation fails, e.g. where no C++ compiler or Triton is available."""

    def __init__(self, eager: Callable, state: dict):
        self.eager, self.state = eager, state
        self.compiled = torch.compile(eager, dynamic=False)

    def __call__(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if not self.state["failed"]:
            try:
                return self.compiled(x, inplace)
            except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.state["failed"] = True
                warnings.warn(
                    f"torch.compile failed, running eagerly instead ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return self.eager(x, inplace)


class Runtime:
    """The inference settings of one model that are not in its modules: `dtype` (compute precision), the memory
    layout of the activations (`memory_format`: NCHW, or NHWC for channels_last) and whether its blocks are
    compiled."""

    def __init__(self) -> None:
        self.dtype: torch.dtype = torch.float32
        self.memory_format: torch.memory_format = torch.contiguous_format
        self._compile_state: dict | None = None
        #: Images per pass that a pass was split down to after running out of memory (None: never): later calls
        #: start there instead of running out again (batching.in_batches).
        self.pass_limit: int | None = None

    @property
    def compiled(self) -> bool:
        return self._compile_state is not None and not self._compile_state["failed"]

    def set_compile(self, blocks: Iterable[nn.Module], enabled: bool) -> None:
        """Compile each block's forward (one graph per distinct block shape), or restore the eager ones."""
        blocks = list(blocks)
        if enabled and self._compile_state is None:
            import torch._dynamo as dynamo

            limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), 128))
            self._compile_state = {"failed": False}
            for block in blocks:
                block.forward = _CompiledForward(block.forward, self._compile_state)
        elif not enabled and self._compile_state is not None:
            for block in blocks:
                block.__dict__.pop("forward", None)
            self._compile_state = None

    def autocast(self, device: torch.device, weights_dtype: torch.dtype, dtype: DTypeLike = None):
        """Autocast to `dtype` (default: this runtime's) on `device`; nothing when that is the weights' dtype."""
        dtype = self.dtype if dtype is None else compute_dtype(dtype)
        if dtype == torch.float32 or dtype == weights_dtype:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(limit_bytes: int = 2**31) -> bool:
    """Ask glibc's malloc to keep freed blocks of up to `limit_bytes` for reuse instead of returning them to
    the operating system (PyTorch on the CPU allocates and frees megabytes of activations at every layer; by
    default each is a fresh mmap whose pages fault in again). 15-25% faster CPU inference (benchmarks/README.md);
    the price: resident memory stays at its peak. Returns False (and does nothing) where the C library is not
    glibc. The same without code: `MALLOC_MMAP_THRESHOLD_=2147483648 MALLOC_TRIM_THRESHOLD_=2147483648`."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = int(min(limit_bytes, 2**31 - 1))  # mallopt takes a C int; glibc caps the mmap threshold at 32 MiB
    ok_trim = mallopt(_M_TRIM_THRESHOLD, limit) == 1
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, min(limit, 32 * 2**20)) == 1
    return ok_trim and ok_mmap


def inference_method(method: Callable) -> Callable:
    """Run a public method in eval mode under torch.inference_mode, restoring the train/eval mode after."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return method(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper
