"""PEFT LoRA with exact per-layer ranks, and an audit that proves the model got them.

PEFT's ``rank_pattern``/``alpha_pattern`` keys are regexes matched by ``peft.utils.other.get_pattern_key``
(peft 0.21.2) as ``re.match(rf"(.*\\.)?({key})$", name)`` against module names such as
``model.layers.3.self_attn.q_proj``; the first matching key in dict order wins and a module no key matches
silently gets the default rank. So a natural key like ``layers\\.1.*q_proj`` also matches layers 10-19, and
a per-layer allocation is silently wrong. Here every key is a full module path, ``re.escape``-d and anchored
(``^model\\.layers\\.3\\.self_attn\\.q_proj$``): inside PEFT's pattern the ``^`` can only hold at position 0,
so the optional ``(.*\\.)?`` prefix must be empty and the key matches that one name and nothing else. PEFT
matches against names of the *base* model (LoraModel.model.named_modules()), without the
``base_model.model.`` prefix the PeftModel wrapper adds, which is why the layout's paths are used as they are.
``target_modules`` lists the same full paths, so no module outside the decoder layers gets LoRA either
(PEFT condenses a long list into the shortest suffixes that select the same modules of this model, so a saved
adapter_config.json may show ``q_proj`` etc.; the rank_pattern keys stay anchored and reload exactly).

Each module's scale follows ``lora.scaling`` (:mod:`orchestrator.core.lora_scaling`): ``constant`` sets
``alpha_pattern`` to ``alpha * r_m / rank`` so every module's scale is ``alpha / rank``; ``fixed_alpha`` leaves
``lora_alpha`` at ``alpha`` (scale ``alpha / r_m``, PEFT's behaviour with rank_pattern alone); ``rslora`` uses
PEFT's ``use_rslora`` with ``lora_alpha = alpha`` (scale ``alpha / sqrt(r_m)``).

``audit_lora`` then checks the wrapped model itself: every targeted module's ``lora_A`` rank, no LoRA module
elsewhere, every module's scale against the convention, and the trainable-parameter count against
``r * (in + out)`` per module.

The ``lora`` adapter (:class:`LoraAdapter`) is these two steps for a run whose ranks are fixed before training.

Use (the GRPO worker passes the config to TRL, which calls ``get_peft_model``)::

    layout = discover_layers(model, settings.target_modules)
    config = build_lora_config(layout, ranks, settings)
    trainer = GRPOTrainer(model=model, peft_config=config, ...)
    audit = audit_lora(trainer.model, layout, ranks, settings)   # raises StudyError if wrong
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass

from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

from orchestrator.core.config import LoraSettings
from orchestrator.core.errors import StudyError
from orchestrator.core.lora_scaling import module_scale
from workers.adapters.registry import Adapter, register_adapter
from workers.model import LayerLayout

MAX_LISTED_MISMATCHES = 5


def anchored_key(module_path: str) -> str:
    r"""A rank_pattern/alpha_pattern key that PEFT matches to exactly ``module_path``.

    >>> anchored_key("model.layers.3.self_attn.q_proj")
    '^model\\.layers\\.3\\.self_attn\\.q_proj$'
    """
    return f"^{re.escape(module_path)}$"


def _check_ranks(layout: LayerLayout, ranks: Sequence[int]) -> tuple[int, ...]:
    if len(ranks) != layout.num_layers:
        raise StudyError(f"allocation has {len(ranks)} ranks but the model has {layout.num_layers} decoder layers")
    # numbers.Integral admits numpy integers from the allocation code; bool is excluded on purpose.
    bad = [(layer, rank) for layer, rank in enumerate(ranks)
           if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or rank < 1]
    if bad:
        raise StudyError(f"allocation: every rank must be a positive integer, got layer {bad[0][0]} rank {bad[0][1]!r}")
    return tuple(int(rank) for rank in ranks)


def build_lora_config(layout: LayerLayout, ranks: Sequence[int], settings: LoraSettings) -> LoraConfig:
    """A LoraConfig giving layer ``l`` rank ``ranks[l]`` on each of ``settings.target_modules``, scaled by
    ``settings.scaling``."""
    ranks = _check_ranks(layout, ranks)
    unknown = [module for module in settings.target_modules if module not in layout.modules]
    if unknown:
        raise StudyError(f"lora.target_modules: {unknown} were not found by layer discovery (found {list(layout.modules)})")
    if not settings.alpha > 0:
        raise StudyError(f"lora.alpha must be positive, got {settings.alpha}")
    rank_of = {layout.path(layer, module): ranks[layer] for layer in range(layout.num_layers)
               for module in settings.target_modules}
    default_rank = max(ranks)  # never used: every targeted module has its own key
    scaled = {}
    if settings.scaling == "constant":
        per_rank = settings.alpha / settings.rank
        scaled = {"lora_alpha": default_rank * per_rank,
                  "alpha_pattern": {anchored_key(path): rank * per_rank for path, rank in rank_of.items()}}
    elif settings.scaling in ("fixed_alpha", "rslora"):
        scaled = {"lora_alpha": settings.alpha, "use_rslora": settings.scaling == "rslora"}
    else:
        raise StudyError(f"lora.scaling: unknown convention {settings.scaling!r}")
    return LoraConfig(
        r=default_rank,
        lora_dropout=settings.dropout,
        target_modules=list(rank_of),
        rank_pattern={anchored_key(path): rank for path, rank in rank_of.items()},
        bias="none",
        task_type="CAUSAL_LM",
        **scaled,
    )


@dataclass(frozen=True)
class LoraAudit:
    """What LoRA the model actually got: per-layer rank, per-module parameters, total trainable parameters."""

    layer_ranks: tuple[int, ...]
    module_params: dict[tuple[int, str], int]
    trainable_params: int
    scaling: str  # the convention (orchestrator.core.lora_scaling)
    layer_scales: tuple[float, ...]  # each layer's scale (the same for every module of a layer)
    uniform_params: int | None = None  # adapters whose budget is not parameters: what uniform LoRA at lora.rank has

    def layer_params(self) -> list[int]:
        """LoRA parameters per layer, summed over modules."""
        totals = [0] * len(self.layer_ranks)
        for (layer, _), count in self.module_params.items():
            totals[layer] += count
        return totals

    def to_dict(self) -> dict:
        """JSON-ready summary for run.json."""
        return {
            "layer_ranks": list(self.layer_ranks),
            "layer_params": self.layer_params(),
            "trainable_params": self.trainable_params,
            "scaling": self.scaling,
            "layer_scales": list(self.layer_scales),
            **({"uniform_trainable_params": self.uniform_params} if self.uniform_params is not None else {}),
        }


def audit_lora(
    peft_model: PeftModel,
    layout: LayerLayout,
    ranks: Sequence[int],
    settings: LoraSettings,
    *,
    adapter: str = "default",
) -> LoraAudit:
    """Check the wrapped model has exactly the requested LoRA ranks and scales; raise StudyError listing mismatches.

    Checks: each (layer, module) of ``settings.target_modules`` is a LoRA layer whose ``lora_A``/``lora_B`` rank
    equals ``ranks[layer]``; no other module has LoRA; its scale is the convention's
    (:func:`orchestrator.core.lora_scaling.module_scale`); the trainable-parameter count equals the sum of
    ``r * (in + out)``.
    """
    ranks = _check_ranks(layout, ranks)
    target_modules = tuple(settings.target_modules)
    base = peft_model.get_base_model()
    mismatches: list[str] = []
    module_params: dict[tuple[int, str], int] = {}
    expected_paths = set()
    for layer in range(layout.num_layers):
        expected_scale = module_scale(settings.scaling, alpha=settings.alpha, rank=settings.rank,
                                      module_rank=ranks[layer])
        for module in target_modules:
            path = layout.path(layer, module)
            expected_paths.add(path)
            lora_layer = base.get_submodule(path)
            if not isinstance(lora_layer, LoraLayer) or adapter not in lora_layer.lora_A:
                mismatches.append(f"{path}: no LoRA adapter, expected rank {ranks[layer]}")
                continue
            lora_a, lora_b = lora_layer.lora_A[adapter].weight, lora_layer.lora_B[adapter].weight
            actual = lora_a.shape[0]
            if actual != ranks[layer] or lora_b.shape[1] != ranks[layer]:
                mismatches.append(f"{path}: rank {actual}, expected {ranks[layer]}")
            scale = lora_layer.scaling[adapter]
            if not math.isclose(scale, expected_scale, rel_tol=1e-9):
                mismatches.append(f"{path}: scale {scale}, expected {expected_scale} ({settings.scaling})")
            module_params[(layer, module)] = lora_a.numel() + lora_b.numel()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and name not in expected_paths:
            mismatches.append(f"{name}: has LoRA, expected none")
    predicted = sum(
        ranks[layer] * sum(layout.shape(layer, module)) for layer in range(layout.num_layers) for module in target_modules
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if trainable != predicted:
        mismatches.append(f"trainable parameters {trainable}, expected {predicted} (sum of r*(in+out))")
    if mismatches:
        shown = "; ".join(mismatches[:MAX_LISTED_MISMATCHES])
        more = f" (+{len(mismatches) - MAX_LISTED_MISMATCHES} more)" if len(mismatches) > MAX_LISTED_MISMATCHES else ""
        raise StudyError(
            f"LoRA audit failed for {len(mismatches)} modules: {shown}{more}; build the config with "
            "workers.adapters.lora.build_lora_config (anchored full-path rank_pattern keys)"
        )
    layer_scales = tuple(float(base.get_submodule(layout.path(layer, target_modules[0])).scaling[adapter])
                         for layer in range(layout.num_layers))
    return LoraAudit(layer_ranks=ranks, module_params=module_params, trainable_params=trainable,
                     scaling=settings.scaling, layer_scales=layer_scales)


@register_adapter
class LoraAdapter(Adapter):
    """Plain LoRA at ranks fixed before training (every strategy but adalora)."""

    name = "lora"

    def peft_config(self, layout: LayerLayout, ranks: list[int], config) -> LoraConfig:
        return build_lora_config(layout, ranks, config.lora)

    def audit(self, peft_model: PeftModel, layout: LayerLayout, ranks: list[int], config) -> LoraAudit:
        return audit_lora(peft_model, layout, ranks, config.lora)
