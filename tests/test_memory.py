"""Keeping resident memory small: the file pages the start-up touched (LLVM's above all) handed back
after the warm-up (the pages go, their bytes are still there, numba still works after), unmapped
between two kernel compiles (never a mapping the loader wrote to), and large freed buffers returned
to the kernel."""
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


def test_unmapping_takes_only_mappings_without_private_copies(tmp_path: Path) -> None:
    smaps = tmp_path / "smaps"
    smaps.write_text(
        "7f0000000000-7f0000100000 r--p 00000000 fd:01 12 /venv/llvmlite/binding/libllvmlite.so\n"
        "Rss:                 400 kB\n"
        "Anonymous:             0 kB\n"
        "7f0000100000-7f0000110000 r--p 00100000 fd:01 12 /venv/llvmlite/binding/libllvmlite.so\n"
        "Rss:                  64 kB\n"
        "Anonymous:            64 kB\n"  # relocated by the loader, then made read-only
        "7f0000400000-7f0000500000 r-xp 00000000 fd:01 13 /usr/lib/libnotllvmlite.so.1\n"
        "Anonymous:             0 kB\n")
    assert _mappings("libllvmlite.so", str(smaps), unwritten_only=True) == [(0x7F0000000000, 0x100000)]
    assert _mappings("libllvmlite.so", str(smaps)) == [(0x7F0000000000, 0x100000), (0x7F0000100000, 0x10000)]
    # a maps file says nothing of private copies: nothing is safe to unmap
    maps = tmp_path / "maps"
    maps.write_text("7f0000000000-7f0000100000 r--p 00000000 fd:01 12 /venv/llvmlite/binding/libllvmlite.so\n")
    assert _mappings(None, str(maps), unwritten_only=True) == []


def test_unmapped_pages_read_back_and_written_private_pages_are_kept(tmp_path: Path) -> None:
    clean = tmp_path / "libclean.so"
    clean.write_bytes(bytes(range(256)) * (16 << 12))  # 16 MiB
    relocated = tmp_path / "librelocated.so"
    relocated.write_bytes(b"\0" * (1 << 20))
    out = _run(f"""
        import ctypes, mmap
        from gateway.memory import release_file_pages, resident_kib
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        f = open({str(clean)!r}, "rb")
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        total = sum(m[i] for i in range(0, len(m), 4096))
        # what the dynamic loader does to a RELRO segment: private, written, then read-only
        g = open({str(relocated)!r}, "r+b")
        r = mmap.mmap(g.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        r[0:8] = b"RELOCATD"
        addr = ctypes.addressof(ctypes.c_char.from_buffer(r))
        assert libc.mprotect(addr, len(r), mmap.PROT_READ) == 0
        before = resident_kib("libclean.so")
        released = release_file_pages(None, evict=False)
        after = resident_kib("libclean.so")
        assert m[4096 * 7 + 5] == 5, "the bytes are read back from the page cache"
        assert r[0:8] == b"RELOCATD", "a private copy must never be thrown away"
        print(before, after, released > 0)
    """)
    before, after, released = out.split()
    assert int(before) >= 15 * 1024
    assert int(after) <= int(before) // 8
    assert released == "True"


NUMBA_AFTER_UNMAPPING = """
import json, numpy as np
from gateway.memory import release_file_pages
from pipelines.warmup import warm_up
calls = []
warm_up(threads=2, before_each=lambda: calls.append(release_file_pages(evict=False)))
from pipelines.batch import ReadingBatch
from pipelines.detect import DetectorParams, DetectorState, pack_params, score_batch
rng = np.random.default_rng(3)
series = np.tile(np.arange(4, dtype=np.int32), 200)
ts = 10**18 + np.repeat(np.arange(200, dtype=np.int64), 4) * 60 * 10**9
value = np.cumsum(rng.uniform(0, 1, 800)) + np.where(np.arange(800) == 555, 90.0, 0.0)
score, reason = score_batch(ReadingBatch.from_arrays(series, ts, value), DetectorState(4),
                            pack_params([DetectorParams()]), np.zeros(4, np.int32), np.zeros(4, bool))
print(json.dumps({"calls": len(calls), "unmapped_kib": sum(calls), "score": score.tolist(),
                  "reason": reason.tolist()}))
"""


def test_kernels_compiled_with_pages_unmapped_between_them_give_the_same_results(tmp_path: Path) -> None:
    # an empty cache: every kernel compiles, LLVM's pages unmapped before each; the compiled code
    # must score exactly as the kernels this process loaded
    import json
    import os

    import numpy as np

    from pipelines.batch import ReadingBatch
    from pipelines.detect import DetectorParams, DetectorState, pack_params, score_batch

    done = subprocess.run([sys.executable, "-c", NUMBA_AFTER_UNMAPPING], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["calls"] == 5  # one before each kernel's first call in this process (score, alerts, VEE, intervals, roll-up)
    assert got["unmapped_kib"] > 10 * 1024  # LLVM's pages, at least
    rng = np.random.default_rng(3)
    series = np.tile(np.arange(4, dtype=np.int32), 200)
    ts = 10**18 + np.repeat(np.arange(200, dtype=np.int64), 4) * 60 * 10**9
    value = np.cumsum(rng.uniform(0, 1, 800)) + np.where(np.arange(800) == 555, 90.0, 0.0)
    score, reason = score_batch(ReadingBatch.from_arrays(series, ts, value), DetectorState(4),
                                pack_params([DetectorParams()]), np.zeros(4, np.int32), np.zeros(4, bool))
    assert got["score"] == score.tolist() and got["reason"] == reason.tolist()
    assert max(got["score"]) > 0.5  # the spike is scored: the comparison compares something


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
