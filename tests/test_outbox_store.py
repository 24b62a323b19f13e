"""The outbox file on its own: the byte bound, a full disk, the fsync policy and the persisted counters.

Real SQLite files in a temp directory; a full file system is emulated with SQLite's own
``PRAGMA max_page_count``, which makes SQLite fail exactly as on a full disk (SQLITE_FULL).
"""
from __future__ import annotations

import gzip
import os
import sqlite3

import pytest

from gateway.sinks.outbox import DEAD_LETTER_SHARE, Outbox, is_disk_full


def noisy_lines(seed: int, n: int = 200) -> bytes:
    """Line protocol that does not compress away, so that byte sizes mean something."""
    rnd = os.urandom(n * 12)
    return b"".join(b"m,dev=d%d v=%d,w=%d %d\n" % (seed, int.from_bytes(rnd[i * 12:i * 12 + 6], "big"),
                                                    int.from_bytes(rnd[i * 12 + 6:i * 12 + 12], "big"),
                                                    seed * 1000 + i) for i in range(n))


def test_bound_drops_oldest_and_counts_every_point(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite3", max_bytes=64 << 10)
    put_points = 0
    ids_kept_order = []
    for i in range(200):
        r = ob.put(noisy_lines(i), 80)
        assert r.stored
        put_points += 80
        st = ob.stats()
        assert st.bytes <= 64 << 10, "the queue grew past its bound"
        assert st.bytes == ob.queued_bytes
        ids_kept_order = [b.id for b in ob.oldest(limit=1000)]
    st = ob.stats()
    dropped = st.counters["dropped_points"]
    assert dropped > 0
    # exact conservation: everything put is either still queued or counted as dropped
    assert st.points + dropped == put_points
    assert st.counters["dropped_batches"] * 80 == dropped
    # what was dropped is the oldest: the survivors are the newest, contiguous ids
    assert ids_kept_order == list(range(ids_kept_order[0], 201))
    ob.close()
    # the counters live in the file, not in the process
    again = Outbox(tmp_path / "o.sqlite3", max_bytes=64 << 10)
    assert again.stats().counters["dropped_points"] == dropped
    again.close()


def test_batch_larger_than_the_bound_is_dropped_and_counted(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite3", max_bytes=64 << 10)
    ob.put(noisy_lines(1), 80)
    big = b"".join(noisy_lines(i, 400) for i in range(24))  # ~ 170 KiB compressed, past the bound
    assert len(gzip.compress(big)) > 64 << 10
    r = ob.put(big, 9600)
    assert not r.stored and r.dropped_points == 9600
    st = ob.stats()
    assert st.points == 80 and st.counters["dropped_points"] == 9600  # the older batch was kept
    ob.close()


def test_full_disk_is_counted_never_raised(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite3", max_bytes=512 << 20)
    # SQLite fails with SQLITE_FULL ("database or disk is full") past this many pages, exactly as
    # when the file system is full
    pages = ob.db.execute("PRAGMA page_count").fetchone()[0]
    ob.db.execute(f"PRAGMA max_page_count = {pages + 60}")
    put_points = 0
    results = []
    for i in range(120):
        r = ob.put(noisy_lines(i), 80)
        put_points += 80
        results.append(r)
    assert any(r.disk_full for r in results)
    # after the first full disk the outbox keeps what fits and drops the oldest for the new
    assert results[-1].stored
    st = ob.stats()
    assert st.counters["disk_full_events"] >= 1
    assert st.points + st.counters["dropped_points"] == put_points
    newest = ob.oldest(limit=1000)[-1]
    assert gzip.decompress(newest.payload).startswith(b"m,dev=d119 ")
    ob.close()


def test_disk_full_errors_are_recognised():
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert is_disk_full(OSError(28, "No space left on device"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))


@pytest.mark.parametrize("fsync,level", [("batch", 2), ("normal", 1), ("off", 0)])
def test_fsync_policy_maps_to_synchronous_under_wal(tmp_path, fsync, level):
    ob = Outbox(tmp_path / "o.sqlite3", fsync=fsync)
    assert ob.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ob.db.execute("PRAGMA synchronous").fetchone()[0] == level
    ob.close()
    with pytest.raises(ValueError, match="fsync must be one of"):
        Outbox(tmp_path / "p.sqlite3", fsync="sometimes")


def test_delivery_counters_and_drain_rate(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite3")
    for i in range(5):
        ob.put(noisy_lines(i), 80)
    batches = ob.oldest(limit=3)
    assert ob.delivered(batches) == 0
    st = ob.stats()
    assert st.batches == 2 and st.points == 160
    assert st.counters["delivered_points"] == 240 and st.counters["delivered_batches"] == 3
    # rate: points since the window checkpoint over the time since it
    t0 = st.counters["rate_cur_ns"]
    assert st.drain_rate(t0 + 2_000_000_000) == pytest.approx(120.0)
    # a minute without deliveries reads as idle, not as an old average
    assert st.drain_rate(st.counters["last_delivery_ns"] + 61_000_000_000) == 0.0


def test_dropped_while_in_flight_then_delivered_counts_as_delivered(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite3", max_bytes=64 << 10)
    ob.put(noisy_lines(0), 80)
    in_flight = ob.oldest(limit=1)
    for i in range(1, 60):  # meanwhile the bound drops the batch being sent
        ob.put(noisy_lines(i), 80)
    assert ob.oldest(limit=1)[0].id != in_flight[0].id
    before = ob.stats().counters["dropped_points"]
    assert ob.delivered(in_flight) == 80  # the server took it after all
    st = ob.stats()
    assert st.counters["dropped_points"] == before - 80
    assert st.counters["delivered_points"] == 80
    assert st.points + st.counters["dropped_points"] + st.counters["delivered_points"] == 60 * 80


def test_rejected_lines_become_dead_letters_within_their_share(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite3", max_bytes=64 << 10)
    total_dead = 0
    for i in range(40):
        ob.put(noisy_lines(i), 80)
        b = ob.oldest(limit=1)[0]
        lines = gzip.decompress(b.payload).splitlines()
        ob.reject_lines(b, [(line, "field type conflict", 2) for line in lines[:20]], 40)
        total_dead += 40
    st = ob.stats()
    assert st.dead_letter_bytes <= (64 << 10) // DEAD_LETTER_SHARE
    assert st.counters["dead_lettered_points"] == total_dead
    assert st.dead_letter_points + st.counters["dead_letters_pruned_points"] == total_dead
    assert st.counters["delivered_points"] == 40 * 40
    d = ob.dead_letters(limit=1)[0]
    assert d.reason == "field type conflict" and d.text().startswith("m,dev=d")


def test_unreadable_file_is_moved_aside_and_a_new_outbox_started(tmp_path, caplog):
    path = tmp_path / "outbox-local.sqlite3"
    path.write_bytes(b"this is not an SQLite database, as after a power cut under fsync=off" * 100)
    ob = Outbox.open(path)
    assert ob.put(noisy_lines(1), 400).stored and ob.stats().points == 400
    ob.close()
    [aside] = tmp_path.glob("outbox-local.sqlite3.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not an SQLite database")
    assert any(getattr(r, "event", None) == "outbox_corrupt" for r in caplog.records)
