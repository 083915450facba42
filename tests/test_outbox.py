"""The durable SQLite outbox: order, bounds, de-duplication, crash safety, exclusivity."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_monitor.sinks.outbox import Outbox, OutboxError


def test_pending_is_insertion_order_and_remove_acknowledges(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 100)
    seqs = [box.add(f"id-{i}", f'{{"n":{i}}}') for i in range(5)]
    assert seqs == sorted(seqs)
    assert [e.id for e in box.pending()] == [f"id-{i}" for i in range(5)]
    assert box.remove(seqs[1]) is True
    assert box.remove(seqs[1]) is False
    assert box.depth == 4
    assert [e.id for e in box.pending(after_seq=seqs[2])] == ["id-3", "id-4"]
    assert [e.id for e in box.pending(limit=2)] == ["id-0", "id-2"]
    box.close()


def test_same_alert_id_is_stored_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 100)
    first = box.add("same", "a")
    assert box.add("same", "b") == first
    assert box.depth == 1
    assert box.pending()[0].payload == "a"
    box.close()


def test_full_outbox_drops_oldest_and_counts_across_reopen(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, 10)
    for i in range(13):
        box.add(f"id-{i}", "x")
    assert box.depth == 10
    assert box.dropped_total == 3
    assert [e.id for e in box.pending()] == [f"id-{i}" for i in range(3, 13)]
    assert "outbox full" in caplog.text
    box.close()
    again = Outbox(path, 10)
    assert again.dropped_total == 3
    assert again.depth == 10
    again.close()


def test_sequence_keeps_growing_after_everything_was_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, 100)
    last = box.add("a", "x")
    box.remove(last)
    box.close()
    box = Outbox(path, 100)
    assert box.add("b", "y") > last, "a reused sequence number could reorder replay"
    box.close()


def test_second_opener_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, 100)
    with pytest.raises(OutboxError, match="already in use"):
        Outbox(path, 100)
    box.close()
    box.close()  # idempotent
    Outbox(path, 100).close()


def test_corrupt_file_is_moved_aside_and_a_fresh_outbox_opens(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path, 100)
    assert box.depth == 0
    box.add("a", "x")
    assert any(p.name.startswith("o.sqlite.corrupt-") for p in tmp_path.iterdir())
    assert "unreadable" in caplog.text
    box.close()


_CHILD = """
import os, signal, sys
from pathlib import Path
from edge_monitor.sinks.outbox import Outbox
box = Outbox(Path(sys.argv[1]), 1000)
for i in range(int(sys.argv[2])):
    box.add(f"id-{i}", "payload-%d" % i)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.timeout(60)
def test_committed_alerts_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", _CHILD, str(path), "25"], cwd=root,
                            env=dict(os.environ, PYTHONPATH=str(root)), timeout=50)
    assert result.returncode == -9
    box = Outbox(path, 1000)
    assert [e.payload for e in box.pending()] == [f"payload-{i}" for i in range(25)]
    box.close()


def test_concurrent_adds_and_removes_keep_depth_exact(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 10_000)

    def writer(k: int) -> None:
        for i in range(40):
            box.add(f"w{k}-{i}", "x")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = box.pending(limit=1000)
    assert len(entries) == box.depth == 160
    for e in entries[:60]:
        box.remove(e.seq)
    assert box.depth == 100 == len(box.pending(limit=1000))
    box.close()


def test_max_alerts_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_alerts"):
        Outbox(tmp_path / "o.sqlite", 0)
