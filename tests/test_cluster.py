"""A study on several Ray nodes of this machine, and the loss of one (issue 22).

Ray's own test harness (`ray.cluster_utils.Cluster`) starts a head and worker nodes as separate raylets here; each
worker node declares one custom `slot` and each run needs one, as a GPU would be on a cluster. Removing a node
with `allow_graceful=False` kills its raylet and every process on it, as a lost machine does. The driver joins
the cluster through RAY_ADDRESS, as under `ray job submit`.
"""

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from orchestrator.lease import LEASE_NAME
from tests.fixtures.studies import (
    FAULT_STUDY,
    REPO,
    Output,
    assert_same_tables,
    checkpoint_done,
    driver_env,
    rankstudy_run,
    wait_until,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster]

SLOT = {"custom": {"slot": 1.0}, "cpus_per_run": 1}


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    # A dead node is noticed after ~2 s instead of Ray's default ~30 s, so the test does not wait on it.
    head = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    workers = [head.add_node(num_cpus=1, resources={"slot": 1}) for _ in range(2)]
    head.wait_for_nodes()
    yield head, workers
    head.shutdown()


def _node_of_pid(cluster, pid: int):
    """The worker node whose raylet is an ancestor of ``pid``."""
    ancestors = {p.pid for p in psutil.Process(pid).parents()}
    for node in cluster.worker_nodes:
        raylet = node.all_processes["raylet"][0].process.pid
        if raylet in ancestors:
            return node
    raise AssertionError(f"no worker node hosts pid {pid}")


def _wait_for_checkpoint(run_dir: Path, step: int, driver: Output) -> dict:
    def written() -> bool:
        assert driver.proc.poll() is None, driver.text()[-3000:]  # (its output is read by `driver`'s thread)
        return checkpoint_done(run_dir, step).exists()

    wait_until(written, f"checkpoint {step} of {run_dir.name}", timeout=600)
    return json.loads((run_dir / "run.json").read_text())


def test_a_lost_node_costs_its_run_no_step_and_no_failure_budget(cluster, write_study_config, fault_reference,
                                                                tmp_path):
    head, _ = cluster
    # max_retries 0: if the loss counted as a crash, the run would fail.
    config = write_study_config("faults", **{**FAULT_STUDY, "grpo": {**FAULT_STUDY["grpo"], "checkpoint_every": 2},
                                             "resources": {**SLOT, "max_retries": 0}})
    out = tmp_path / "lost"
    driver = Output(rankstudy_run(config, out, wait=False, env=driver_env(RAY_ADDRESS=head.address)))
    record = _wait_for_checkpoint(out / "runs" / "uniform-seed0", 2, driver)
    lost = _node_of_pid(head, record["pid"])
    assert lost.node_id == record["attempts"][-1]["node_id"]
    head.remove_node(lost, allow_graceful=False)
    removed = time.time()
    stdout = driver.finish()
    assert driver.proc.returncode == 0, stdout[-3000:]
    assert "(interruption 1/10)" in stdout and "FAILED" not in stdout

    lost_run = json.loads((out / "runs" / "uniform-seed0" / "run.json").read_text())
    first, second = lost_run["attempts"]
    assert first["ended"].startswith(f"node-lost: node {lost.node_id} left the cluster") and first["ended_at"]
    assert second["node_id"] != lost.node_id and second["ended"] == "completed"
    assert lost_run["resumed_from_step"] >= 2
    other = json.loads((out / "runs" / "uniform-seed1" / "run.json").read_text())
    assert [a["ended"] for a in other["attempts"]] == ["completed"]  # the other run was not disturbed
    assert other["attempts"][0]["node_id"] != lost.node_id
    assert list(pd.read_parquet(out / "metrics" / "uniform-seed0.parquet")["step"]) == [1, 2, 3, 4, 5, 6]
    for run_id in ("uniform-seed0", "uniform-seed1"):
        assert_same_tables(out, fault_reference, run_id)  # resuming on CPU is exact
    restarted = datetime.strptime(second["started_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    print(f"\nnode lost at step >= 2: the run's next attempt started {restarted - removed:.0f} s later (1 s "
          f"resolution) and resumed from step {lost_run['resumed_from_step']}")


def test_a_node_lost_while_preparing_the_base_model_is_retried_elsewhere(cluster, tmp_path):
    head, _ = cluster
    config = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())
    config.update(
        name="prepare-lost", cache_dir=str(tmp_path / "cache"),
        model={**config["model"], "build": {**config["model"]["build"], "num_layers": 2}},
        data={**config["data"], "options": {**config["data"]["options"], "train_size": 200, "test_size": 8}},
        warm_start={**config["warm_start"], "steps": 160},
        grid={"strategies": ["base"], "seeds": [0]}, resources={"gpus_per_run": 0, **SLOT, "max_retries": 0})
    path = tmp_path / "prepare-lost.yaml"
    path.write_text(yaml.safe_dump(config))
    driver = Output(rankstudy_run(path, tmp_path / "out", wait=False, env=driver_env(RAY_ADDRESS=head.address)))
    line = driver.wait_for("warm start: step")
    pid = int(re.search(r"pid=(\d+)", line).group(1))
    lost = _node_of_pid(head, pid)
    head.remove_node(lost, allow_graceful=False)
    stdout = driver.finish()
    assert driver.proc.returncode == 0, stdout[-3000:]
    assert "1/1 runs completed" in stdout
    # The warm start started again in another process, on the node left.
    pids = {int(p) for p in re.findall(r"pid=(\d+)[^)]*\)[^\n]*warm start: step", stdout)}
    assert pid in pids and len(pids) == 2, pids
    record = json.loads((tmp_path / "out" / "runs" / "base-seed0" / "run.json").read_text())
    assert record["attempts"][0]["node_id"] != lost.node_id
    # The retry ran the warm start to its end on the other node: one prepared model in the cache.
    prepared = [p.parent for p in (tmp_path / "cache").rglob("warm_start.json")]
    assert len(prepared) == 1, prepared


def test_the_driver_joins_only_the_cluster_it_is_given(cluster):
    # A cluster already up on the machine (another user's, one a crashed test left): without RAY_ADDRESS the driver
    # starts its own; with it, it joins that one. The foreign cluster's `slot` resource tells them apart.
    head, _ = cluster
    probe = [sys.executable, "-c", "import ray; from orchestrator import scheduler; scheduler.connect(num_cpus=1); "
             "print(sorted(ray.cluster_resources())); scheduler.shutdown()"]
    own = subprocess.run(probe, capture_output=True, text=True, env=driver_env(), timeout=120)
    joined = subprocess.run(probe, capture_output=True, text=True, env=driver_env(RAY_ADDRESS=head.address),
                            timeout=120)
    assert own.returncode == 0 and joined.returncode == 0, own.stderr[-2000:] + joined.stderr[-2000:]
    assert "'slot'" not in own.stdout and "'slot'" in joined.stdout


def test_a_driver_whose_head_is_lost_stops_in_bounded_time_and_the_rerun_resumes(write_study_config,
                                                                                 fault_reference, tmp_path):
    from ray.cluster_utils import Cluster

    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    address = head.address
    try:
        config = write_study_config("faults", **{**FAULT_STUDY, "grpo": {**FAULT_STUDY["grpo"], "checkpoint_every": 2}})
        out = tmp_path / "headless"
        env = driver_env(RAY_ADDRESS=address, RANKSTUDY_HEAD_TIMEOUT_S="5")
        driver = Output(rankstudy_run(config, out, wait=False, env=env))
        _wait_for_checkpoint(out / "runs" / "uniform-seed0", 2, driver)
        head.remove_node(head.head_node, allow_graceful=False)
        lost = time.monotonic()
        stdout = driver.finish(timeout=120)
        took = time.monotonic() - lost
    finally:
        head.shutdown()
    assert driver.proc.returncode == 3, stdout[-3000:]
    assert f"error: lost the Ray cluster at {address}: its head has not answered for " in stdout
    assert took < 5 + 10 + 10, took  # the timeout, the watch's grace for a stuck main thread, slack
    assert not (out / LEASE_NAME).exists()
    print(f"\nthe driver ended {took:.1f} s after its head was lost (timeout 5 s)")
    rerun = rankstudy_run(config, out)  # on a cluster of its own
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    for run_id in ("uniform-seed0", "uniform-seed1"):
        assert_same_tables(out, fault_reference, run_id)
