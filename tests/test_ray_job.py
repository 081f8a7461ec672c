"""The cluster path (issue 5): `ray job submit --working-dir` against a real local Ray head on loopback, with
Ray's token authentication on, as a cluster should run it (issue 22)."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEST_PROBLEMS = 64  # the shortened laptop study's generated test split


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A head started as the README says, with token authentication; yields (dashboard URL, env with the token,
    the token). The token is the test's own, passed in RAY_AUTH_TOKEN, so ~/.ray/auth_token is left alone."""
    token = secrets.token_hex(32)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
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
        yield f"http://127.0.0.1:{dashboard}", env, token
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_documented_cluster_command_runs_the_laptop_study(ray_head, tmp_path):
    # The README's command on the laptop config: the job runs in the uploaded working directory, so the study
    # must need nothing outside the repository (its task is generated; its model is built there). Shortened with
    # --set (300 warm-start steps, 3 GRPO steps, 64 test problems: ~170 s instead of 564 s; the warm start
    # still gives groups with unequal rewards, so every allocation has a gradient profile): what this tests is
    # the cluster path; the full study's numbers are `make bench`'s laptop benchmark.
    address, env, token = ray_head
    out = tmp_path / "laptop"
    job_id = f"rankstudy-test-{int(time.time())}"
    shorter = ["warm_start.steps=300", "grpo.max_steps=3", "grpo.checkpoint_every=2",
               f"data.options.test_size={TEST_PROBLEMS}", "data.options.train_size=400"]
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--submission-id", job_id,
         "--", "rankstudy", "run", "configs/laptop.yaml", "--output", str(out),
         *[arg for setting in shorter for arg in ("--set", setting)]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )
    log = submit.stdout[-4000:] + submit.stderr[-2000:]
    assert submit.returncode == 0, log
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, log
    assert "runs: 9 done, 0 running, 0 pending" in submit.stdout
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/run.json"))]
    assert len(records) == 9 and all(r["status"] == "completed" for r in records)
    evaluation = pd.read_parquet(out / "eval")
    assert (evaluation.groupby("run_id").size() == TEST_PROBLEMS).all()  # every run on the whole generated test split
    assert all(r["steps"] == 3 for r in records if r["strategy"] != "base"), records
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert list(summary["strategies"])[:2] == ["base", "uniform"] and (out / "report" / "index.html").is_file()


def _get(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_head_refuses_a_client_without_its_token(ray_head):
    # Anyone who reaches an unauthenticated head's job API can run code there; with the token on, only a client
    # holding it gets in (ray job submit reads RAY_AUTH_TOKEN or ~/.ray/auth_token).
    address, env, token = ray_head
    jobs = f"{address}/api/jobs/"
    assert _get(jobs, {}) == 401
    assert _get(jobs, {"Authorization": f"Bearer {secrets.token_hex(32)}"}) in (401, 403)
    assert _get(jobs, {"Authorization": f"Bearer {token}"}) == 200
    without = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    without["HOME"] = str(Path(env.get("TMPDIR", "/tmp")) / f"no-token-home-{os.getpid()}")  # no ~/.ray/auth_token
    refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=without,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0, refused.stdout[-2000:]
