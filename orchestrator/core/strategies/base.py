"""``base``: the base model with no LoRA training, evaluated exactly as every trained run is (Table 1's first row).

Nothing is trained, so nothing here depends on the seed (greedy decoding): one run per cell, ``base-seed0``
(:data:`~orchestrator.core.roles.SEED_FREE`) whatever seeds the grid lists, whose eval rows carry strategy
``base``. The run builds the same trainer and evaluation path as a uniform run (prompts, decoding, token limit,
batch, the colocated vLLM engine when ``grpo.use_vllm``) but skips training, and evaluates before any weight
sync; its adapter keeps LoRA-B at zero, so it adds exactly nothing to the base model's outputs. It writes only
the eval table (:func:`orchestrator.core.contract.run_tables`) and reports 0 trainable parameters. Every trained
strategy is compared with it in the analysis (the paper: reduced-budget allocation "performs below the untrained
base model").

>>> from orchestrator.core.strategies import get_strategy
>>> base = get_strategy("base")
>>> base.trains, base.per_seed
(False, False)
"""

from orchestrator.core.roles import BASE
from orchestrator.core.strategies.registry import AllocationRequest, Strategy, register_strategy


@register_strategy
class Base(Strategy):
    name = BASE
    description = "the base model, not trained: evaluated as every run is"
    trains = False
    per_seed = False

    def ranks(self, request: AllocationRequest) -> list[int]:
        # The evaluation path is a trainer's; its adapter is never trained (LoRA-B stays 0, adding nothing).
        return [request.rank] * request.num_layers
