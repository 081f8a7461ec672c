"""One driver per study directory (issue 22): the lease refuses a second driver, is taken over from a dead one,
keeps its heartbeat, and never stops a reader."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.lease import LEASE_NAME, LeaseHeld, StudyLease, read_lease
from tests.fixtures.synthetic import SyntheticSpec, write_synthetic_study

REPO = Path(__file__).resolve().parents[1]


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path):
    first = StudyLease(tmp_path, echo=lambda line: None, ttl_s=30).acquire()
    record = read_lease(tmp_path / LEASE_NAME)
    assert record.pid == os.getpid() and record.token == first.record.token
    with pytest.raises(LeaseHeld, match=rf"held by another rankstudy run \(host \S+, pid {os.getpid()}, since "):
        StudyLease(tmp_path, echo=lambda line: None, ttl_s=30).acquire()
    first.release()
    assert not (tmp_path / LEASE_NAME).exists()
    with StudyLease(tmp_path, echo=lambda line: None, ttl_s=30):
        assert (tmp_path / LEASE_NAME).exists()
    assert not (tmp_path / LEASE_NAME).exists()


def test_the_heartbeat_keeps_a_lease_alive_and_an_expired_one_is_taken_over(tmp_path):
    ttl = 0.4
    holder = StudyLease(tmp_path, echo=lambda line: None, ttl_s=ttl).acquire()
    first_beat = read_lease(tmp_path / LEASE_NAME).heartbeat
    time.sleep(3 * ttl)  # several heartbeats: the lease stays fresh while its holder lives
    assert read_lease(tmp_path / LEASE_NAME).heartbeat > first_beat
    with pytest.raises(LeaseHeld):
        StudyLease(tmp_path, echo=lambda line: None, ttl_s=ttl).acquire()
    holder._stop.set()  # the holder freezes (as a lost node does): no more heartbeats, nothing released
    holder._thread.join()
    time.sleep(1.5 * ttl)
    said = []
    taker = StudyLease(tmp_path, echo=said.append, ttl_s=ttl).acquire()
    assert len(said) == 1 and said[0].startswith(f"taking over {tmp_path} from a driver whose lease expired (host ")
    assert read_lease(tmp_path / LEASE_NAME).token == taker.record.token
    holder.release()  # the old holder's release leaves the new lease alone
    assert read_lease(tmp_path / LEASE_NAME).token == taker.record.token
    taker.release()


def test_a_lease_left_by_a_killed_driver_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = StudyLease(tmp_path, ttl_s=60)
    record = {**stale.record.__dict__, "pid": int(dead.stdout), "heartbeat": time.time()}
    (tmp_path / LEASE_NAME).write_text(json.dumps(record))
    said = []
    with StudyLease(tmp_path, echo=said.append, ttl_s=60):
        assert said and "taking over" in said[0]


def test_a_second_rankstudy_run_refuses_in_one_line_and_changes_nothing(tmp_path):
    # The holder here is this test process; tests/test_study.py does the same with a real running driver.
    out = tmp_path / "study"
    with StudyLease(out, ttl_s=30):
        before = file_bytes(out)
        result = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(REPO / "configs" / "laptop.yaml"),
                                 "--output", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        assert result.stderr.startswith(f"error: {out} is held by another rankstudy run (host ")
        assert f"pid {os.getpid()}" in result.stderr and result.stderr.count("\n") == 1
        assert "output:" not in result.stdout  # refused before planning output or any write
        assert file_bytes(out) == before


def test_analyze_reads_a_held_directory(tmp_path):
    study = write_synthetic_study(tmp_path / "study", SyntheticSpec(seeds=(0, 1), steps=10, layers=4, eval_items=20))
    with StudyLease(study, ttl_s=30):
        result = subprocess.run([sys.executable, "-m", "orchestrator", "analyze", str(study)], capture_output=True,
                                text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (study / "report" / "summary.json").is_file()
