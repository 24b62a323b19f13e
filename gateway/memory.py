"""Keeping the gateway's resident memory small: on a Pi with 1 GB every tenth counts.

Two things, both measured with benchmarks/bench_end_to_end.py:

**LLVM's code pages go back to the kernel once every kernel is compiled or loaded.**

numba links its kernels with LLVM (llvmlite's one large shared library, ~180 MB on disk). Loading
that library maps about 110 MiB of it into the gateway (the dynamic loader and the first calls touch
it), and those pages stay counted in the gateway's resident memory although, after the warm-up,
nothing runs LLVM any more: calling a compiled kernel goes straight to its machine code. On a Pi
with 1 GB that is a tenth of the memory held for nothing.

``madvise(MADV_PAGEOUT)`` asks the kernel to reclaim those pages now (Linux 5.4+). They are clean
pages of a file, so reclaiming them loses nothing: should anything compile later (a kernel met with
new argument types), the pages it needs are read back from the file on demand. Writable mappings
(relocated data) are left alone. The price: the kernel drops them from its page cache too, so the
next start of the gateway reads them from disk again (on an SD card, a few seconds more), which a
process that runs for weeks pays once.

**Large transient buffers go back to the kernel when freed.** glibc serves allocations above a
threshold with their own mapping and returns it on free, but raises that threshold (up to 32 MiB)
each time such a block is freed, after which large buffers come from the heap and the heap keeps
the pages. The gateway's large buffers are transient (a burst's line protocol, its gzip, a batch of
columns), so the threshold is fixed at 512 KiB: measured -7 MiB peak RSS at 45,000 messages/s,
no measurable CPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger("gateway")

MADV_PAGEOUT = 21  # linux/mman.h, since 5.4
LLVM_LIBRARY = "libllvmlite.so"
M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD_BYTES = 512 << 10


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def return_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (see the module's doc); False where there is no mallopt (not glibc)."""
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1


def _mappings(library: str, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, length) of every read-only or executable mapping of ``library``."""
    found = []
    for line in Path(maps).read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or not fields[5].endswith("/" + library) or "w" in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        found.append((start, end - start))
    return found


def resident_kib(library: str = LLVM_LIBRARY, smaps: str = "/proc/self/smaps") -> int:
    """Resident KiB of ``library``'s mappings in this process (0 when it is not loaded)."""
    total, inside = 0, False
    for line in Path(smaps).read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):
            inside = line.rstrip().endswith("/" + library)
        elif inside and head == "Rss:":
            total += int(line.split()[1])
    return total


def release_compiler_pages(library: str = LLVM_LIBRARY) -> int:
    """Ask the kernel to reclaim ``library``'s read-only pages; returns the resident KiB released.

    Never raises: an older kernel or a platform without ``/proc`` only keeps the pages (logged).
    """
    try:
        before = resident_kib(library)
        regions = _mappings(library)
    except OSError as e:
        log.debug("cannot read this process' mappings: %s", e)
        return 0
    if not regions:
        return 0
    libc = _libc()
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, length in regions:
        if libc.madvise(start, length, MADV_PAGEOUT) != 0:
            err = ctypes.get_errno()
            log.info("", extra={"event": "compiler_pages_kept", "error": os.strerror(err)})
            return 0
    released = max(before - resident_kib(library), 0)
    log.info("", extra={"event": "compiler_pages_released", "kib": released})
    return released
