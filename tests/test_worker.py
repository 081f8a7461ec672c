"""One GRPO run without Ray (issue 3): contract tables, profile shape, training changes LoRA, determinism."""

import math

import pyarrow.parquet as pq
import pytest
import torch
from transformers import TrainerCallback

from orchestrator.core.contract import StudyPaths
from orchestrator.core.plan import RunSpec
from orchestrator.resolve import load_study
from tests.fixtures import variance_task
from workers.run import GRPORun, execute_run

pytestmark = pytest.mark.slow

PROFILE_COLUMNS = {"run_id", "strategy", "seed", "step", "layer", "module", "rank", "grad_norm"}
METRIC_COLUMNS = {"run_id", "strategy", "seed", "step", "reward", "reward_format", "reward_correctness",
                  "reward_std", "kl", "loss", "step_time_s"}
EVAL_COLUMNS = {"run_id", "strategy", "seed", "item", "correct", "format_ok", "prediction", "target", "completion"}


class NonzeroGrads(TrainerCallback):
    """Which LoRA tensors ever had a non-zero gradient (seen right before each optimizer step)."""

    def __init__(self, model):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.nonzero: set[str] = set()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for name, p in self.params.items():
            if p.grad is not None and torch.count_nonzero(p.grad) > 0:
                self.nonzero.add(name)


def test_grpo_run_trains_profiles_and_evaluates(write_study_config, tmp_path):
    # The test task's length reward makes every group disagree, so the gradient flows on any CPU (issue 24).
    config = load_study(write_study_config(grid={"strategies": ["random"], "seeds": [0]},
                                           data={"task": variance_task.NAME}, rewards=variance_task.REWARDS)).config
    spec = RunSpec("random", 0, num_gpus=0, num_cpus=1)
    study = tmp_path / "study"
    run = GRPORun(config, spec, study)
    run.setup()
    model = run.trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    watcher = NonzeroGrads(model)
    run.trainer.add_callback(watcher)
    run.train()
    record = run.write(run.evaluate())
    run.cleanup()

    # Every LoRA tensor whose gradient was non-zero at some step changed; and gradients did flow.
    assert len(watcher.nonzero) > len(before) // 2, "unequal rewards in every group should give learning signal"
    after = dict(model.named_parameters())
    unchanged = [n for n in watcher.nonzero if torch.equal(before[n], after[n].detach())]
    assert not unchanged, unchanged[:5]
    assert all(".lora_" in n for n in before), "only LoRA parameters are trainable"

    paths = StudyPaths(study)
    assert paths.is_complete("random-seed0") and record.status == "completed"
    profile = pq.read_table(paths.table("profiles", "random-seed0")).to_pandas()
    assert PROFILE_COLUMNS <= set(profile.columns)
    layers, modules, steps = record.num_layers, len(config.lora.target_modules), config.grpo.max_steps
    assert len(profile) == steps * layers * modules
    assert sorted(profile["step"].unique()) == [1, 2, 3] and sorted(profile["layer"].unique()) == list(range(layers))
    # The ranks in the profile are the allocation recorded in run.json (and a random one is non-uniform here).
    by_layer = profile.groupby("layer")["rank"].unique()
    assert [int(r[0]) for r in by_layer] == record.allocation and all(len(r) == 1 for r in by_layer)
    assert sum(record.allocation) == layers * config.lora.rank
    assert profile["grad_norm"].map(math.isfinite).all() and (profile["grad_norm"] > 0).any()

    metrics = pq.read_table(paths.table("metrics", "random-seed0")).to_pandas()
    assert METRIC_COLUMNS <= set(metrics.columns) and list(metrics["step"]) == [1, 2, 3]
    assert (metrics["frac_reward_zero_std"] == 0).all(), "the length reward should make every group disagree"
    # TRL's clipping statistics are kept so a run can be audited afterwards (IS ratios need vLLM rollouts).
    assert metrics[["clip_ratio_low", "clip_ratio_high", "clip_ratio_region"]].notna().all().all()
    # The profiler's own time is measured inside each step: positive, and a small part of it.
    assert ((metrics["profile_time_s"] > 0) & (metrics["profile_time_s"] < 0.1 * metrics["step_time_s"])).all()
    evaluation = pq.read_table(paths.table("eval", "random-seed0")).to_pandas()
    assert EVAL_COLUMNS <= set(evaluation.columns) and len(evaluation) == config.data.eval_limit
    assert record.trainable_params == sum(sum(v) for v in record.lora_params.values())
    # The scaling convention is recorded and audited module by module (constant: alpha / rank = 16 / 8).
    assert record.lora["scaling"] == "constant" and record.lora["layer_scales"] == [2.0] * layers
    # The frozen base is bitwise what it was before training (run.json records both digests).
    assert record.frozen_base["before"] == record.frozen_base["after"] and len(record.frozen_base["before"]) == 64


def test_same_seed_same_allocation_and_metrics_other_seed_other_rollouts(write_study_config, tmp_path):
    config = load_study(write_study_config(grpo={"max_steps": 2}, data={"eval_limit": 2})).config
    records, metrics = [], []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        study = tmp_path / name
        records.append(execute_run(config, RunSpec("random", seed, num_gpus=0, num_cpus=1), study))
        metrics.append(pq.read_table(StudyPaths(study).table("metrics", f"random-seed{seed}")).to_pandas())
    a, b, c = records
    assert a.allocation == b.allocation != c.allocation
    deterministic = [col for col in metrics[0].columns if col not in ("step_time_s", "profile_time_s", "run_id", "seed")]
    assert metrics[0][deterministic].equals(metrics[1][deterministic])
    assert not set(metrics[0]["rollout_digest"]) & set(metrics[2]["rollout_digest"])


def test_second_execute_of_a_completed_run_is_a_no_op(write_study_config, tmp_path):
    config = load_study(write_study_config(grpo={"max_steps": 1}, data={"eval_limit": 2})).config
    spec = RunSpec("uniform", 0, num_gpus=0, num_cpus=1)
    execute_run(config, spec, tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    record = execute_run(config, spec, tmp_path)
    assert record.status == "completed"
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_proportional_run_from_a_given_profile_file(write_study_config, tmp_path):
    # allocation.profile_from: a profile .parquet (e.g. from an earlier study) instead of this seed's uniform run.
    import pandas as pd

    from orchestrator.core.plan import make_plan
    from orchestrator.core.strategies import allocate

    rows = [dict(run_id="uniform-seed9", strategy="uniform", seed=9, step=step, layer=layer, module=module, rank=8,
                 grad_norm=float(layer + 1)) for step in (1, 2) for layer in range(4) for module in ("q_proj", "v_proj")]
    profile = tmp_path / "earlier-profile.parquet"
    pd.DataFrame(rows).to_parquet(profile)
    config = load_study(write_study_config(
        allocation={"profile_from": str(profile)}, grid={"strategies": ["proportional"], "seeds": [0]},
        grpo={"max_steps": 1}, data={"eval_limit": 2})).config
    [spec] = make_plan(load_study(write_study_config(
        allocation={"profile_from": str(profile)}, grid={"strategies": ["proportional"], "seeds": [0]},
        grpo={"max_steps": 1}, data={"eval_limit": 2}))).runs
    assert spec.depends_on is None and spec.profile_path == str(profile)
    record = execute_run(config, spec, tmp_path / "study")
    assert record.importance == [2.0, 4.0, 6.0, 8.0]  # Eq. 2: mean over steps of the sum over modules
    assert record.importance_source == str(profile) and record.importance_nonfinite == 0
    assert record.allocation == allocate("proportional", importance=[2, 4, 6, 8], rank=8, r_min=4, r_max=16,
                                            multiple=4)


@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_each_model_family_gets_a_profiled_audited_grpo_run(family, gsm8k_texts, write_study_config, tmp_path):
    # The tiny builder makes each family's layout; the test task's length reward gives the rewards variance.
    import json

    from workers.local_model import build_local_model

    model_dir = build_local_model(tmp_path / family, num_layers=2, hidden_size=64, intermediate_size=128,
                                  num_heads=2, num_kv_heads=1, vocab_size=400, train_texts=gsm8k_texts[:300], seed=0,
                                  family=family)
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == family
    config = load_study(write_study_config(
        model={"name_or_path": str(model_dir)}, data={"task": variance_task.NAME, "eval_limit": 2},
        rewards=["length"], grpo={"max_steps": 2, "max_completion_length": 24},
        grid={"strategies": ["random"], "seeds": [2]})).config
    record = execute_run(config, RunSpec("random", 2, num_gpus=0, num_cpus=1), tmp_path / "study")
    assert record.status == "completed" and record.lora["layer_ranks"] == record.allocation == [12, 4]  # audited
    paths = StudyPaths(tmp_path / "study")
    profile = pq.read_table(paths.table("profiles", "random-seed2")).to_pandas()
    assert len(profile) == 2 * 2 * 7 and set(profile["module"]) == set(config.lora.target_modules)
    assert (profile[profile.step == 2]["grad_norm"] > 0).all()  # every module of every layer got gradient
    metrics = pq.read_table(paths.table("metrics", "random-seed2")).to_pandas()
    assert "reward_length" in metrics.columns and metrics["reward_length"].notna().all()


def test_every_hidden_grpo_setting_reaches_trl_explicitly(write_study_config, tmp_path):
    # The settings TRL would apply silently are config fields, and each one arrives in GRPOConfig as set.
    config = load_study(write_study_config(grpo={
        "top_p": 0.9, "top_k": 5, "disable_dropout": True, "mask_truncated_completions": True,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "use_vllm": True,
        "vllm_importance_sampling_correction": False})).config
    args = GRPORun(config, RunSpec("uniform", 0, num_gpus=0, num_cpus=1), tmp_path)._grpo_args()
    assert (args.top_p, args.top_k, args.disable_dropout, args.mask_truncated_completions) == (0.9, 5, True, True)
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.1
    assert args.vllm_importance_sampling_correction is False and args.use_vllm
    assert (args.loss_type, args.beta, args.scale_rewards) == ("grpo", config.grpo.beta, "group")


def test_a_run_whose_base_weights_change_fails_and_writes_no_results(write_study_config, tmp_path):
    # A training hook that writes into a frozen base weight (as an in-place merge left behind would).
    from orchestrator.core import strategies
    from orchestrator.core.errors import StudyError
    from workers.adapters import register_adapter, unregister_adapter
    from workers.adapters.lora import LoraAdapter

    class LeakIntoBase(TrainerCallback):
        def __init__(self, run):
            self.run = run

        def on_step_end(self, args, state, control, **kwargs):
            with torch.no_grad():
                self.run.trainer.model.get_base_model().model.embed_tokens.weight[0, 0] += 1.0

    @register_adapter
    class LeakyAdapter(LoraAdapter):
        name = "leaky_test"

        def callbacks(self, run):
            return [LeakIntoBase(run)]

    @strategies.register_strategy
    class Leaky(strategies.get_strategy("uniform").__class__):
        name = "leaky_test"
        adapter = "leaky_test"

    try:
        config = load_study(write_study_config(grid={"strategies": ["leaky_test"], "seeds": [0]},
                                                grpo={"max_steps": 1}, data={"eval_limit": 2})).config
        with pytest.raises(StudyError, match=r"leaky_test-seed0: the frozen base weights changed during the run"):
            execute_run(config, RunSpec("leaky_test", 0, num_gpus=0, num_cpus=1), tmp_path)
    finally:
        strategies.unregister_strategy("leaky_test")
        unregister_adapter("leaky_test")
    paths = StudyPaths(tmp_path)
    record = paths.read_record("leaky_test-seed0")
    assert record.status == "failed" and "frozen base" in record.error
    assert not any(paths.table(kind, "leaky_test-seed0").exists() for kind in ("profiles", "metrics", "eval"))


def test_base_run_evaluates_the_untrained_model_exactly_as_trained_runs_are(write_study_config, tmp_path):
    from orchestrator.core.plan import make_plan
    from workers.evaluate import generate_greedy_hf, prompt_token_ids
    from workers.model import load_model_and_tokenizer
    from workers.tasks import get_task

    study = load_study(write_study_config(grid={"strategies": ["base", "uniform"], "seeds": [3, 4]},
                                          grpo={"max_steps": 1}, data={"eval_limit": 6}))
    config, plan = study.config, make_plan(study)
    assert [r.run_id for r in plan.runs] == ["base-seed0", "uniform-seed3", "uniform-seed4"]  # once, seed-free
    spec = plan.runs[0]
    record = execute_run(config, spec, tmp_path)
    paths = StudyPaths(tmp_path)
    assert record.status == "completed" and record.tables == ["eval"] and paths.is_complete("base-seed0")
    assert record.trainable_params == 0 and record.steps == 0 and record.allocation is None
    assert record.frozen_base["before"] == record.frozen_base["after"]
    assert not paths.table("profiles", "base-seed0").exists() and not paths.adapter("base-seed0").exists()
    evaluation = pq.read_table(paths.table("eval", "base-seed0")).to_pandas()
    assert set(evaluation["strategy"]) == {"base"} and len(evaluation) == 6
    # The same completions as the plain model (no PEFT wrapper at all) decoded with the evaluation's settings.
    model, tokenizer = load_model_and_tokenizer(config.model.name_or_path)
    test = get_task("gsm8k").load(config.data.test, "test", limit=6, system_prompt=config.data.system_prompt)
    expected = generate_greedy_hf(model, tokenizer, prompt_token_ids(tokenizer, test["prompt"]),
                                  config.grpo.max_completion_length, batch_size=config.grpo.eval_batch_size)
    assert evaluation.sort_values("item")["completion"].tolist() == expected
