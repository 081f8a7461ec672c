"""The strategy registry (issue 10): one class per strategy, and a strategy that exists only in this file (with a
worker adapter of its own) runs through the plan, a tiny worker run and the analysis with no edit anywhere else."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from transformers import TrainerCallback

from dashboards.analysis import analyze
from dashboards.style import order_strategies, strategy_color
from orchestrator.core import strategies
from orchestrator.core.config import PAPER_STRATEGIES
from orchestrator.core.contract import StudyPaths
from orchestrator.core.errors import ConfigError, StudyError
from orchestrator.core.plan import make_plan
from orchestrator.core.strategies import AllocationRequest, Strategy, allocate, register_strategy
from orchestrator.resolve import load_study
from workers.adapters import adapter_names, get_adapter, register_adapter, unregister_adapter
from workers.adapters.lora import LoraAdapter


class RecordRanksAtStep2(TrainerCallback):
    """A training-time hook as a dynamic strategy would have: it changes the ranks the profiler records."""

    def __init__(self, run):
        self.run = run
        self.calls = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.calls += 1
        if state.global_step == 1:  # the second step's rows carry rank 1 for layer 0's modules
            self.run.profiler.set_ranks({(0, m): 1 for m in self.run.layout.modules})


class LoraWithRankHook(LoraAdapter):
    """A worker adapter of this file: plain LoRA plus a training-time hook that changes the recorded ranks."""

    name = "lora_rank_hook_test"

    def callbacks(self, run) -> list:
        self.hook = RecordRanksAtStep2(run)
        return [self.hook]


class Alternating(Strategy):
    name = "alternating_test"
    description = "r_max on even layers, r_min on odd ones (exists only in this test file)"
    adapter = LoraWithRankHook.name

    def ranks(self, request: AllocationRequest) -> list[int]:
        return [request.r_max if layer % 2 == 0 else request.r_min for layer in range(request.num_layers)]


@pytest.fixture
def alternating():
    register_strategy(Alternating)
    register_adapter(LoraWithRankHook)
    try:
        yield strategies.get_strategy("alternating_test")
    finally:
        strategies.unregister_strategy("alternating_test")
        unregister_adapter(LoraWithRankHook.name)


def test_registry_lists_and_names_unknown_strategies():
    assert strategies.registered_names() == ["adalora", "base", "proportional", "proportional_r2", "proportional_r3",
                                             "random", "reduced", "uniform"]
    assert PAPER_STRATEGIES == ("base", "uniform", "proportional", "random", "reduced")
    assert [s for s in strategies.registered_names() if not strategies.get_strategy(s).trains] == ["base"]
    assert [s for s in strategies.registered_names() if strategies.get_strategy(s).needs_profile] == [
        "proportional", "proportional_r2", "proportional_r3", "reduced"]
    assert {strategies.get_strategy(s).adapter for s in strategies.registered_names()} == set(adapter_names())
    assert get_adapter("adalora").ranks_change and not get_adapter("lora").ranks_change
    with pytest.raises(ConfigError, match=r"^allocation: unknown strategy 'greedy'; registered strategies: adalora, "
                                          r"base, proportional, proportional_r2, proportional_r3, random, "
                                          r"reduced, uniform$"):
        allocate("greedy", num_layers=2, rank=8, r_min=4, r_max=16, multiple=4)
    with pytest.raises(StudyError, match=r"^adapter 'qlora' is not registered in the worker .* registered adapters: "
                                         r"adalora, lora$"):
        get_adapter("qlora")
    with pytest.raises(TypeError, match="already registered"):
        register_strategy(type("Again", (Strategy,), {"name": "uniform"}))
    # Presentation is the dashboards': Table 1's order, then strategies without a style alphabetically, SFT last.
    assert order_strategies({"zeta", "reduced", "sft", "uniform", "alpha"}) == ["uniform", "reduced", "alpha", "zeta",
                                                                               "sft"]


def test_profile_sources_must_be_in_the_grid_and_acyclic(write_study_config):
    plan = make_plan(load_study(write_study_config(allocation={"profile_from": "random"},
                                                   grid={"strategies": ["random", "proportional"], "seeds": [0]})))
    assert [(r.run_id, r.depends_on) for r in plan.runs] == [("random-seed0", None),
                                                             ("proportional-seed0", "random-seed0")]
    with pytest.raises(ConfigError, match=r"^grid\.strategies: \['proportional'\] need layer importance from the "
                                          r"random run"):
        load_study(write_study_config(allocation={"profile_from": "random"},
                                       grid={"strategies": ["uniform", "proportional"], "seeds": [0]}))
    with pytest.raises(ConfigError, match=r"^allocation\.profile_from: base runs write no gradient profile per seed"):
        load_study(write_study_config(allocation={"profile_from": "base"},
                                       grid={"strategies": ["base", "proportional"], "seeds": [0, 1]}))
    with pytest.raises(ConfigError, match=r"profile sources form a cycle \(proportional -> proportional\)"):
        load_study(write_study_config(allocation={"profile_from": "proportional"},
                                       grid={"strategies": ["proportional"], "seeds": [0]}))


def test_a_strategy_defined_only_here_runs_through_plan_worker_and_analysis(alternating, write_study_config,
                                                                           tmp_path):
    from workers.run import execute_run

    plan = make_plan(load_study(write_study_config(grid={"strategies": ["uniform", "alternating_test"], "seeds": [0]},
                                                   grpo={"max_steps": 2}, data={"eval_limit": 2})))
    assert [r.run_id for r in plan.runs] == ["uniform-seed0", "alternating_test-seed0"]
    assert plan.runs[1].depends_on is None and plan.runs[1].actor_name == "grpo:alternating_test:seed0"

    study = tmp_path / "study"
    records = {spec.strategy: execute_run(plan.config_for(spec), spec, study) for spec in plan.runs}
    record = records["alternating_test"]
    assert record.allocation == [16, 4, 16, 4] == record.lora["layer_ranks"]  # audited: the model got them
    assert get_adapter(LoraWithRankHook.name).hook.calls == 2  # the adapter's training hook ran every step
    profile = pq.read_table(StudyPaths(study).table("profiles", "alternating_test-seed0")).to_pandas()
    ranks = profile.groupby(["step", "layer"])["rank"].first().unstack()
    assert ranks.loc[1].tolist() == [16, 4, 16, 4] and ranks.loc[2].tolist() == [1, 4, 16, 4]

    cell = analyze(study).summary.single
    entry = cell.strategies["alternating_test"]
    assert list(cell.strategies) == ["uniform", "alternating_test"]  # the styled ones first, then the others
    assert entry.n_runs == 1 and entry.n_eval == 2 and entry.rank_shift_corr is not None
    assert entry.trainable_params == record.trainable_params
    assert strategy_color("alternating_test").startswith("#")


def test_plan_accepts_registered_strategy_by_name_only(write_study_config):
    with pytest.raises(StudyError, match="registered strategies"):
        load_study(write_study_config(grid={"strategies": ["uniform", "alternating_test"], "seeds": [0]}))


def test_config_resolves_the_tasks_rewards_and_prompt(write_study_config):
    # Resolved into the config, so study.yaml records what the runs used.
    config = load_study(write_study_config()).config
    assert config.rewards == ("format", "correctness") and config.data.task == "gsm8k"
    assert "<think>" in config.data.system_prompt
    with pytest.raises(ConfigError, match=r"^rewards: task 'gsm8k' has no reward 'length'"):
        load_study(write_study_config(rewards=["format", "length"]))
    from workers.tasks import task_names

    registered = ", ".join(task_names())
    assert "gsm8k" in registered and "arith" in registered
    with pytest.raises(ConfigError, match=rf"^data\.task: unknown task 'mmlu'; registered tasks: {registered}$"):
        load_study(write_study_config(data={"task": "mmlu"}))
