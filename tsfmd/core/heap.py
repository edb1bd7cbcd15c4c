"""Give freed heap memory back to the OS after a model loads or unloads.

glibc's malloc keeps the pages of freed blocks inside its heap for reuse: it returns only
the heap's top and blocks it mapped on their own. A load frees a float32 copy of each
layer as it goes (int8 quantizes layer by layer) and an unload frees a whole model, in
blocks interleaved with ones that live on, so RSS stays at the high-water mark.
malloc_trim(0) releases every free page in every arena. Measured (benchmarks/README.md,
"int8 loads"): Time-MoE int8 steady RSS 318 -> 243 MB (50M) and 809 -> 689 MB (200M),
and trimmed after each layer as well, the 200M load's peak 965 -> 854 MB; float32 loads
free nothing here (their tensors are mapped blocks of their own).
Elsewhere than glibc (musl, macOS) there is no malloc_trim: nothing is done.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import resource
from typing import Callable, Optional

log = logging.getLogger("tsfmd.heap")

_trim = None  # libc's malloc_trim once looked up; False where there is none


def _malloc_trim() -> Optional[Callable[[int], int]]:
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim
            _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            _trim = False
    return _trim or None


def trim_heap() -> bool:
    """Return the heap's free pages to the OS now (no gc, no log: cheap enough to run
    between the layers of a load); True when the C library could (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_free_memory(why: str) -> bool:
    """Collect cycles, then return the heap's free pages to the OS; True when the C
    library could (glibc). `why` is logged with the RSS released, when 16 MB or more."""
    gc.collect()
    before = rss_bytes()
    if not trim_heap():
        return False
    after = rss_bytes()
    if before and after and before - after >= 16 << 20:  # smaller amounts are no news
        log.info("%s: returned %d MB of freed memory to the OS (RSS %d MB)", why,
                 (before - after) >> 20, after >> 20)
    return True


def rss_bytes() -> int:
    """This process's resident set now, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * resource.getpagesize()
