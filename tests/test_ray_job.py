"""The cluster path (issue 5): `ray job submit --working-dir` against a real local Ray head on loopback."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    temp_dir = Path("/tmp") / f"ray-test-{os.getpid()}"  # short: Ray's socket paths must stay < 108 chars
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_study_on_the_cluster(ray_head, write_study_config, tmp_path):
    address, env = ray_head
    config = write_study_config("job", grid={"strategies": ["uniform"], "seeds": [0]},
                                grpo={"max_steps": 2}, data={"eval_limit": 4})
    out = tmp_path / "job-study"
    job_id = f"rankstudy-test-{int(time.time())}"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", ".git"]}),
         "--submission-id", job_id, "--",
         "rankstudy", "run", str(config), "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    log = submit.stdout[-4000:] + submit.stderr[-2000:]
    assert submit.returncode == 0, log
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED, log
    assert "runs: 1 done, 0 running, 0 pending" in submit.stdout
    assert json.loads((out / "runs" / "uniform-seed0" / "run.json").read_text())["status"] == "completed"
    assert len(pd.read_parquet(out / "metrics")) == 2
    assert (out / "report" / "index.html").is_file() and (out / "report" / "summary.json").is_file()
