"""Experiment trackers: what a run reports, read back with each tool's own reader (TensorBoard, MLflow)."""

import json

import pytest

from orchestrator.core.config import load_config
from orchestrator.core.errors import ConfigError
from orchestrator.core.plan import RunSpec
from orchestrator.resolve import load_study
from tests.fixtures import variance_task
from workers.run import execute_run
from workers.trainer import LAYER_SHARE_KEY

STEPS = 3


def _run(write_study_config, tmp_path, tracking: dict):
    config = load_study(write_study_config(name="tracked", tracking=tracking,
                                           grpo={"max_steps": STEPS, "checkpoint_every": STEPS},
                                           data={"task": variance_task.NAME, "eval_limit": 2},
                                           rewards=variance_task.REWARDS)).config
    spec = RunSpec("uniform", 0, num_gpus=0, num_cpus=1)
    record = execute_run(config, spec, tmp_path)
    assert record.status == "completed"
    return config, record


def test_tensorboard_gets_the_reward_at_every_step_and_the_layer_shares(write_study_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, record = _run(write_study_config, tmp_path, {"backend": "tensorboard"})
    run_dir = tmp_path / "tracking" / "tensorboard" / record.run_id  # one log directory per run, named by its id
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("train/reward")] == list(range(1, STEPS + 1))
    shares = [f"train/{LAYER_SHARE_KEY.format(layer=layer)}" for layer in range(record.num_layers)]
    assert set(shares) <= set(scalars)
    last = [events.Scalars(tag)[-1].value for tag in shares]
    assert sum(last) == pytest.approx(1.0, abs=1e-5) and all(v > 0 for v in last)


def test_mlflow_groups_runs_by_study_and_tags_them(write_study_config, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the reader, as the run's own environment has it
    config, record = _run(write_study_config, tmp_path, {"backend": "mlflow", "project": "rank-study"})
    client = MlflowClient(tracking_uri=(tmp_path / "tracking" / "mlflow").resolve().as_uri())
    experiment = client.get_experiment_by_name("rank-study")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == [record.run_id]
    tags = runs[0].data.tags
    assert (tags["study"], tags["strategy"], tags["seed"]) == ("tracked", "uniform", "0")
    rewards = client.get_metric_history(runs[0].info.run_id, "reward")
    assert sorted(m.step for m in rewards) == list(range(1, STEPS + 1))
    share = client.get_metric_history(runs[0].info.run_id, LAYER_SHARE_KEY.format(layer=0))
    assert len(share) == STEPS and all(0 < m.value < 1 for m in share)


def test_tracking_settings_are_checked_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError, match="tracking.backend: must be one of none, tensorboard, mlflow, wandb, trackio"):
        load_config("configs/laptop.yaml", ["tracking.backend=tb"])
    with pytest.raises(ConfigError, match="tracking.online: only the wandb backend"):
        load_config("configs/laptop.yaml", ["tracking.backend=mlflow", "tracking.online=true"])
    with pytest.raises(ConfigError, match="tracking.uri: only tensorboard and mlflow"):
        load_config("configs/laptop.yaml", ["tracking.backend=wandb", "tracking.uri=/x"])


def test_a_missing_backend_package_is_one_line(monkeypatch):
    import importlib.util

    from orchestrator.core import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"wandb needs the wandb package, .*pip install 'rankstudy\[wandb\]'"):
        tracking.check_installed(tracking.TrackingSettings(backend="wandb"))


def test_wandb_is_offline_unless_asked_and_names_the_run(tmp_path):
    from orchestrator.core.tracking import TrackingSettings
    from workers.tracking import tracker_environment

    env = tracker_environment(TrackingSettings(backend="wandb"), tmp_path, "study", "uniform-seed0__rank-8",
                              {"strategy": "uniform", "seed": 0, "lora.rank": 8})
    assert env["WANDB_MODE"] == "offline" and env["WANDB_NAME"] == "uniform-seed0__rank-8"
    assert env["WANDB_RUN_GROUP"] == "study" and "lora.rank:8" in env["WANDB_TAGS"].split(",")
    assert tracker_environment(TrackingSettings(backend="wandb", online=True), tmp_path, "s", "r", {})[
        "WANDB_MODE"] == "online"
    assert json.loads(tracker_environment(TrackingSettings(backend="mlflow"), tmp_path, "s", "r", {"seed": 1})[
        "MLFLOW_TAGS"]) == {"study": "s", "seed": "1"}


def test_a_warm_start_that_trains_reports_to_the_tracker_as_the_sft_run(tiny_model_dir, gsm8k_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from orchestrator.core.tracking import TrackingSettings
    from tests.fixtures.tiny import TINY_TEST_SETTINGS, gsm8k_data
    from workers.tracking import tracker_args, tracking_environment
    from workers.warmstart import warm_start

    settings = TrackingSettings(backend="tensorboard")
    with tracking_environment(settings, tmp_path, "study", "sft-seed0", {"strategy": "sft"}):
        warm_start(tiny_model_dir, gsm8k_data(str(gsm8k_dir / "train.jsonl")), tmp_path / "cache",
                   **{**TINY_TEST_SETTINGS, "steps": 2}, tracker=tracker_args(settings, "sft-seed0", "study"))
    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard" / "sft-seed0"))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
