"""tsfmd/core/heap.py: freed heap pages really go back to the OS (glibc's malloc_trim), the
case a layer-by-layer int8 load or an unload leaves behind: many freed blocks below one
that lives on, which free() alone cannot return."""
from __future__ import annotations

import ctypes
import platform

import pytest

from tsfmd.core.heap import release_free_memory, rss_bytes

BLOCK = 64 * 1024  # under glibc's mmap threshold: served from the heap, not mapped alone
COUNT = 1600  # 100 MB


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_blocks_under_a_live_one_are_returned_to_the_os():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(COUNT)]
    pin = libc.malloc(BLOCK)  # lives on above them: the heap's top cannot shrink
    try:
        assert all(blocks) and pin
        for block in blocks:
            ctypes.memset(block, 1, BLOCK)  # resident
        for block in blocks:
            libc.free(block)
        held = rss_bytes()
        assert release_free_memory("test") is True
        released = held - rss_bytes()
        assert released >= 0.8 * COUNT * BLOCK, f"released only {released >> 20} MB"
    finally:
        libc.free(pin)


def test_rss_is_read_from_proc():
    assert rss_bytes() > 10 * 1024 * 1024  # a Python with pytest loaded
