"""The study config: frozen dataclasses with help text, loaded strictly from YAML, checked statically.

``load_config(path, overrides)`` parses the YAML, applies ``--set`` overrides and converts with
:mod:`orchestrator.core.typed_yaml` (unknown keys and wrong types are errors). Each section's ``__post_init__``
checks its values alone and against each other, with messages that name the key and say what is allowed; it
reads no file and asks no registry, so building or ``dataclasses.replace``-ing a config is cheap and has no
side effects. Everything else (the task's defaults, data files, model directories, strategy feasibility, profile
sources, cell expansion) is the driver's one resolve step (``orchestrator/resolve.py``).

TRL's GRPO defaults differ from the paper (loss ``dapo`` not ``grpo``, beta 0.0 not 0.05, lr 1e-6 not 1e-5),
so every GRPO setting the paper fixes is a field here with the paper's value as default, and the worker
passes each one through explicitly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from orchestrator.core.contract import IMPORTANCE_MEASURES
from orchestrator.core.errors import ConfigError
from orchestrator.core.lora_scaling import SCALINGS
from orchestrator.core.measurements import ProfileSettings
from orchestrator.core.model_config import LocalModelBuild, ModelConfig, WarmStartConfig
from orchestrator.core.projections import PROJECTION_MODULES
from orchestrator.core.roles import BASE, REFERENCE
from orchestrator.core.tracking import TrackingSettings
from orchestrator.core.typed_yaml import apply_override, documented, from_dict

__all__ = ["LocalModelBuild", "ModelConfig", "WarmStartConfig"]  # the base-model sections live in model_config

# The paper's Table 1: the grid when a config lists no strategies.
PAPER_STRATEGIES = (BASE, REFERENCE, "proportional", "random", "reduced")


@dataclass(frozen=True)
class DataConfig:
    task: str = documented("The task (workers/tasks/): loading or generating, gold answers, prompt, rewards, SFT.",
                           default="gsm8k")
    train: str | None = documented("Training data: hub id (openai/gsm8k) or a local .jsonl with question/answer "
                                   "(null for a task that generates its data).", default=None)
    test: str | None = documented("Test data: hub id (openai/gsm8k) or a local .jsonl with question/answer "
                                  "(null for a task that generates its data).", default=None)
    options: dict[str, Any] = documented("The task's own settings (e.g. arith: sizes and difficulty); checked by "
                                         "the task, every default filled in.", default_factory=dict)
    hub_config: str = documented("Dataset config name used with a hub id.", default="main")
    train_limit: int | None = documented("Use only the first N training questions (null = all).", default=None)
    eval_limit: int | None = documented("Evaluate on the first N test items (null = all).", default=None)
    system_prompt: str | None = documented(
        "System prompt asking for the <think>/<answer> format (null = the task's own).", default=None
    )

    def __post_init__(self):
        for key in ("train_limit", "eval_limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}: must be a positive integer or null, got {value}")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = documented("Uniform LoRA rank per module; the budget is num_layers x rank.", default=32)
    alpha: float = documented("LoRA alpha at the uniform rank.", default=64.0)
    scaling: str = documented(
        "How a module's scale follows its allocated rank r_m: constant (alpha/rank everywhere), fixed_alpha "
        "(alpha/r_m, PEFT with rank_pattern alone) or rslora (alpha/sqrt(r_m)); see "
        "orchestrator/core/lora_scaling.py.",
        default="constant",
    )
    dropout: float = documented("LoRA dropout.", default=0.05)
    target_modules: tuple[str, ...] = documented(
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
    r_min: int = documented("Smallest per-layer rank a non-uniform strategy may give.", default=4)
    r_max: int = documented("Largest per-layer rank a non-uniform strategy may give.", default=64)
    multiple: int = documented("Every allocated rank is a multiple of this.", default=4)
    reduced_fraction: float = documented("Budget of the `reduced` strategy as a fraction of uniform.", default=0.7)
    random_range: tuple[int, int] = documented("[low, high] ranks of the `random` control.", default=(16, 48))
    profile_from: str = documented(
        "Where profile-dependent runs (proportional, reduced) get layer importance: a strategy of the grid "
        "(its run of the same seed and cell; default `uniform`) or a path to a profile .parquet.",
        default=REFERENCE,
    )
    importance: str = documented(
        "Which gradient S(l) (Eq. 2) sums for allocation and re-profiling rounds: `lora_grad`, the LoRA "
        "adapter's (the paper's; depends on each module's rank and scaling), or `weight_grad`, the frozen "
        "weight's ||dL/dW||_F (rank-invariant; the source run must measure it: profile.weight_gradient_every).",
        default="lora_grad",
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
        if self.importance not in IMPORTANCE_MEASURES:
            raise ConfigError(f"importance: must be one of {', '.join(IMPORTANCE_MEASURES)}, got {self.importance!r}")
        if not self.profile_from.strip():
            raise ConfigError("profile_from: must name a strategy of the grid (e.g. `uniform`) or a profile .parquet")


@dataclass(frozen=True)
class GRPOSettings:
    num_generations: int = documented("Completions per prompt (K); advantages are normalised in each group.",
                                      default=4)
    beta: float = documented("KL coefficient (TRL's default is 0.0; the paper uses 0.05).", default=0.05)
    learning_rate: float = documented("AdamW learning rate (TRL's default is 1e-6).", default=1.0e-5)
    max_steps: int = documented("Optimizer steps per run.", default=1000)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = documented(
        "TRL loss type; `grpo` is the paper's (TRL defaults to `dapo`).", default="grpo"
    )
    max_completion_length: int = documented("Max new tokens per completion (training and evaluation).", default=512)
    prompts_per_step: int = documented("Distinct prompts per optimizer step (batch = this x num_generations).",
                                       default=2)
    temperature: float = documented("Sampling temperature for rollouts.", default=1.0)
    max_grad_norm: float = documented("Gradient clipping (profiles record norms before clipping).", default=1.0)
    use_vllm: bool = documented("Generate rollouts with vLLM colocated on the run's GPU; HF generate otherwise.",
                                default=True)
    vllm_mode: Literal["colocate"] = documented("vLLM placement; only `colocate` (same GPU as training).",
                                                default="colocate")
    vllm_gpu_memory_utilization: float | None = documented(
        "Fraction of the whole card vLLM's engine may take (colocate); null = derived from resources.gpus_per_run "
        "and resources.training_share (orchestrator/core/gpu_packing.py; 0.3 for a whole GPU).", default=None)
    # Settings TRL applies silently unless set; each is passed to GRPOConfig explicitly (TRL 1.16's default here).
    vllm_importance_sampling_correction: bool = documented(
        "On the vLLM path, correct for vLLM/trainer logprob differences (TRL default true: a sequence whose "
        "importance ratio leaves TRL's bounds gets no policy gradient, mode sequence_mask).", default=True)
    disable_dropout: bool = documented(
        "Turn dropout off in the policy (TRL default false: with lora.dropout > 0 the old-logprob pass sees "
        "dropout noise).", default=False)
    top_p: float = documented("Nucleus sampling for rollouts (TRL default 1.0 = off).", default=1.0)
    top_k: int = documented("Top-k sampling for rollouts (TRL default 0 = off).", default=0)
    mask_truncated_completions: bool = documented(
        "Leave completions cut at max_completion_length out of the loss (TRL default false).", default=False)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = documented(
        "Learning-rate schedule (TRL default linear decay to 0 over max_steps).", default="linear")
    warmup_ratio: float = documented("Fraction of max_steps spent in linear warmup (TRL default 0).", default=0.0)
    checkpoint_every: int = documented("Save a resumable checkpoint every N steps.", default=100)
    eval_batch_size: int = documented("Test questions generated per batch in evaluation.", default=64)

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
class AdaLoraSettings:
    """The ``adalora`` strategy's schedule (orchestrator/core/strategies/adalora.py says how it maps to PEFT)."""

    init_rank_factor: float = documented("Initial rank per module as a multiple of lora.rank (PEFT default 1.5).",
                                         default=1.5)
    tinit_fraction: float = documented("Share of grpo.max_steps trained before any pruning.", default=0.1)
    tfinal_fraction: float = documented("Share of grpo.max_steps trained at the final ranks.", default=0.2)
    delta_t: int = documented("Steps between two re-allocations while the budget shrinks.", default=10)
    orth_reg_weight: float = documented(
        "Weight of AdaLoRA's orthogonality regulariser added to the GRPO loss. 0.01, not PEFT's supervised default "
        "0.5: on the laptop model under GRPO the regulariser's gradient was 23-33x the policy gradient at the first "
        "step at 0.5, 0.46-0.66x (median over 48 steps 0.31x) at 0.01, with the same accuracy (README; run.json "
        "lora.orthogonality_to_policy_grad measures it for any run).", default=0.01)
    beta1: float = documented("EMA factor of the sensitivity score.", default=0.85)
    beta2: float = documented("EMA factor of the uncertainty score.", default=0.85)

    def __post_init__(self):
        if self.init_rank_factor < 1:
            raise ConfigError(f"init_rank_factor: must be >= 1 (AdaLoRA prunes down to lora.rank), got "
                              f"{self.init_rank_factor}")
        for key in ("tinit_fraction", "tfinal_fraction"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.tinit_fraction + self.tfinal_fraction >= 1:
            raise ConfigError("tinit_fraction: tinit_fraction + tfinal_fraction must be < 1, leaving steps to prune")
        if self.delta_t < 1 or self.orth_reg_weight < 0 or not (0 < self.beta1 < 1 and 0 < self.beta2 < 1):
            raise ConfigError("delta_t must be >= 1, orth_reg_weight >= 0, beta1 and beta2 in (0, 1)")

    def schedule(self, rank: int, max_steps: int) -> dict[str, int]:
        """PEFT's AdaLoraConfig numbers for a run of ``max_steps`` at uniform rank ``rank``.

        >>> AdaLoraSettings().schedule(rank=8, max_steps=100)
        {'init_r': 12, 'target_r': 8, 'tinit': 10, 'tfinal': 20, 'deltaT': 10, 'total_step': 100}
        """
        return {"init_r": max(rank, round(self.init_rank_factor * rank)), "target_r": rank,
                "tinit": round(self.tinit_fraction * max_steps), "tfinal": round(self.tfinal_fraction * max_steps),
                "deltaT": self.delta_t, "total_step": max_steps}


@dataclass(frozen=True)
class GridConfig:
    strategies: tuple[str, ...] = documented(
        "Rank-allocation strategies to run (registered in orchestrator/core/strategies/; default: the paper's "
        "Table 1, base, uniform, proportional, random, reduced).",
        default=PAPER_STRATEGIES,
    )
    seeds: tuple[int, ...] = documented("Seeds; every strategy runs once per seed.", default=(0, 1, 2))
    axes: dict[str, tuple[Any, ...]] = documented(
        "Study axes: dotted config keys -> value lists, e.g. {lora.rank: [8, 32]}; the grid is strategies x "
        "seeds x every combination (cell) of the values.",
        default_factory=dict,
    )

    def __post_init__(self):
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies: must be a non-empty list without repeats, got {list(self.strategies)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds: must be a non-empty list of distinct non-negative integers, got {list(self.seeds)}")


@dataclass(frozen=True)
class ResourcesConfig:
    gpus_per_run: float = documented("GPUs per run actor (0 on CPU-only machines; a fraction such as 0.25 packs "
                                     "floor(1 / it) runs on one GPU, orchestrator/core/gpu_packing.py).", default=1.0)
    cpus_per_run: float = documented("CPUs per run actor.", default=8.0)
    max_retries: int = documented("Restarts of a run whose own process crashed (died or raised); each resumes from its "
                                  "latest checkpoint.", default=2)
    max_interruptions: int = documented(
        "Restarts of a run interrupted by the cluster: its node was lost, or its process was told to stop (SIGTERM; "
        "it checkpoints at the next step first). Kept apart from max_retries, as Ray Train's "
        "max_preemption_failures, so that preemptions do not use up the budget for crashes.", default=10)
    custom: dict[str, float] = documented("Extra Ray custom resources each run needs.", default_factory=dict)
    gpu_memory_gib: float | None = documented("Memory of one GPU, to check a packing of several runs per GPU (null "
                                              "= the planning machine's first CUDA device, if any).", default=None)
    training_share: float = documented("Part of a run's share of the GPU kept for training; vLLM gets the rest.",
                                       default=0.7)
    preparation_cpus: float | None = documented(
        "CPUs (and threads) of the base-model build and warm start, which run before any GRPO run (null = the "
        "node's idle CPUs, shared among the preparations). The thread count changes the order of a warm start's "
        "floating-point sums, and so the prepared model, as another machine would; a cached model is reused "
        "whatever threads made it (its warm_start.json records them).", default=None)

    def __post_init__(self):
        if self.gpus_per_run < 0 or self.cpus_per_run <= 0:
            raise ConfigError(
                f"gpus_per_run/cpus_per_run: must be >= 0 and > 0, got {self.gpus_per_run}/{self.cpus_per_run}"
            )
        if self.max_retries < 0 or self.max_interruptions < 0:
            raise ConfigError(f"max_retries/max_interruptions: must be >= 0, got {self.max_retries}/"
                              f"{self.max_interruptions}")
        if not 0 < self.training_share < 1:
            raise ConfigError(f"training_share: must be in (0, 1), got {self.training_share}")
        if self.gpu_memory_gib is not None and self.gpu_memory_gib <= 0:
            raise ConfigError(f"gpu_memory_gib: must be positive, got {self.gpu_memory_gib}")
        if self.preparation_cpus is not None and self.preparation_cpus < 1:
            raise ConfigError(f"preparation_cpus: must be >= 1 or null, got {self.preparation_cpus}")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise ConfigError(f"gpus_per_run: a run on more than one GPU takes whole GPUs, got {self.gpus_per_run}")


@dataclass(frozen=True)
class StudyConfig:
    name: str = documented("Study name; names the output directory by default.")
    model: ModelConfig = documented("The base model.")
    data: DataConfig = documented("Training and test data.")
    lora: LoraSettings = documented("LoRA settings at the uniform rank.", default_factory=LoraSettings)
    allocation: AllocationConfig = documented("Rank-allocation bounds.", default_factory=AllocationConfig)
    grpo: GRPOSettings = documented("GRPO training settings.", default_factory=GRPOSettings)
    adalora: AdaLoraSettings = documented("The adalora strategy's schedule (orchestrator/core/strategies/adalora.py).",
                                          default_factory=AdaLoraSettings)
    rewards: tuple[str, ...] | None = documented("Reward functions of the task, summed (null = all of the task's).",
                                                 default=None)
    profile: ProfileSettings = documented("Optional measurements: per-reward gradient decomposition, update "
                                          "geometry.", default_factory=ProfileSettings)
    grid: GridConfig = documented("The strategy x seed grid.", default_factory=GridConfig)
    resources: ResourcesConfig = documented("Ray resources per run.", default_factory=ResourcesConfig)
    tracking: TrackingSettings = documented("Experiment tracker the runs report to (orchestrator/core/tracking.py).",
                                            default_factory=TrackingSettings)
    warm_start: WarmStartConfig | None = documented(
        "SFT warm start before the grid (null = none); profiled as strategy `sft`.", default=None
    )
    cache_dir: str = documented(
        "Built models and warm starts, reused across studies by content hash: a path (shared by the nodes of a "
        "cluster) or a pyarrow.fs URI (s3://bucket/cache?..., gs://...).",
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
        if self.rewards is not None and (not self.rewards or len(set(self.rewards)) != len(self.rewards)):
            raise ConfigError(f"rewards: must be a non-empty list without repeats, got {list(self.rewards)}")
        if a.importance == "weight_grad" and not self.profile.weight_gradient_every \
                and not a.profile_from.endswith(".parquet"):
            raise ConfigError("allocation.importance: weight_grad needs the source run to measure the weight "
                              "gradient: set profile.weight_gradient_every (e.g. 1), or use importance lora_grad")


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a study YAML, apply ``--set KEY=VALUE`` overrides, and return the statically checked config."""
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
    return from_dict(StudyConfig, data)
