"""Drop the resident pages of a weight that is read straight from its checkpoint file.

transformers' from_pretrained maps float32 safetensors files and leaves the parameters
backed by the mapping (no copy: the lean load). When `dtype: int8` then replaces a Linear
by an int8 copy, the pages the quantization read stay resident, counted in the process's
RSS for as long as any other parameter keeps the mapping alive: Chronos-2 int8 held
744 MB against 626 MB in float32 (benchmarks/README.md, "int8 loads"). madvise
MADV_PAGEOUT on the weight's whole pages hands them back to the kernel. It never changes
data: a file page that is read again is read from the file, so a weight still used
elsewhere (tied) only gets slower, not wrong. Only ranges inside this process's file
mappings are touched (/proc/self/maps), never the heap. Linux 5.4 and later; elsewhere
nothing is done.
"""
from __future__ import annotations

import ctypes
import mmap
from typing import List, Tuple

MADV_PAGEOUT = 21  # linux/mman.h

_madvise = None


def file_mappings() -> List[Tuple[int, int]]:
    """[start, end) of every mapping of a file in this process."""
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    ranges.append((start, end))
    except OSError:
        return []
    return ranges


def page_out(tensor, mappings: List[Tuple[int, int]]) -> int:
    """Hand back the whole pages of `tensor`'s bytes when they lie in a file mapping;
    returns the bytes advised (0 when the tensor is not file-backed or madvise failed)."""
    global _madvise
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    if not any(lo <= start and end <= hi for lo, hi in mappings):
        return 0
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page  # pages wholly inside
    if last <= first:
        return 0
    if _madvise is None:
        try:
            _madvise = ctypes.CDLL(None, use_errno=True).madvise
            _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _madvise.restype = ctypes.c_int
        except (OSError, AttributeError):
            _madvise = False
    if not _madvise or _madvise(first, last - first, MADV_PAGEOUT) != 0:
        return 0  # an older kernel (EINVAL) or no madvise: the pages stay, nothing breaks
    return last - first
