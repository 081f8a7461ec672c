"""``adalora``: PEFT's AdaLoRA, ranks that change while training, at uniform's final total rank budget.

AdaLoRA (Zhang et al., 2023) parameterises each update as ``P diag(E) Q`` and prunes the least important
singular triplets during training, by a sensitivity score from the gradients, down to a total budget. The
paper's "profile then retrain" strategies fix the ranks before training from another run's gradients;
AdaLoRA allocates from its own, continuously (the paper's future work; under RLVR it beat plain LoRA in one
comparison, arXiv 2512.23165). Mapping onto this study's budget (config section ``adalora``):

- final budget: ``target_r = lora.rank``, so the total rank over all (layer, module) pairs at the end is
  ``7 L x rank``, uniform's; every module starts at ``init_r = round(init_rank_factor x rank)`` (PEFT's default
  ratio 12/8 = 1.5), so pruning has something to remove;
- schedule over ``grpo.max_steps``: ``tinit_fraction`` of the steps without pruning, the budget then shrinking
  cubically (PEFT's schedule) with a re-allocation every ``delta_t`` steps, and the last ``tfinal_fraction``
  fine-tuning at the final ranks;
- scale: PEFT scales by ``lora_alpha / init_r`` (not by the current rank), so ``lora_alpha`` is set to
  ``lora.alpha x init_r / rank``: the same scale ``alpha / rank`` a uniform run has (``rslora`` is refused);
- the worker calls ``update_and_allocate`` after every optimizer step (without it AdaLoRA silently stays plain
  LoRA at ``init_r``: peft#3373) and adds AdaLoRA's orthogonality regulariser to GRPO's loss, since PEFT adds
  it only to a loss the model computes itself (workers/adalora.py).

The profile's ``rank`` column is each module's rank at that step (its number of unpruned triplets). Masked
triplets keep their parameters, so the trainable-parameter count is that of rank ``init_r`` throughout. A run
that fails restarts from step 0 rather than resuming (``restart_reason``).

>>> from orchestrator.strategies import AllocationRequest, get_strategy
>>> get_strategy("adalora").ranks(AllocationRequest(num_layers=3, rank=8, r_min=2, r_max=16, multiple=2))
[12, 12, 12]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.errors import ConfigError
from orchestrator.strategies.registry import AllocationRequest, Strategy, register_strategy


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class AdaLoraSettings:
    init_rank_factor: float = _help("Initial rank per module as a multiple of lora.rank (PEFT default 1.5).",
                                    default=1.5)
    tinit_fraction: float = _help("Share of grpo.max_steps trained before any pruning.", default=0.1)
    tfinal_fraction: float = _help("Share of grpo.max_steps trained at the final ranks.", default=0.2)
    delta_t: int = _help("Steps between two re-allocations while the budget shrinks.", default=10)
    orth_reg_weight: float = _help("Weight of AdaLoRA's orthogonality regulariser added to the GRPO loss.",
                                   default=0.5)
    beta1: float = _help("EMA factor of the sensitivity score.", default=0.85)
    beta2: float = _help("EMA factor of the uncertainty score.", default=0.85)

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


@register_strategy
class AdaLora(Strategy):
    name = "adalora"
    description = "PEFT's AdaLoRA: ranks pruned during training to uniform's final total budget"
    order = 60
    color = "#17becf"
    adapter = "adalora"
    # peft 0.21 saves an AdaLoRA checkpoint at its pruned ranks, which transformers cannot load back into the
    # training model (still at init_r), and keeps the sensitivity averages in memory only.
    restart_reason = ("PEFT saves AdaLoRA checkpoints at the pruned ranks, which cannot be loaded back into the "
                      "training model")

    def ranks(self, request: AllocationRequest) -> list[int]:
        """The ranks every module starts from at the default ``init_rank_factor`` (see :meth:`for_config`)."""
        return [AdaLoraSettings().schedule(request.rank, 1)["init_r"]] * request.num_layers

    def for_config(self, config, request: AllocationRequest) -> list[int]:
        # The configured initial rank; the worker reports the current ranks to the profiler every step.
        return [config.adalora.schedule(request.rank, config.grpo.max_steps)["init_r"]] * request.num_layers

    def check(self, config) -> None:
        if config.lora.scaling == "rslora":
            raise ConfigError("lora.scaling: adalora scales by lora_alpha / init_r (PEFT); rslora is not available "
                              "for it: use constant or fixed_alpha")
        s = config.adalora.schedule(config.lora.rank, config.grpo.max_steps)
        if s["tinit"] >= s["total_step"] - s["tfinal"]:
            raise ConfigError(f"adalora: grpo.max_steps ({config.grpo.max_steps}) leaves no pruning phase after "
                              f"tinit {s['tinit']} and before tfinal {s['tfinal']}; use more steps or smaller fractions")

    def callbacks(self, run) -> list:
        from workers.adalora import AdaLoraAllocation

        return [AdaLoraAllocation(run)]
