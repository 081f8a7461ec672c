"""How a module's LoRA update is scaled at its allocated rank: the convention, chosen by ``lora.scaling``.

A module with rank ``r_m`` adds ``scale * B A x``. The conventions differ in how ``scale`` follows ``r_m``
(``alpha`` and ``rank`` are the config's values at the uniform rank):

- ``constant``: ``alpha / rank`` for every module (PEFT's ``alpha_pattern`` set to ``alpha * r_m / rank``), so
  a larger rank adds capacity without changing the step size;
- ``fixed_alpha``: ``alpha / r_m``, PEFT's behaviour when only ``rank_pattern`` is set (what the paper's
  footnote suggests it used);
- ``rslora``: ``alpha / sqrt(r_m)`` (rank-stabilised LoRA, PEFT's ``use_rslora``).

The convention alone sets the sign of the mechanical rank -> gradient effect: at initialisation the LoRA-B
gradient norm grows like sqrt(r_m) under ``constant`` and falls like 1/sqrt(r_m) under ``fixed_alpha``
(tests/test_lora.py measures it), which is what the rank-shift correlation of the amplification effect reads.

>>> [round(module_scale(s, alpha=64, rank=32, module_rank=16), 3) for s in SCALINGS]
[2.0, 4.0, 16.0]
"""

from __future__ import annotations

import math

SCALINGS = {
    "constant": "alpha / rank for every module, whatever its rank",
    "fixed_alpha": "alpha / r_m (PEFT with rank_pattern alone)",
    "rslora": "alpha / sqrt(r_m) (rank-stabilised LoRA)",
}


def module_scale(scaling: str, *, alpha: float, rank: int, module_rank: int) -> float:
    """The scale of a module of rank ``module_rank`` under ``scaling``."""
    if scaling == "constant":
        return alpha / rank
    if scaling == "fixed_alpha":
        return alpha / module_rank
    if scaling == "rslora":
        return alpha / math.sqrt(module_rank)
    raise ValueError(f"unknown LoRA scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
