"""Model families the offline builder (:mod:`workers.local_model`) can make, by name (``model.build.family``).

Each family is a transformers config and model class with the seven projections the study targets
(q/k/v/o attention, gate/up/down MLP); they differ where real checkpoints differ: Qwen2 has biases on q/k/v,
Llama has none, Qwen3 has none but normalises q and k per head (``q_norm``/``k_norm``) and sets ``head_dim``
itself. Torch-free (names only), so the config can validate ``family`` without importing transformers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    config_class: str  # in transformers
    model_class: str


FAMILIES = {
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM"),
    "llama": Family("LlamaConfig", "LlamaForCausalLM"),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM"),
}
