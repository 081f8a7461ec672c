"""Faults on one Ray node (issue 22): a run actor told to stop, a full output disk, a lost head, a foreign cluster.

Each interrupted study must end with the tables of the uninterrupted `fault_reference` (resuming on CPU is exact:
same data order, RNG state and weights from the checkpoint), every step once.
"""

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.fixtures.studies import FAULT_STUDY, Output, assert_same_tables, rankstudy_run, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _wait_for_step(run_dir, step: int, timeout=300) -> dict:
    """The run's progress.json once it reports ``step`` (or later): the attempt that reported it, its pid."""
    def reached() -> dict | None:
        try:
            progress = json.loads((run_dir / "progress.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return progress if progress.get("step", 0) >= step else None

    return wait_until(reached, f"{run_dir.name} reached step {step}", timeout=timeout, interval=0.05)


def _gone_within(pid: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive {timeout} s after it was told to stop")


def test_a_run_told_to_stop_checkpoints_at_the_next_step_and_resumes_there(write_study_config, fault_reference,
                                                                            tmp_path):
    # No periodic checkpoint (checkpoint_every > max_steps): the only one to resume from is the stop's. No crash
    # budget either (max_retries 0): a stop request is an interruption, not a failure.
    config = write_study_config("faults", **{**FAULT_STUDY, "grpo": {**FAULT_STUDY["grpo"], "checkpoint_every": 100},
                                             "resources": {"max_retries": 0}})
    out = tmp_path / "stop"
    driver = Output(rankstudy_run(config, out, wait=False))
    run_dir = out / "runs" / "uniform-seed0"
    pid = _wait_for_step(run_dir, 1)["pid"]
    os.kill(pid, signal.SIGTERM)
    told = time.monotonic()
    exit_s = _gone_within(pid, timeout=120)
    stdout = driver.finish()
    assert driver.proc.returncode == 0, stdout[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    first, second = record["attempts"]
    stopped_at = int(first["ended"].split("at step ")[1].split(";")[0])
    assert first["ended"].startswith("stopped: SIGTERM at step ") and first["pid"] == pid
    assert second["ended"] == "completed" and record["resumed_from_step"] == stopped_at >= 1
    assert "resuming from its latest checkpoint (interruption 1/10)" in stdout
    assert list(pd.read_parquet(out / "metrics" / "uniform-seed0.parquet")["step"]) == [1, 2, 3, 4, 5, 6]
    for run_id in ("uniform-seed0", "uniform-seed1"):
        assert_same_tables(out, fault_reference, run_id)
    print(f"\nstopped at step {stopped_at}; the actor process ended {exit_s:.1f} s after SIGTERM "
          f"({time.monotonic() - told:.1f} s to the end of the study)")


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs of the test's own, to fill without filling the machine's disk (mounting needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the full-disk test needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path) -> int:
    """Write ``path`` until the disk is full; the bytes written."""
    chunk, written = b"\0" * 2**20, 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError:
                return written


def test_a_full_output_disk_fails_its_runs_in_one_line_and_the_rerun_completes(write_study_config, fault_reference,
                                                                              small_disk):
    config = write_study_config("faults", **{**FAULT_STUDY, "grpo": {**FAULT_STUDY["grpo"], "checkpoint_every": 2}})
    out = small_disk / "study"
    driver = Output(rankstudy_run(config, out, wait=False))
    _wait_for_step(out / "runs" / "uniform-seed0", 1)
    ballast = small_disk / "ballast"
    _fill(ballast)
    stdout = driver.finish()
    assert driver.proc.returncode == 1, stdout[-3000:]
    failed = [line for line in stdout.splitlines() if line.startswith("  FAILED ")]
    assert len(failed) == 2, stdout[-3000:]
    for line in failed:  # one line each, naming the directory and its space, not retried
        assert f"OutputSpaceError: no space left in the output directory {out} (" in line and "MiB free of 64.0 MiB" \
            in line, line
    assert "resuming from" not in stdout and "Traceback" not in stdout
    print("\n" + "\n".join(failed))
    # Nothing partial is visible: no temporary file, every table and run.json whole.
    assert not [p for p in out.rglob(".*.tmp")]
    for table in [*out.glob("profiles/*.parquet"), *out.glob("metrics/*.parquet"), *out.glob("eval/*.parquet")]:
        pq.read_table(table)
    for record in out.glob("runs/*/run.json"):
        assert json.loads(record.read_text())["status"] in ("running", "failed")

    ballast.unlink()
    rerun = rankstudy_run(config, out)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    for run_id in ("uniform-seed0", "uniform-seed1"):
        assert_same_tables(out, fault_reference, run_id)
