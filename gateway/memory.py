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

**While the kernels compile (a new install: numba's cache is empty), pages are unmapped between
two kernels.** Each compile touches its own part of LLVM's code; left mapped, the pages of all of
them and of the imports add up (the compiling process peaked at 175 MiB, numba alone on a 3-line
function at ~156). ``release_file_pages(evict=False)`` before each kernel unmaps them from the
process but leaves them in the page cache, where the next compile finds what it needs again.

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

MADV_DONTNEED = 4  # linux/mman.h
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


def _mappings(library: str | None = None, smaps: str = "/proc/self/smaps",
              unwritten_only: bool = False) -> list[tuple[int, int]]:
    """(start, length) of every read-only file mapping (of ``library``, when given), from smaps (or
    maps) lines; ``unwritten_only``: only those that smaps says hold no private copy-on-write page
    (a mapping without an ``Anonymous:`` line counts as written: unknown is not safe)."""
    found: list[tuple[int, int, int]] = []  # start, length, anonymous KiB (-1: unknown)
    current: list[int] | None = None
    for line in Path(smaps).read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            current = None
            if _is_ours(fields, library):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = [start, end - start, -1]
                found.append(current)  # type: ignore[arg-type]
        elif current is not None and fields and fields[0] == "Anonymous:":
            current[2] = int(fields[1])
    return [(start, length) for start, length, anon in found if not unwritten_only or anon == 0]


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


def release_file_pages(library: str | None = None, evict: bool = True) -> int:
    """Hand back the resident pages of this process' read-only file mappings (of ``library``, when
    given); returns the resident KiB released.

    ``evict=True`` (after the warm-up): ``MADV_PAGEOUT``, the kernel reclaims the pages, from the page
    cache too where no other process maps them. ``evict=False`` (between two kernel compiles):
    ``MADV_DONTNEED``, the pages leave this process' resident set but stay in the page cache, so the
    next compile finds LLVM's code there again (a minor fault, no disk read: evicting them between
    compiles cost 1.4 s of re-reading). Measured: the compiling process peaks at ~35 MiB less,
    because the pages the imports and the dynamic loader touched and the pages each compile needs
    are no longer resident at the same time. Only mappings without private copy-on-write pages
    are unmapped this way: a read-only mapping the loader relocated holds such pages, and
    ``MADV_DONTNEED`` would throw them away and read the file's unrelocated bytes back.

    Never raises: an older kernel or a platform without ``/proc`` only keeps the pages (logged).
    """
    try:
        before = resident_kib(library)
        regions = _mappings(library, unwritten_only=not evict)
    except OSError as e:
        log.debug("cannot read this process' mappings: %s", e)
        return 0
    if not regions:
        return 0
    libc = _libc()
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, length in regions:
        if libc.madvise(start, length, MADV_PAGEOUT if evict else MADV_DONTNEED) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL and library is None:
                continue  # a mapping that cannot be paged out (a special file): the others still can
            log.info("", extra={"event": "file_pages_kept", "error": os.strerror(err)})
            return 0
    released = max(before - resident_kib(library), 0)
    log.log(logging.INFO if evict else logging.DEBUG, "",
            extra={"event": "file_pages_released" if evict else "file_pages_unmapped", "kib": released})
    return released
