"""Process-wide memory settings: how glibc's malloc, and Arrow's allocator, hand memory back, and
how often Python's cycle collector walks the heap."""

from __future__ import annotations

__all__ = ["give_back", "tune_gc", "tune_malloc"]

import ctypes
import functools
import gc
import os
from typing import Any

import pyarrow as pa

M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # glibc's mallopt parameters
MALLOC_ARENAS = 2
# Blocks from this size up are mapped on their own and given back when freed. Setting it also
# stops glibc from raising it after each large free, which left frame-sized buffers (Forward
# readers, decoded chunks) to fragment the heap.
MMAP_THRESHOLD_BYTES = 1024 * 1024
# Arrow's bundled allocator keeps freed pages for reuse; objects come and go in tens of MB, so
# holding them kept the peak 30-60 MB higher for no speed gained. The package sets this variable
# to "system" unless it is set; another value chooses another pool.
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
# The records of a pipeline step live through the step, so the collector promotes them, and then
# full collections walk every object of the process (60-80 ms holding the GIL, which stalls acks)
# to find almost nothing. Start-up's objects (modules, schemas, compiled rules) are frozen out of
# those walks, and the youngest generation is collected after this many allocations, not 700.
GC_YOUNG_THRESHOLD = 50_000


@functools.cache
def _libc() -> Any:
    """glibc, or None where there is none (another libc, another system)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def give_back() -> None:
    """Return the free pages inside malloc's heaps to the system. glibc gives back only the free
    memory at a heap's top; a freed object's table (tens of MB of Arrow buffers under 1 MB each,
    interleaved with live blocks) otherwise stays resident. A few ms per call."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def tune_malloc() -> None:
    """Two malloc arenas rather than one per thread, and a fixed mmap threshold: freed memory is
    reused or given back instead of each arena keeping its own. Arrow allocates through the same
    malloc unless ``ARROW_DEFAULT_MEMORY_POOL`` names another pool."""
    if os.environ.get(ARROW_POOL_VARIABLE, "system") == "system":
        pa.set_memory_pool(pa.system_memory_pool())  # in case pyarrow was loaded before the package
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def tune_gc() -> None:
    """Freeze what start-up built out of the collector's walks, and collect less often. Call once
    the process is serving."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
