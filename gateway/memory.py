"""Keeping the gateway's resident memory small: on a Pi with 1 GB every tenth counts.

Two things, both measured with benchmarks/bench_end_to_end.py:

**The pages the start-up touched go back to the kernel once every kernel is compiled or loaded.**

numba links its kernels with LLVM (llvmlite's one large shared library, ~180 MB on disk). Loading
that library maps about 110 MiB of it into the gateway (the dynamic loader and the first calls touch
it), and those pages stay counted in the gateway's resident memory although, after the warm-up,
nothing runs LLVM any more: calling a compiled kernel goes straight to its machine code. The same
holds, on a smaller scale, for the parts of Python, numpy, pydantic and the rest that only the
imports, the configuration and the warm-up ran (another ~12 MiB). On a Pi with 1 GB that is more
than a tenth of the memory held for nothing.

``madvise(MADV_PAGEOUT)`` on every read-only file mapping asks the kernel to reclaim those pages
now (Linux 5.4+). They are clean pages of files, so reclaiming them loses nothing: what the gateway
still runs comes back on its next use (measured: the working set settles within the first seconds),
and should anything compile later (a kernel met with new argument types) LLVM's pages are read back
too. Pages other processes also map (libc, say) are left where they are by the kernel; writable
mappings (relocated data) are not touched. The price: the kernel drops those pages from its page
cache too, so the next start of the gateway reads them from disk again (on an SD card, a few
seconds more), which a process that runs for weeks pays once.

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
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger("gateway")

MADV_PAGEOUT = 21  # linux/mman.h, since 5.4
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


def _is_ours(fields: list[str], library: str | None) -> bool:
    """A read-only mapping of a file (of ``library``, when given), from a maps or smaps header."""
    if len(fields) < 6 or not fields[5].startswith("/") or "w" in fields[1]:
        return False
    return library is None or fields[5].endswith("/" + library)


def _mappings(library: str | None = None, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, length) of every read-only file mapping (of ``library``, when given)."""
    found = []
    for line in Path(maps).read_text().splitlines():
        fields = line.split()
        if _is_ours(fields, library):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end - start))
    return found


def resident_kib(library: str | None = None, smaps: str = "/proc/self/smaps") -> int:
    """Resident KiB of this process' read-only file mappings (of ``library``, when given)."""
    total, inside = 0, False
    for line in Path(smaps).read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            inside = _is_ours(fields, library)
        elif inside and fields and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def release_file_pages(library: str | None = None) -> int:
    """Ask the kernel to reclaim the pages of this process' read-only file mappings (of ``library``,
    when given); returns the resident KiB released.

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
            if err == errno.EINVAL and library is None:
                continue  # a mapping that cannot be paged out (a special file): the others still can
            log.info("", extra={"event": "file_pages_kept", "error": os.strerror(err)})
            return 0
    released = max(before - resident_kib(library), 0)
    log.info("", extra={"event": "file_pages_released", "kib": released})
    return released
