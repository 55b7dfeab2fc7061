"""Process-level settings that make CPU inference faster. Nothing here runs unless called."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(limit_bytes: int = 2 ** 31) -> bool:
    """Ask glibc's malloc to keep freed blocks of up to `limit_bytes` for reuse instead of returning them to
    the operating system. PyTorch on the CPU allocates and frees activations of megabytes at every layer; by
    default each one is a fresh mmap whose pages fault in again. Measured on the cifar10 preset (2 threads):
    15-25% faster likelihood and sampling, in float32 and bfloat16. The price: the process's resident memory
    stays at its peak. Returns False (and does nothing) where the C library is not glibc (macOS, Windows, musl).
    The same can be had without code: `MALLOC_MMAP_THRESHOLD_=2147483648 MALLOC_TRIM_THRESHOLD_=2147483648`,
    or by preloading jemalloc or tcmalloc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = int(min(limit_bytes, 2 ** 31 - 1))  # mallopt takes a C int; glibc caps the mmap threshold at 32 MiB
    ok_trim = mallopt(_M_TRIM_THRESHOLD, limit) == 1
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, min(limit, 32 * 2 ** 20)) == 1
    return ok_trim and ok_mmap
