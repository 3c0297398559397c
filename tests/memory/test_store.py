from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.memory.store import SCHEMA_VERSION, ExperienceStore, StoreError
from lifelong.types import Completion, Episode, StopReason, Turn


def episode(i: int, reward: float = 1.0, split: str = "train") -> Episode:
    c = Completion((5, 6, 7), (-0.5, 0.0, -1.0), (1, 0, 1), "thinking", f"answer {i}", StopReason.ANSWERED)
    turn = Turn((1, 2, 3), c, f"question {i}", reward)
    return Episode(f"ep{i}", "add", i, (turn,), reward, reward > 0, {"answer": "7"}, 3, f"g{i // 2}", split, 1.0)


def test_roundtrip_keeps_every_field(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        store.add([episode(0), episode(1, 0.0)], run_id="r", step=1, model="m")
        got = store.episodes(run_id="r", step=1)
    assert got == [episode(0), episode(1, 0.0)]


def test_filters_and_counts(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        store.add([episode(0), episode(1)], run_id="a", step=1, model="m")
        store.add([episode(2, split="probe")], run_id="a", step=2, model="m")
        store.add([episode(3)], run_id="b", step=1, model="m")
        assert store.count() == 4
        assert store.count(run_id="a", split="probe") == 1
        assert [e.id for e in store.episodes(run_id="a", step=1)] == ["ep0", "ep1"]
        assert store.ids(run_id="b") == {"ep3"}


def test_uses_wal(tmp_path: Path) -> None:
    ExperienceStore(tmp_path / "s.sqlite").close()
    mode = sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_failed_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        store.add([episode(0)], run_id="r", step=1, model="m")
        with pytest.raises(sqlite3.IntegrityError):  # ep0 again: the whole transaction is refused
            store.add([episode(1), episode(0)], run_id="r", step=2, model="m")
        assert store.ids() == {"ep0"}


def test_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ExperienceStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this lifelong"):
        ExperienceStore(path)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot be opened"):
        ExperienceStore(path)


_WRITER = """
import sys
from lifelong.memory.store import ExperienceStore
sys.path.insert(0, sys.argv[2])
from test_store import episode
store = ExperienceStore(sys.argv[1])
i = 0
while True:
    store.add([episode(i), episode(i + 1)], run_id="r", step=i, model="m")
    print(i + 2, flush=True)  # acknowledged: these are committed
    i += 2
"""


def test_survives_kill_9_during_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acknowledged = 0
    deadline = time.time() + 60
    while acknowledged < 40 and time.time() < deadline:
        acknowledged = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with ExperienceStore(path) as store:
        n = store.count()
        episodes = store.episodes()  # every row decodes: nothing half-written
    assert acknowledged >= 40
    assert n >= acknowledged and n % 2 == 0  # whole transactions only
    assert {e.id for e in episodes} >= {f"ep{i}" for i in range(acknowledged)}
