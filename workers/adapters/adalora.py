"""The ``adalora`` adapter: PEFT's AdaLoRA config, its audit, the per-step re-allocation, and the orthogonality
regulariser GRPO's loss would otherwise lack (orchestrator/core/strategies/adalora.py says how it maps onto the
study's budget).

- :func:`build_adalora_config`: AdaLoRA on the same full-path target modules as LoRA (workers/adapters/lora.py), with
  the schedule of ``config.adalora`` and ``lora_alpha`` chosen so the scale equals a uniform run's.
- :func:`audit_adalora`: every targeted module is an AdaLoRA layer at ``init_r``, nothing else has one, and the
  trainable-parameter count is ``init_r x (in + out + 1)`` per module.
- :class:`AdaLoraAllocation`: calls ``update_and_allocate`` after every optimizer step, while the gradients are
  still there (transformers 5: ``optimizer.step`` -> ``on_optimizer_step`` -> ``zero_grad``; PEFT wants it after
  backward and before ``zero_grad``), then reports each module's current rank to the profiler. Without the
  call AdaLoRA never prunes and trains as plain LoRA at ``init_r`` (peft#3373).
- :func:`orthogonality_loss`: PEFT's regulariser ``mean over P, Q of ||P P^T - I||_F`` (``AdaLoraModel.forward``
  adds it only to a loss the model returns, and TRL's GRPO computes its loss from logits), added to the GRPO
  loss as a loss term of the trainer (workers/compat.py ``DecomposedGRPO.loss_terms``).
"""

from __future__ import annotations

import torch
from peft import AdaLoraConfig
from peft.tuners.adalora import AdaLoraLayer
from transformers import TrainerCallback

from orchestrator.core.config import StudyConfig
from orchestrator.core.errors import StudyError
from workers.adapters.lora import LoraAudit
from workers.adapters.registry import Adapter, register_adapter
from workers.model import LayerLayout

ADAPTER = "default"


def build_adalora_config(layout: LayerLayout, config: StudyConfig) -> AdaLoraConfig:
    lora, schedule = config.lora, config.adalora.schedule(config.lora.rank, config.grpo.max_steps)
    a = config.adalora
    return AdaLoraConfig(
        **schedule,
        # PEFT scales by lora_alpha / init_r; a uniform run's scale is alpha / rank.
        lora_alpha=lora.alpha * schedule["init_r"] / lora.rank,
        lora_dropout=lora.dropout,
        target_modules=[layout.path(layer, m) for layer in range(layout.num_layers) for m in lora.target_modules],
        beta1=a.beta1, beta2=a.beta2, orth_reg_weight=a.orth_reg_weight,
        bias="none", task_type="CAUSAL_LM",
    )


def _layers(peft_model, layout: LayerLayout) -> dict[tuple[int, str], AdaLoraLayer]:
    base = peft_model.get_base_model()
    return {(layer, module): base.get_submodule(layout.path(layer, module))
            for layer in range(layout.num_layers) for module in layout.modules}


def audit_adalora(peft_model, layout: LayerLayout, init_r: int, config: StudyConfig) -> LoraAudit:
    """Check the wrapped model got AdaLoRA at ``init_r`` on exactly the targeted modules; StudyError otherwise."""
    problems, module_params = [], {}
    for (layer, module), lora in _layers(peft_model, layout).items():
        if not isinstance(lora, AdaLoraLayer) or ADAPTER not in lora.lora_A:
            problems.append(f"{layout.path(layer, module)}: no AdaLoRA adapter")
            continue
        if lora.lora_A[ADAPTER].shape[0] != init_r:
            problems.append(f"{layout.path(layer, module)}: rank {lora.lora_A[ADAPTER].shape[0]}, expected {init_r}")
        module_params[(layer, module)] = sum(lora.__getattr__(part)[ADAPTER].numel()
                                             for part in ("lora_A", "lora_B", "lora_E"))
    expected = {layout.path(layer, m) for layer in range(layout.num_layers) for m in layout.modules}
    base = peft_model.get_base_model()
    problems += [f"{name}: has AdaLoRA, expected none" for name, m in base.named_modules()
                 if isinstance(m, AdaLoraLayer) and name not in expected]
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if trainable != sum(module_params.values()):
        problems.append(f"trainable parameters {trainable}, expected {sum(module_params.values())}")
    if problems:
        raise StudyError(f"AdaLoRA audit failed for {len(problems)} modules: {'; '.join(problems[:5])}")
    scale = config.lora.alpha / config.lora.rank
    # Each module has init_r x (in + out) entries in P and Q plus init_r in E; a uniform LoRA at lora.rank has
    # rank x (in + out). Pruning zeroes singular values but keeps every triplet trainable, so AdaLoRA trains more
    # parameters than the uniform run whose rank budget it ends at: run.json says how many more.
    uniform = sum(config.lora.rank * (count // init_r - 1) for count in module_params.values())
    # PEFT divides lora_alpha by init_r (ranknum), not by a module's pruned rank, so the scale is alpha / rank for
    # every module whatever its rank: the `constant` convention, whatever lora.scaling says for LoRA arms.
    return LoraAudit(layer_ranks=(init_r,) * layout.num_layers, module_params=module_params,
                     trainable_params=trainable, scaling="constant",
                     layer_scales=(scale,) * layout.num_layers, uniform_params=uniform)


def module_ranks(peft_model, layout: LayerLayout) -> dict[tuple[int, str], int]:
    """Each module's current rank: the singular triplets of AdaLoRA's last allocation (``rank_pattern``), all of
    ``init_r`` before the first.

    Not the non-zero ``lora_E`` entries: PEFT masks only every ``deltaT`` steps while the budget shrinks, and
    AdamW revives masked entries at the next step, so counting them would show the pruned ranks on one step in
    ``deltaT`` and ``init_r`` on the others.
    """
    pattern = peft_model.base_model.peft_config[ADAPTER].rank_pattern or {}
    ranks = {}
    for key, lora in _layers(peft_model, layout).items():
        path = layout.path(*key)
        mask = pattern.get(f"{path}.lora_E.{ADAPTER}", pattern.get(f"{path}.lora_E"))
        ranks[key] = int(sum(bool(v) for v in mask)) if mask is not None else int(lora.lora_E[ADAPTER].shape[0])
    return ranks


def orthogonality_loss(peft_model, weight: float) -> torch.Tensor:
    """``weight x`` PEFT's AdaLoRA regulariser: the mean over all P (lora_A) and Q (lora_B) of ||P P^T - I||_F."""
    terms = []
    for name, p in peft_model.named_parameters():
        if (".lora_A." in name or ".lora_B." in name) and ADAPTER in name and p.requires_grad:
            cov = p @ p.T if ".lora_A." in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)))
    return weight * torch.stack(terms).mean() if terms else torch.zeros(())


class AdaLoraAllocation(TrainerCallback):
    """Re-allocates AdaLoRA's ranks after every optimizer step and tells the profiler the new ranks."""

    def __init__(self, run):
        self.run = run
        self.calls = 0
        weight = run.config.adalora.orth_reg_weight
        if weight > 0:
            run.trainer.loss_terms = {**(run.trainer.loss_terms or {}),
                                      "orthogonality": lambda model: orthogonality_loss(model, weight)}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        peft_model = self.run.trainer.model
        peft_model.base_model.update_and_allocate(state.global_step + 1)
        self.calls += 1
        self.run.profiler.set_ranks(module_ranks(peft_model, self.run.layout))

    def on_train_end(self, args, state, control, **kwargs):
        """run.json's lora: how large the regulariser's gradient was against the policy gradient (global L2 norms,
        per step; the profile's total rows leave it out), to judge orth_reg_weight under GRPO."""
        by_step = self.run.profiler.excluded_ratio.get("orthogonality", {})
        if by_step and self.run.record.lora is not None:
            values = [by_step[step] for step in sorted(by_step)]
            finite = sorted(v for v in values if v == v)
            # The median, not the mean: a step whose groups all have equal rewards has almost no policy gradient,
            # and its ratio (1e4 and more on the laptop model) would dominate a mean.
            self.run.record.lora["orthogonality_to_policy_grad"] = {
                "weight": self.run.config.adalora.orth_reg_weight, "first": values[0], "last": values[-1],
                "median": finite[len(finite) // 2] if finite else None, "steps": len(values)}


@register_adapter
class AdaLoraAdapter(Adapter):
    """PEFT's AdaLoRA: every module starts at ``init_r`` and is pruned while training."""

    name = "adalora"
    ranks_change = True
    # peft 0.21 saves an AdaLoRA checkpoint at its pruned ranks, which transformers cannot load back into the
    # training model (still at init_r), and keeps the sensitivity averages in memory only.
    restart_reason = ("PEFT saves AdaLoRA checkpoints at the pruned ranks, which cannot be loaded back into the "
                      "training model")

    def peft_config(self, layout: LayerLayout, ranks: list[int], config: StudyConfig) -> AdaLoraConfig:
        return build_adalora_config(layout, config)

    def audit(self, peft_model, layout: LayerLayout, ranks: list[int], config: StudyConfig) -> LoraAudit:
        return audit_adalora(peft_model, layout, ranks[0], config)

    def callbacks(self, run) -> list:
        return [AdaLoraAllocation(run)]
