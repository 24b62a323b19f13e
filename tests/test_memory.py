"""Keeping resident memory small: the file pages the start-up touched (LLVM's above all) handed back
after the warm-up (the pages go, their bytes are still there, numba still works after), and large
freed buffers returned to the kernel."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.memory import _mappings, release_file_pages, resident_kib

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_only_read_only_mappings_of_the_library_are_chosen(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000100000 r--p 00000000 fd:01 12 /venv/llvmlite/binding/libllvmlite.so\n"
        "7f0000100000-7f0000300000 r-xp 00100000 fd:01 12 /venv/llvmlite/binding/libllvmlite.so\n"
        "7f0000300000-7f0000310000 rw-p 00300000 fd:01 12 /venv/llvmlite/binding/libllvmlite.so\n"
        "7f0000400000-7f0000500000 r-xp 00000000 fd:01 13 /usr/lib/libnotllvmlite.so.1\n"
        "7f0000500000-7f0000600000 rw-p 00000000 00:00 0 \n")
    assert _mappings("libllvmlite.so", str(maps)) == [(0x7F0000000000, 0x100000), (0x7F0000100000, 0x200000)]
    # all read-only file mappings: not the writable one, not anonymous memory
    assert _mappings(None, str(maps)) == [(0x7F0000000000, 0x100000), (0x7F0000100000, 0x200000),
                                          (0x7F0000400000, 0x100000)]


def test_pages_of_a_file_only_this_process_maps_are_reclaimed(tmp_path: Path) -> None:
    # a file nobody else maps, 16 MiB touched page by page: the same call as for LLVM's library
    blob = tmp_path / "libblob.so"
    blob.write_bytes(bytes(range(256)) * (16 << 12))
    out = _run(f"""
        import mmap
        from gateway.memory import release_file_pages, resident_kib
        f = open({str(blob)!r}, "rb")
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        total = sum(m[i] for i in range(0, len(m), 4096))
        before = resident_kib("libblob.so")
        released = release_file_pages("libblob.so")
        after = resident_kib("libblob.so")
        assert m[4096 * 7 + 5] == 5, "the bytes are still there, read back on demand"
        print(before, released, after)
    """)
    before, released, after = map(int, out.split())
    assert before >= 15 * 1024
    assert after <= before // 8
    assert released == before - after


def test_numba_compiles_and_runs_after_the_release() -> None:
    out = _run("""
        import numba, numpy as np
        from gateway.memory import release_file_pages
        from pipelines.warmup import warm_up
        warm_up()
        release_file_pages()  # every read-only file mapping: Python's, numpy's, LLVM's
        @numba.njit
        def twice(a):
            return a * 2.0
        print(twice(np.arange(3.0)).sum(), warm_up() >= 0)
    """)
    assert out.split() == ["6.0", "True"]


def test_nothing_to_release_when_the_library_is_not_loaded() -> None:
    assert release_file_pages("libnot-loaded-anywhere.so") == 0
    assert resident_kib("libnot-loaded-anywhere.so") == 0


FREED_BUFFER = """
import ctypes, sys
from gateway.memory import return_large_buffers
if sys.argv[1] == "fixed":
    assert return_large_buffers()
def anon_kib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon"))
big = bytearray(8 << 20)
del big  # glibc (dynamic threshold) now serves blocks up to 8 MiB from the heap
before = anon_kib()
buf = bytearray(4 << 20)  # written through: resident
after_small = [bytearray(64) for _ in range(100)]  # the heap's top is not the buffer any more
del buf
print(anon_kib() - before)
"""


def test_a_freed_large_buffer_goes_back_to_the_kernel() -> None:
    def kept_kib(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FREED_BUFFER, mode], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout)

    assert kept_kib("fixed") < 1024
    assert kept_kib("default") > 3 * 1024  # glibc's default keeps it: the test measures what it should
