"""``adalora``: PEFT's AdaLoRA, ranks that change while training, at uniform's final total rank budget.

AdaLoRA (Zhang et al., 2023) parameterises each update as ``P diag(E) Q`` and prunes the least important
singular triplets during training, by a sensitivity score from the gradients, down to a total budget. The
paper's "profile then retrain" strategies fix the ranks before training from another run's gradients;
AdaLoRA allocates from its own, continuously (the paper's future work; under RLVR it beat plain LoRA in one
comparison, arXiv 2512.23165). Mapping onto this study's budget (config section ``adalora``,
:class:`~orchestrator.core.config.AdaLoraSettings`):

- final budget: ``target_r = lora.rank``, so the total rank over all (layer, module) pairs at the end is
  ``7 L x rank``, uniform's; every module starts at ``init_r = round(init_rank_factor x rank)`` (PEFT's default
  ratio 12/8 = 1.5), so pruning has something to remove;
- schedule over ``grpo.max_steps``: ``tinit_fraction`` of the steps without pruning, the budget then shrinking
  cubically (PEFT's schedule) with a re-allocation every ``delta_t`` steps, and the last ``tfinal_fraction``
  fine-tuning at the final ranks;
- scale: PEFT scales by ``lora_alpha / init_r`` (not by the current rank), so ``lora_alpha`` is set to
  ``lora.alpha x init_r / rank``: the same scale ``alpha / rank`` a uniform run has (``rslora`` is refused);
- the model side (the re-allocation after every optimizer step, the orthogonality regulariser, why a failed run
  restarts from step 0) is the worker's ``adalora`` adapter (workers/adapters/adalora.py).

The profile's ``rank`` column is each module's rank at that step (its number of unpruned triplets). Masked
triplets keep their parameters, so the trainable-parameter count is that of rank ``init_r`` throughout.

>>> from orchestrator.core.strategies import AllocationRequest, get_strategy
>>> get_strategy("adalora").ranks(AllocationRequest(num_layers=3, rank=8, r_min=2, r_max=16, multiple=2,
...                                                 reduced_fraction=0.7, random_range=(4, 12)))
[12, 12, 12]
"""

from __future__ import annotations

from orchestrator.core.config import AdaLoraSettings
from orchestrator.core.errors import ConfigError
from orchestrator.core.strategies.registry import AllocationRequest, Strategy, register_strategy


@register_strategy
class AdaLora(Strategy):
    name = "adalora"
    description = "PEFT's AdaLoRA: ranks pruned during training to uniform's final total budget"
    adapter = "adalora"

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
