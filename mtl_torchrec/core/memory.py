"""Handing the C heap's free memory back to the operating system between large, short-lived
allocations.

Streamed evaluation converts a chunk of rows (pandas frames, numpy columns), scores it and keeps a
few bytes per row; the chunk's memory is then free but, with glibc's default malloc, much of it
stays in the process: blocks below its (self-raising, up to 32 MiB) mmap threshold come from heaps
that only shrink from the top, and the blocks kept between them pin the rest. Measured on 2M
evaluated rows (``benchmarks/eval_memory.py``, whose live rows take 61 MiB): peak resident memory
1134 MiB without trimming, 885 to 971 MiB with :func:`trim_heap` between chunks and metrics, 865 MiB
with large blocks always mmapped (``MALLOC_MMAP_THRESHOLD_=131072``). :func:`trim_heap` calls
glibc's ``malloc_trim(0)`` (mallopt(3)), which releases the free pages of every heap, in the middle
too; elsewhere (macOS, musl) it does nothing.

Example::

    for chunk in chunks:
        score(chunk)
        trim_heap()        # the chunk's freed memory goes back before the next one is read
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any, Optional


@functools.lru_cache(maxsize=None)
def _libc_trim() -> Optional[Any]:
    """glibc's ``malloc_trim``, or None where the C library has none (looked up once)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Returns the C heap's free pages to the operating system (``malloc_trim(0)``); True when
    glibc released something, False when it had nothing to release or the C library is not glibc.
    Costs a walk over the heaps (milliseconds); call it between chunks, not per batch."""
    trim = _libc_trim()
    return bool(trim(0)) if trim is not None else False
