"""The output contract (issue 10): run ids with and without cells, run.json as a typed record, paths, schemas."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from orchestrator.core import contract
from orchestrator.core.contract import RunRecord, StudyPaths


def test_run_ids_without_axes_are_todays_and_cells_are_encoded_stably():
    assert contract.run_id("uniform", 0) == "uniform-seed0" == contract.run_id("uniform", 0, {})
    cell = {"lora.rank": 8, "grpo.learning_rate": 1e-05}
    rid = contract.run_id("proportional", 2, cell)
    assert rid == "proportional-seed2__rank-8__learning_rate-1e-05"
    assert contract.run_id("proportional", 2, dict(cell)) == rid  # a function of its inputs only
    assert contract.parse_run_id(rid) == ("proportional", 2, "rank-8__learning_rate-1e-05")
    assert contract.parse_run_id("uniform-seed0") == ("uniform", 0, "")
    # Distinct values give distinct ids, also where they would collide once slugged.
    values = ["a/b", "a_b", "a b", "a.b", "A/B", "../data/x.jsonl", "x" * 80]
    ids = {contract.run_id("uniform", 0, {"model.name_or_path": v}) for v in values}
    assert len(ids) == len(values)
    for run_id in ids:
        assert all(ch.isalnum() or ch in "._-" for ch in run_id), run_id


def test_actor_names_include_the_cell():
    assert contract.actor_name("uniform", 1) == "grpo:uniform:seed1"
    assert contract.actor_name("uniform", 1, {"lora.rank": 8}) == "grpo:uniform:seed1:rank-8"


def test_run_record_round_trips_and_reads_older_files(tmp_path):
    paths = StudyPaths(tmp_path)
    record = RunRecord("uniform-seed0__rank-8", "uniform", 0, axes={"lora.rank": 8}, allocation=[8, 8],
                       timings={"train_s": 1.5}, eval={"n": 2, "correct": 1, "accuracy": 0.5})
    paths.write_record(record)
    assert paths.read_record("uniform-seed0__rank-8") == record
    # A run.json of an earlier version: no axes, a key this version does not know (kept as it is).
    older = {"run_id": "random-seed1", "strategy": "random", "seed": 1, "status": "completed",
             "allocation": [4, 12], "host_gpu": "A100"}
    paths.run_json("random-seed1").parent.mkdir(parents=True)
    paths.run_json("random-seed1").write_text(json.dumps(older))
    read = paths.read_record("random-seed1")
    assert read.axes == {} and read.allocation == [4, 12] and read.extra == {"host_gpu": "A100"}
    assert read.to_json()["host_gpu"] == "A100"
    with pytest.raises((TypeError, ValueError)):
        RunRecord.from_json({"run_id": "x-seed0", "seed": "zero"})


def test_paths_and_schemas():
    paths = StudyPaths("/s")
    assert str(paths.table("profiles", "uniform-seed0")) == "/s/profiles/uniform-seed0.parquet"
    with pytest.raises(ValueError, match="unknown table 'prof'"):
        paths.table("prof", "x")
    schema = contract.metrics_schema(["format", "correctness"])
    assert schema.names[:7] == ["run_id", "strategy", "seed", "step", "reward", "reward_format",
                                "reward_correctness"]
    assert schema.names[-1] == "rollout_digest" and schema.field("step_time_s").type == pa.float64()
    assert contract.PROFILE_SCHEMA.names == ["run_id", "strategy", "seed", "step", "layer", "module", "rank",
                                             "grad_norm", "nonfinite", "component", "weight_grad_norm"]
    assert contract.GEOMETRY_SCHEMA.names == ["run_id", "strategy", "seed", "step", "layer", "module", "rank",
                                              "update_norm", "effective_rank", "principal_overlap"]


def test_the_metrics_columns_the_worker_fills_are_the_contracts():
    # The worker maps TRL's log keys to columns; the contract declares them: one must not drift from the other.
    from workers.tasks import get_task
    from workers.trainer import trl_metric_columns

    filled = set(trl_metric_columns(get_task("gsm8k").rewards).values()) | {"step_time_s", "profile_time_s"}
    declared = set(contract.metrics_schema().names) - {"run_id", "strategy", "seed", "step", "rollout_digest"}
    assert filled == declared


def test_an_unreadable_run_json_is_one_line_naming_the_file(tmp_path):
    from orchestrator.core.errors import StudyError

    paths = StudyPaths(tmp_path)
    paths.run_json("uniform-seed0").parent.mkdir(parents=True)
    paths.run_json("uniform-seed0").write_text("{truncated")
    with pytest.raises(StudyError, match=r"uniform-seed0/run\.json: not a readable run\.json"):
        paths.is_complete("uniform-seed0")
