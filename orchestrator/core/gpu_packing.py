"""Several runs per GPU: each run's share of the card, vLLM's part of it, and a memory plan the packing must fit.

``resources.gpus_per_run`` may be a fraction (0.5, 0.25, ...): Ray then packs ``floor(1 / gpus_per_run)`` runs
on one GPU. Ray's GPU fractions are logical (it enforces no memory), and vLLM's ``gpu_memory_utilization`` is
each engine's own share of the *whole card*, so a run's engine gets

    vllm share = gpus_per_run x (1 - resources.training_share)

of the card unless ``grpo.vllm_gpu_memory_utilization`` sets it (a full GPU with the default training share
0.7 gives TRL's 0.3). The rest of the run's share is for training. :func:`memory_plan` estimates what training
needs, per run, in GiB, from the model's shape (a local build, a local directory's config.json, the HF cache,
or :data:`KNOWN_SHAPES`; the driver also looks in the HF cache):

- weights: parameters x bytes of ``model.dtype`` (the training copy; the engine holds its own in its share);
- LoRA: uniform's LoRA parameters x 16 bytes (the weight and its gradient in bf16/fp32 and AdamW's two fp32
  moments);
- activations: with gradient checkpointing each layer keeps its input, ``layers x B x T x hidden x 2`` bytes,
  plus the completion logits in bf16 and their fp32 log-softmax, ``B x T_completion x vocab x 6`` bytes, where
  B = prompts_per_step x num_generations and T = :data:`PROMPT_TOKENS` + max_completion_length.

An estimate, not a measurement (the GPU check measures the peak). The plan refuses a packing whose runs do not
fit the card: ``runs_per_gpu x (training + vLLM) > card`` with the card from ``resources.gpu_memory_gib`` or
the first CUDA device of the planning machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.core.errors import ConfigError
from orchestrator.core.projections import PROJECTION_MODULES

GIB = 2**30
PROMPT_TOKENS = 256  # assumed prompt length for the activation estimate (GSM8K prompts with the system prompt)
LORA_BYTES_PER_PARAM = 16
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Shapes of hub models the plan knows without the hub (the paper's); others come from the HF cache if there.
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-1.5B-Instruct": dict(num_hidden_layers=28, hidden_size=1536, intermediate_size=8960,
                                       num_attention_heads=12, num_key_value_heads=2, vocab_size=151_936,
                                       tie_word_embeddings=True),
}


@dataclass(frozen=True)
class MemoryPlan:
    runs_per_gpu: int
    card_gib: float | None
    card_source: str  # "config", "detected" or "unknown"
    vllm_share: float | None  # of the card, per engine (None without vLLM)
    vllm_gib: float | None
    weights_gib: float | None
    lora_gib: float | None
    activations_gib: float | None
    training_gib: float | None
    per_run_gib: float | None  # training + vLLM
    fits: bool | None  # None when the card or the model's shape is unknown

    def to_json(self) -> dict:
        return asdict(self)


def runs_per_gpu(gpus_per_run: float) -> int:
    """How many runs Ray packs on one GPU.

    >>> runs_per_gpu(1.0), runs_per_gpu(0.5), runs_per_gpu(0.3), runs_per_gpu(2.0)
    (1, 2, 3, 1)
    """
    return max(1, math.floor(1 / gpus_per_run + 1e-9)) if gpus_per_run > 0 else 0


def vllm_share(config) -> float:
    """vLLM's ``gpu_memory_utilization`` for one run: the explicit setting, else its share of the card for vLLM."""
    explicit = config.grpo.vllm_gpu_memory_utilization
    if explicit is not None:
        return explicit
    share = min(config.resources.gpus_per_run, 1.0) if config.resources.gpus_per_run > 0 else 1.0
    return round(share * (1 - config.resources.training_share), 6)


def vllm_share_record(config) -> dict:
    """run.json's ``memory_plan``: vLLM's share of the card and how it was decided."""
    explicit = config.grpo.vllm_gpu_memory_utilization is not None
    return {"vllm_gpu_memory_utilization": vllm_share(config),
            "source": ("grpo.vllm_gpu_memory_utilization" if explicit
                       else "resources.gpus_per_run x (1 - resources.training_share)"),
            "gpus_per_run": config.resources.gpus_per_run, "training_share": config.resources.training_share}


def model_shape(model) -> dict | None:
    """The model's shape from its build, a local directory's config.json or :data:`KNOWN_SHAPES`; None if unknown.

    The driver's planning also looks in the HF cache (``orchestrator/resolve.py``); this core step reads no hub.
    """
    if model.build is not None:
        b = model.build
        return dict(num_hidden_layers=b.num_layers, hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
                    num_attention_heads=b.num_heads, num_key_value_heads=b.num_kv_heads, vocab_size=b.vocab_size,
                    tie_word_embeddings=True)
    path = Path(model.name_or_path).expanduser() / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    return KNOWN_SHAPES.get(model.name_or_path)


def parameter_counts(shape: dict, rank: int, target_modules=PROJECTION_MODULES) -> tuple[int, int]:
    """(model parameters, uniform LoRA parameters at ``rank``) of a Qwen2/Llama-style decoder of ``shape``.

    >>> total, lora = parameter_counts(KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"], rank=32)
    >>> round(total / 1e9, 2), round(lora / 1e6, 1)
    (1.54, 36.9)
    """
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h // shape["num_attention_heads"] * shape.get("num_key_value_heads", shape["num_attention_heads"])
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
            "up_proj": (h, i), "down_proj": (i, h)}
    per_layer = sum(a * b for a, b in dims.values()) + h + 2 * kv + 2 * h  # q/k/v biases, two norms
    embeddings = shape["vocab_size"] * h * (1 if shape.get("tie_word_embeddings", True) else 2)
    lora = layers * sum(rank * sum(dims[m]) for m in target_modules if m in dims)
    return layers * per_layer + embeddings + h, lora


def memory_plan(config, card_gib: float | None = None, shape: dict | None = None) -> MemoryPlan:
    """The memory plan of one run of ``config`` and of the runs sharing its GPU (see the module docstring);
    ``shape``: the model's (:func:`model_shape`), None when unknown."""
    res, g = config.resources, config.grpo
    source = "config" if res.gpu_memory_gib is not None else ("detected" if card_gib is not None else "unknown")
    card = res.gpu_memory_gib if res.gpu_memory_gib is not None else card_gib
    share = vllm_share(config) if g.use_vllm else None
    vllm_gib = share * card if share is not None and card is not None else (0.0 if share is None else None)
    weights = lora = acts = training = per_run = None
    if shape is not None:
        total, lora_params = parameter_counts(shape, config.lora.rank, config.lora.target_modules)
        weights = total * DTYPE_BYTES[config.model.dtype] / GIB
        lora = lora_params * LORA_BYTES_PER_PARAM / GIB
        batch, completion = g.prompts_per_step * g.num_generations, g.max_completion_length
        acts = (shape["num_hidden_layers"] * batch * (PROMPT_TOKENS + completion) * shape["hidden_size"] * 2
                + batch * completion * shape["vocab_size"] * 6) / GIB
        training = weights + lora + acts
        per_run = training + vllm_gib if vllm_gib is not None else None
    n = runs_per_gpu(res.gpus_per_run)
    fits = None if per_run is None or card is None else n * per_run <= card
    r = lambda x: None if x is None else round(x, 2)  # noqa: E731
    return MemoryPlan(n, r(card), source, share, r(vllm_gib), r(weights), r(lora), r(acts), r(training), r(per_run),
                      fits)


def check_packing(config, card_gib: float | None = None, shape: dict | None = None) -> MemoryPlan:
    """The plan, or a one-line :class:`ConfigError` when the runs packed on one GPU cannot fit the card."""
    plan = memory_plan(config, card_gib, shape)
    if plan.fits is False:
        raise ConfigError(
            f"resources.gpus_per_run: {plan.runs_per_gpu} runs per GPU need {plan.runs_per_gpu} x {plan.per_run_gib} "
            f"GiB (training {plan.training_gib} + vLLM {plan.vllm_gib}) but the card has {plan.card_gib} GiB "
            f"({plan.card_source}); give each run a larger share, or lower grpo.prompts_per_step / "
            "max_completion_length")
    if plan.vllm_share is not None and plan.vllm_share * plan.runs_per_gpu > 1:
        raise ConfigError(f"grpo.vllm_gpu_memory_utilization: {plan.runs_per_gpu} engines x {plan.vllm_share} of the "
                          "card exceed the whole card; leave it unset to derive it from resources.gpus_per_run")
    return plan


def describe(plan: MemoryPlan) -> str:
    """One line for ``rankstudy plan``."""
    def gib(x):
        return "?" if x is None else f"{x:g} GiB"

    card = f"card {gib(plan.card_gib)} ({plan.card_source})" if plan.card_gib else \
        "card memory unknown (set resources.gpu_memory_gib to check the packing)"
    vllm = (f"vLLM {plan.vllm_share:g} of the card = {gib(plan.vllm_gib)}" if plan.vllm_share is not None
            else "no vLLM")
    fit = {True: "fits", False: "DOES NOT FIT", None: "not checked"}[plan.fits]
    return (f"memory: {plan.runs_per_gpu} run(s) per GPU, {card}; per run: weights {gib(plan.weights_gib)}, LoRA + "
            f"AdamW {gib(plan.lora_gib)}, activations {gib(plan.activations_gib)} (estimates), {vllm}; "
            f"total {gib(plan.per_run_gib)} per run: {fit}")
