"""`rankstudy status DIR`: each run's state from the directory alone (hand-written directories here; during and
after real studies in tests/test_study.py), and the heartbeat that tells a live run from a gone one."""

import json
import time

import pytest

from orchestrator.cli import main
from orchestrator.core import attempts
from orchestrator.core.contract import RunRecord, StudyPaths, atomic_write_json, atomic_write_text
from orchestrator.core.heartbeat import STALE_AFTER_S
from orchestrator.status import study_status
from workers.progress_file import ProgressFile

NOW = 1_800_000_000.0  # the hand-written studies' clock; the CLI's test writes its study as of the real now


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _record(paths: StudyPaths, run_id: str, status: str, started: float, ended: float | None = None,
            error: str | None = None, eval_s: float = 20.0, total_s: float = 300.0, depends_on=None) -> None:
    strategy, seed = run_id.rsplit("-seed", 1)
    attempt = {"attempt": 1, "host": "node-a", "node_ip": "10.0.0.7", "started_at": _stamp(started),
               "ended_at": _stamp(ended) if ended else None, "ended": None}
    if ended:
        attempt["ended"] = "completed" if status == "completed" else f"failed: {error}"
    record = RunRecord(run_id, strategy, int(seed), status=status, attempts=[attempt], error=error,
                       spec={"depends_on": depends_on}, tables=["eval"] if status == "completed" else [],
                       timings={"train_s": total_s - eval_s, "eval_s": eval_s, "total_s": total_s})
    paths.write_record(record)
    if status == "completed":
        paths.table("eval", run_id).parent.mkdir(parents=True, exist_ok=True)
        paths.table("eval", run_id).write_bytes(b"")


@pytest.fixture
def study(tmp_path):
    return write_study(tmp_path, NOW)


def write_study(tmp_path, now: float):
    """uniform-seed0 completed; uniform-seed1 running at step 12/48; proportional-seed0 not started (its uniform
    run completed); proportional-seed1 waiting for uniform-seed1; random-seed0 failed; reduced-seed1 says running
    but its heartbeat stopped 10 minutes ago."""
    paths = StudyPaths(tmp_path)
    plan = [{"run_id": "uniform-seed0", "depends_on": None}, {"run_id": "uniform-seed1", "depends_on": None},
            {"run_id": "proportional-seed0", "depends_on": "uniform-seed0"},
            {"run_id": "proportional-seed1", "depends_on": "uniform-seed1"},
            {"run_id": "random-seed0", "depends_on": None}, {"run_id": "reduced-seed1", "depends_on": "uniform-seed1"}]
    atomic_write_text(paths.plan, json.dumps(plan))
    _record(paths, "uniform-seed0", "completed", now - 900, now - 600)
    _record(paths, "uniform-seed1", "running", now - 100)
    atomic_write_json(paths.progress("uniform-seed1"), {"phase": "train", "step": 12, "max_steps": 48,
                                                        "s_per_step": 5.0, "attempt": 1, "heartbeat": now - 3})
    _record(paths, "random-seed0", "failed", now - 500, now - 400, error="StudyError: profile has 3 layers")
    _record(paths, "reduced-seed1", "running", now - 2000)
    atomic_write_json(paths.progress("reduced-seed1"), {"phase": "train", "step": 30, "max_steps": 48,
                                                        "s_per_step": 5.0, "attempt": 1, "heartbeat": now - 600})
    return tmp_path


def test_each_state_is_read_from_the_directory(study):
    status = study_status(study, now=NOW)
    states = {r.run_id: r for r in status.runs}
    assert {k: v.state for k, v in states.items()} == {
        "uniform-seed0": "completed", "uniform-seed1": "running", "proportional-seed0": "not started",
        "proportional-seed1": "waiting", "random-seed0": "failed", "reduced-seed1": "stale"}
    running = states["uniform-seed1"]
    assert (running.step, running.max_steps, running.node, running.attempts) == (12, 48, "node-a (10.0.0.7)", 1)
    assert running.eta_s == pytest.approx(36 * 5.0 + 20.0)  # its pace, then a typical evaluation
    assert running.wall_s == pytest.approx(100, abs=1)
    assert states["uniform-seed0"].wall_s == pytest.approx(300, abs=1)
    assert states["random-seed0"].error == "StudyError: profile has 3 layers"
    assert states["reduced-seed1"].heartbeat_age_s == pytest.approx(600)
    assert not status.complete
    # One running run at a time: its 200 s, then 4 runs (proportional x2, failed random, stale reduced) of 300 s.
    assert status.eta_s == pytest.approx(200 + 4 * 300)


def test_the_cli_prints_a_line_per_run_and_exits_1_until_all_completed(tmp_path, capsys):
    study = write_study(tmp_path, float(int(time.time())))  # the CLI reads the clock
    assert main(["status", str(study)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7
    line = {text.split()[0]: text for text in out[:-1]}
    assert "failed: StudyError: profile has 3 layers; node node-a (10.0.0.7); attempts 1" in line["random-seed0"]
    assert "waiting for uniform-seed1" in line["proportional-seed1"]
    assert "stale: no heartbeat for" in line["reduced-seed1"] and "at step 30 of 48" in line["reduced-seed1"]
    assert "running: step 12 of 48, eta" in line["uniform-seed1"]
    assert out[-1].startswith("6 runs: ") and "no driver holds the directory" in out[-1]
    assert main(["status", str(study), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["complete"] is False and data["counts"]["failed"] == 1 and len(data["runs"]) == 6


def test_a_missing_study_is_one_line(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'} is not a directory\n"
    assert main(["status", str(tmp_path)]) == 2
    assert "holds no study" in capsys.readouterr().err


def test_the_heartbeat_keeps_a_quiet_run_fresh_and_records_its_pace(tmp_path):
    path = tmp_path / "progress.json"
    progress = ProgressFile(path, attempt=2, period_s=0.05)
    progress.start()
    assert json.loads(path.read_text())["phase"] == "setup"
    first = json.loads(path.read_text())["heartbeat"]
    time.sleep(0.3)  # a long setup: no report, yet the heartbeat moves
    assert json.loads(path.read_text())["heartbeat"] > first
    reported = progress.update({"step": 5, "max_steps": 10, "step_time_s": 2.0})  # a resumed run's first step
    assert reported["phase"] == "train" and reported["s_per_step"] == pytest.approx(2.0, rel=0.05)
    progress.close()
    written = json.loads(path.read_text())
    assert (written["attempt"], written["step"]) == (2, 5) and written["heartbeat"] >= written["updated"]
    assert STALE_AFTER_S > 4 * progress.period_s
    assert attempts.unix_time(_stamp(NOW)) == NOW
