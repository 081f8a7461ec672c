"""The projection modules of a decoder layer that get LoRA, and how they group (the one list of names).

The paper targets all seven projections of a Qwen2-style layer (196 adapters on 28 layers). Attention is
q/k/v/o, the MLP gate/up/down; the analysis reports the two groups' shares (the paper's 52.9% / 47.1%).

>>> module_group("up_proj"), module_group("q_proj"), module_group("router")
('mlp', 'attention', None)
"""

from __future__ import annotations

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
PROJECTION_MODULES = ATTENTION_MODULES + MLP_MODULES


def module_group(module: str) -> str | None:
    """``attention``, ``mlp``, or None for a module outside both groups."""
    if module in ATTENTION_MODULES:
        return "attention"
    if module in MLP_MODULES:
        return "mlp"
    return None
