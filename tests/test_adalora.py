"""The adalora strategy: PEFT's AdaLoRA under GRPO really re-allocates ranks, and the profile records them."""

import pyarrow.parquet as pq
import pytest

from orchestrator.core.contract import StudyPaths
from orchestrator.core.errors import ConfigError
from orchestrator.core.plan import RunSpec
from orchestrator.resolve import load_study
from workers.adapters import adalora
from workers.run import execute_run

# 6 steps: step 1 trains at init_r, pruning re-allocates at steps 1-3 (tinit 0, every step), the budget reaches
# its target at step 4 (total_step - tfinal), and steps 5-6 train at the final ranks.
SCHEDULE = {"tinit_fraction": 0.0, "tfinal_fraction": 0.34, "delta_t": 1}


def _config(write_study_config, name="ada", steps=6):
    return load_study(write_study_config(name=name, grid={"strategies": ["adalora"], "seeds": [0]},
                                          adalora=SCHEDULE, grpo={"max_steps": steps, "checkpoint_every": 10})).config


def test_adalora_ranks_change_during_training_to_uniforms_budget(write_study_config, tmp_path):
    config = _config(write_study_config)
    record = execute_run(config, RunSpec("adalora", 0, num_gpus=0, num_cpus=1), tmp_path)
    profile = pq.read_table(StudyPaths(tmp_path).table("profiles", record.run_id)).to_pandas()
    modules = len(config.lora.target_modules) * record.num_layers
    per_step = profile.groupby("step")["rank"].agg(["sum", "min", "max"])
    init_r, rank = 12, config.lora.rank  # round(1.5 x 8)
    assert record.initial_allocation == [init_r] * record.num_layers
    assert per_step.loc[1].tolist() == [init_r * modules, init_r, init_r]  # nothing pruned before the first step
    assert per_step.loc[6, "sum"] == rank * modules  # uniform's total rank budget at the end
    assert per_step.loc[6, "max"] > per_step.loc[6, "min"]  # ...distributed unevenly: re-allocated, not shrunk
    assert sum(sum(v) for v in record.module_ranks.values()) == rank * modules
    assert record.trainable_params == sum(init_r * (sum(shape) + 1) for shape in _shapes(record, config))
    # What run.json says of it: the scale rule PEFT applies (alpha / init_r, for every module whatever its rank),
    # and uniform LoRA's parameter count beside AdaLoRA's (every triplet stays trainable).
    assert record.lora["scaling"] == "constant"
    assert record.lora["uniform_trainable_params"] == sum(rank * sum(shape) for shape in _shapes(record, config))
    ratio = record.lora["orthogonality_to_policy_grad"]
    assert ratio["steps"] == 6 and ratio["first"] > 0 and ratio["weight"] == config.adalora.orth_reg_weight


def test_the_profiles_total_rows_leave_the_orthogonality_regulariser_out(write_study_config, tmp_path):
    # At step 1 both runs have the same weights and batch, so the same policy gradient: their total rows agree
    # whatever the regulariser's weight, which they would not if its gradient were in them (it is its own
    # component on decomposed steps). Six steps: with two, PEFT's rank allocator fails at its first allocation
    # (KeyError on lora_A's sensitivity).
    profiles = {}
    for weight in (0.25, 0.5):
        config = load_study(write_study_config(name=f"orth{weight}", grid={"strategies": ["adalora"], "seeds": [0]},
                                               adalora={**SCHEDULE, "orth_reg_weight": weight},
                                               grpo={"max_steps": 6, "checkpoint_every": 10})).config
        record = execute_run(config, RunSpec("adalora", 0, num_gpus=0, num_cpus=1), tmp_path / str(weight))
        profile = pq.read_table(StudyPaths(tmp_path / str(weight)).table("profiles", record.run_id)).to_pandas()
        profiles[weight] = profile[profile["step"] == 1]["grad_norm"].to_numpy()
        assert record.lora["orthogonality_to_policy_grad"]["first"] > 0.01  # a regulariser that was there
    assert profiles[0.5] == pytest.approx(profiles[0.25], rel=1e-4)


def _shapes(record, config):
    from transformers import AutoModelForCausalLM

    from workers.model import discover_layers

    model = AutoModelForCausalLM.from_pretrained(config.model.name_or_path)
    layout = discover_layers(model, config.lora.target_modules)
    return [layout.shape(layer, m) for layer in range(layout.num_layers) for m in layout.modules]


def test_without_update_and_allocate_adalora_stays_plain_lora(write_study_config, tmp_path, monkeypatch):
    # peft#3373: nothing fails, AdaLoRA just never prunes. The worker's call is what makes the ranks move.
    monkeypatch.setattr(adalora.AdaLoraAllocation, "on_optimizer_step", lambda self, *a, **kw: None)
    config = _config(write_study_config, name="ada_nocall", steps=4)
    record = execute_run(config, RunSpec("adalora", 0, num_gpus=0, num_cpus=1), tmp_path)
    profile = pq.read_table(StudyPaths(tmp_path).table("profiles", record.run_id)).to_pandas()
    assert set(profile["rank"]) == {12}
    assert set(record.allocation) == {12}


def test_adalora_config_errors_name_the_key(write_study_config):
    with pytest.raises(ConfigError, match=r"^lora\.scaling: adalora"):
        load_study(write_study_config(grid={"strategies": ["adalora"], "seeds": [0]}, lora={"scaling": "rslora"}))
    with pytest.raises(ConfigError, match=r"^adalora: grpo\.max_steps \(2\) leaves no pruning phase"):
        load_study(write_study_config(grid={"strategies": ["adalora"], "seeds": [0]},
                                       adalora={"tinit_fraction": 0.5, "tfinal_fraction": 0.49},
                                       grpo={"max_steps": 2}))


def test_a_failed_adalora_run_restarts_from_step_0_and_says_why(write_study_config, tmp_path):
    # peft 0.21 saves AdaLoRA checkpoints at the pruned ranks, which do not load into the training model: a run
    # stopped after step 5 (checkpoint at step 4) trains again from step 1 and records why.
    from transformers import TrainerCallback

    from workers.run import GRPORun

    config = load_study(write_study_config(name="ada_restart", grid={"strategies": ["adalora"], "seeds": [0]},
                                            adalora=SCHEDULE, grpo={"max_steps": 6, "checkpoint_every": 4})).config
    spec = RunSpec("adalora", 0, num_gpus=0, num_cpus=1)

    class StopAfter5(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 5

    first = GRPORun(config, spec, tmp_path)
    first.setup()
    first.trainer.add_callback(StopAfter5())
    first.train()
    assert (StudyPaths(tmp_path).checkpoints(spec.run_id) / "checkpoint-4").is_dir()
    record = execute_run(config, spec, tmp_path)
    assert record.resumed_from_step is None
    assert any(w.startswith("adalora: restarted from step 0, not resumed from checkpoint-4") for w in record.warnings)
    profile = pq.read_table(StudyPaths(tmp_path).table("profiles", record.run_id)).to_pandas()
    assert sorted(profile["step"].unique()) == [1, 2, 3, 4, 5, 6]
    assert profile[profile["step"] == 6]["rank"].sum() == config.lora.rank * len(profile[profile["step"] == 6])
