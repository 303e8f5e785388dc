"""History store: real SQLite files, real permission and corruption failures."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from minerwatch.baseline.exclude import exclusion_mask
from minerwatch.features.schema import AGENT_COLUMNS
from minerwatch.service.history import History

CPU = AGENT_COLUMNS.index("cpu_percent")
LOAD = AGENT_COLUMNS.index("load1")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fill(h: History, start: float, n: int, step: float = 10.0) -> None:
    for i in range(n):
        h.add_sample(start + i * step, {"cpu_percent": float(i), "load1": 0.25})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "history.db"


def test_round_trip_values_order_and_missing(db, clock):
    with History(db, clock=clock) as h:
        h.add_sample(clock.now + 20, {"cpu_percent": 3.0})
        h.add_sample(clock.now, {"cpu_percent": 1.0, "load1": 0.5, "not_a_metric": 7.0})
        h.add_sample(clock.now + 10, {"cpu_percent": float("inf"), "load1": None})
        ts, values = h.samples()
        assert ts.tolist() == [clock.now, clock.now + 10, clock.now + 20]
        assert values.shape == (3, len(AGENT_COLUMNS))
        assert values[0, CPU] == 1.0 and values[0, LOAD] == 0.5
        assert np.isnan(values[1, CPU]) and np.isnan(values[1, LOAD])  # inf and None: missing
        assert np.isnan(values[2, LOAD])
        # since is inclusive, until exclusive
        ts, _ = h.samples(since=clock.now + 10, until=clock.now + 20)
        assert ts.tolist() == [clock.now + 10]
        assert h.count() == 3 and h.span_seconds() == 20.0
        assert h.degraded is None and h.errors_total == 0


def test_empty_store(db, clock):
    with History(db, clock=clock) as h:
        ts, values = h.samples()
        assert ts.shape == (0,) and values.shape == (0, len(AGENT_COLUMNS))
        assert h.count() == 0 and h.span_seconds() == 0.0 and h.alerted_windows() == []


def test_windows_and_alerted_windows(db, clock):
    with History(db, clock=clock) as h:
        h.add_window(100.0, 160.0, 0.2, 0.6, False)
        h.add_window(160.0, 220.0, 0.9, 0.6, True)
        h.add_window(220.0, 280.0, 0.95, 0.6, True)
        assert h.alerted_windows() == [(160.0, 220.0), (220.0, 280.0)]
        assert h.alerted_windows(since=250.0) == [(220.0, 280.0)]
        assert len(h.windows()) == 3


def test_restart_persistence(db, clock):
    h = History(db, clock=clock)
    fill(h, clock.now, 50)
    h.add_window(clock.now, clock.now + 60, 0.9, 0.5, True)
    h.close()
    with History(db, clock=clock) as again:
        ts, values = again.samples()
        assert len(ts) == 50
        assert values[:, CPU].tolist() == [float(i) for i in range(50)]
        assert again.alerted_windows() == [(clock.now, clock.now + 60)]


def test_files_are_private(db, clock):
    with History(db, clock=clock) as h:
        fill(h, clock.now, 3)
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
        files = list(db.parent.iterdir())
        assert {f.name for f in files} >= {"history.db", "history.db-wal"}  # WAL mode
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_wal_mode_and_synchronous_normal(db, clock):
    with History(db, clock=clock) as h:
        assert h._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert h._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_retention_by_age(db, clock):
    with History(db, retention_s=1000, clock=clock) as h:
        fill(h, clock.now - 2000, 300)  # 2000 s before now .. 990 s after
        h.add_window(clock.now - 1900, clock.now - 1840, 0.9, 0.5, True)
        h.add_window(clock.now - 100, clock.now - 40, 0.9, 0.5, True)
        h.prune()
        ts, _ = h.samples()
        assert ts.min() >= clock.now - 1000
        assert ts.max() == clock.now - 2000 + 299 * 10  # newest untouched
        assert h.alerted_windows() == [(clock.now - 100, clock.now - 40)]


def test_prune_runs_every_n_inserts_not_every_insert(db, clock):
    # a retention of two samples at the interval: the two newest stay whatever their age
    with History(db, retention_s=100, interval_s=100, clock=clock, prune_every=5) as h:
        old = clock.now - 1000
        for i in range(4):
            h.add_sample(old + i, {"cpu_percent": 1.0})
        assert h.count() == 4  # no prune yet
        h.add_sample(clock.now, {"cpu_percent": 1.0})  # 5th insert prunes
        assert h.samples()[0].tolist() == [old + 3, clock.now]


def test_a_clock_stepped_past_the_retention_does_not_age_the_history_away(db, clock):
    """Samples stored at a clock 400 days ahead make every earlier one older than the
    retention by that clock; they go one by one as new samples follow them (as they would
    have with a right clock), not all at the next prune."""
    with History(db, retention_s=1000, interval_s=10, clock=clock) as h:
        before = clock.now
        fill(h, before - 990, 100)  # 1000 s of samples at 10 s, up to now: a full retention
        h.add_window(before - 100, before - 40, 0.9, 0.5, True)
        clock.now += 400 * 86400
        fill(h, clock.now, 20)
        h.prune()
        ts, _ = h.samples()
        assert len(ts) == 101 and (ts <= before).sum() == 81  # the 20 oldest went, not all
        assert h.alerted_windows() == [(before - 100, before - 40)]
        clock.now += 1000
        fill(h, clock.now - 800, 81)  # the new clock's retention now holds 101 samples
        h.prune()
        ts, _ = h.samples()
        assert len(ts) == 101 and ts.min() == clock.now - 1000  # none from before the step
        assert h.alerted_windows() == []


def test_after_an_outage_longer_than_the_retention_the_last_samples_stay(db, clock):
    with History(db, retention_s=1000, interval_s=10, clock=clock) as h:
        fill(h, clock.now - 5000, 100)  # stopped 4000 s ago
        fill(h, clock.now, 30)
        h.prune()
        ts, _ = h.samples()
        # 101 samples kept: the 30 new ones and the last 71 before the outage
        assert len(ts) == 101 and ts.min() == clock.now - 5000 + 29 * 10


def test_retention_by_bytes(db, clock):
    limit = 96 * 1024
    with History(db, max_bytes=limit, clock=clock, prune_every=10**9) as h:
        fill(h, clock.now - 5000, 5000, step=1.0)
        assert h.size_bytes() > limit
        h.prune()
        used = h.size_bytes()
        assert used <= limit
        ts, values = h.samples()
        assert 0 < len(ts) < 5000
        assert ts.max() == clock.now - 1  # the newest are kept, the oldest deleted
        assert values[-1, CPU] == 4999.0
        assert np.all(np.diff(ts) == 1.0)  # a contiguous suffix
    assert db.stat().st_size <= 1.5 * limit  # incremental vacuum gave the space back


def test_memory_only_is_bounded_by_retention(clock):
    h = History(None, retention_s=100, interval_s=10, clock=clock)
    fill(h, clock.now, 50)
    ts, values = h.samples()
    assert len(ts) == 11  # 100 s at 10 s plus one
    assert ts.max() == clock.now + 490 and values[-1, CPU] == 49.0
    assert h.degraded is None and h.errors_total == 0


def test_memory_only_is_bounded_by_bytes(clock):
    row = 8 * (1 + len(AGENT_COLUMNS))
    h = History(None, max_bytes=20 * row, clock=clock)
    fill(h, clock.now, 100)
    assert h.count() == 20 and h.size_bytes() <= 20 * row


def test_corrupt_file_is_moved_aside_and_replaced(db, clock):
    db.parent.mkdir(mode=0o700)
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    with History(db, clock=clock) as h:
        assert h.errors_total >= 1
        assert "not a database" in h.last_error
        assert h.degraded is None  # recovered with a fresh database
        aside = db.with_name(f"history.db.corrupt-{int(clock.now)}")
        assert aside.read_bytes() == garbage
        fill(h, clock.now, 5)
    with History(db, clock=clock) as again:
        assert again.count() == 5 and again.errors_total == 0


def test_damaged_pages_fail_quick_check(db, clock):
    with History(db, clock=clock) as h:
        fill(h, clock.now, 2000)
    data = bytearray(db.read_bytes())
    page = 4096
    data[2 * page : 2 * page + 2048] = os.urandom(2048)  # keep the header, break a page
    db.write_bytes(bytes(data))
    with History(db, clock=clock) as h:
        assert h.errors_total >= 1 and h.degraded is None
        assert list(db.parent.glob("history.db.corrupt-*"))
        assert h.count() == 0
        h.add_sample(clock.now, {"cpu_percent": 1.0})
        assert h.count() == 1


def test_full_disk_degrades_keeps_samples_in_memory_and_recovers(db, clock):
    h = History(db, clock=clock, retry_s=60)
    fill(h, clock.now, 10)
    # Simulate a full disk: the database may not grow past its current size.
    pages = h._conn.execute("PRAGMA page_count").fetchone()[0]
    h._conn.execute(f"PRAGMA max_page_count = {pages}")
    fill(h, clock.now + 100, 3000)
    assert h.degraded is not None and "full" in h.degraded
    assert h.errors_total >= 1
    ts, values = h.samples()
    assert len(ts) == 3010  # every sample, old on disk and new in memory
    assert values[-1, CPU] == 2999.0
    assert np.all(np.diff(ts) > 0)
    # Space comes back: the next insert after retry_s saves the memory ring to disk.
    h._conn.execute("PRAGMA max_page_count = 1073741823")
    clock.now += 61
    h.add_sample(clock.now + 100_000, {"cpu_percent": 5.0})
    assert h.degraded is None
    assert "full" in h.last_error
    h.close()
    with History(db, clock=clock) as again:
        assert again.count() == 3011


def test_close_saves_memory_when_the_disk_has_room_again(db, clock):
    h = History(db, clock=clock, retry_s=3600)
    pages = h._conn.execute("PRAGMA page_count").fetchone()[0]
    h._conn.execute(f"PRAGMA max_page_count = {pages}")
    fill(h, clock.now, 2000)
    h.add_window(clock.now, clock.now + 60, 0.9, 0.5, True)
    assert h.degraded is not None
    h._conn.execute("PRAGMA max_page_count = 1073741823")
    h.close()
    with History(db, clock=clock) as again:
        assert again.count() == 2000
        assert again.alerted_windows() == [(clock.now, clock.now + 60)]


def test_degraded_store_does_not_retry_before_retry_s(db, clock):
    h = History(db, clock=clock, retry_s=60)
    pages = h._conn.execute("PRAGMA page_count").fetchone()[0]
    h._conn.execute(f"PRAGMA max_page_count = {pages}")
    fill(h, clock.now, 2000)
    errors = h.errors_total
    fill(h, clock.now + 50_000, 50)  # clock has not moved: no new disk attempts
    assert h.errors_total == errors and h.count() == 2050
    h.close()


def test_exclusion_mask():
    ts = np.arange(0.0, 100.0, 10.0)
    keep = exclusion_mask(ts, [(30.0, 40.0), (80.0, 80.0)], margin_s=10.0)
    assert ts[keep].tolist() == [0.0, 10.0, 60.0]
    assert exclusion_mask(ts, []).all()


READ_ONLY_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from minerwatch.service.history import History
    if os.geteuid() == 0:  # root ignores file modes: become nobody after the imports
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    h = History(Path(sys.argv[1]), clock=lambda: 1_000_000.0)
    h.add_sample(2_000_000.0, {"cpu_percent": 42.0})
    ts, values = h.samples()
    print(json.dumps({"degraded": h.degraded, "errors": h.errors_total, "ts": ts.tolist(),
                      "can_enter": os.access(h.path.parent, os.X_OK),
                      "cpu": values[:, 0].tolist()}))
    h.close()
""")


def run_unprivileged(path: Path) -> dict:
    """Run History in a child that cannot write where root could (root ignores modes)."""
    out = subprocess.run(
        [sys.executable, "-c", READ_ONLY_SCRIPT, str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    return json.loads(out.stdout)


@pytest.fixture
def public_tmp():
    """A directory the unprivileged child can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="minerwatch-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_read_only_dir_without_database_works_from_memory(public_tmp):
    ro = public_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    result = run_unprivileged(ro / "history.db")
    assert result["can_enter"]
    assert result["degraded"] and "cannot create" in result["degraded"]
    assert result["errors"] >= 1
    assert result["ts"] == [2_000_000.0] and result["cpu"] == [42.0]
    assert not (ro / "history.db").exists()


def test_read_only_database_serves_old_samples_and_keeps_new_in_memory(public_tmp, clock):
    ro = public_tmp / "ro"
    db = ro / "history.db"
    with History(db, clock=clock) as h:
        h.add_sample(1_500_000.0, {"cpu_percent": 7.0})
    ro.chmod(0o555)
    db.chmod(0o444)
    result = run_unprivileged(db)
    assert result["degraded"] and "readonly" in result["degraded"].replace("-", "")
    assert result["ts"] == [1_500_000.0, 2_000_000.0] and result["cpu"] == [7.0, 42.0]
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 1


def test_corrupt_file_in_read_only_dir_degrades(public_tmp):
    ro = public_tmp / "ro"
    ro.mkdir()
    (ro / "history.db").write_bytes(b"this is not sqlite" * 100)
    (ro / "history.db").chmod(0o644)
    ro.chmod(0o555)
    result = run_unprivileged(ro / "history.db")
    assert result["degraded"] and "moved aside" in result["degraded"]
    assert result["ts"] == [2_000_000.0]
