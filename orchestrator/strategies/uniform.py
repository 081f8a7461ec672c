"""``uniform``: every layer gets ``lora.rank``, the baseline every other strategy is compared with.

>>> from orchestrator.strategies import AllocationRequest, get_strategy
>>> get_strategy("uniform").ranks(AllocationRequest(num_layers=3, rank=32, r_min=4, r_max=64, multiple=4))
[32, 32, 32]
"""

from orchestrator.strategies.registry import REFERENCE, AllocationRequest, Strategy, register_strategy


@register_strategy
class Uniform(Strategy):
    name = REFERENCE
    description = "every layer gets lora.rank (the baseline)"
    order = 10
    color = "#1f77b4"
    in_default_grid = True

    def ranks(self, request: AllocationRequest) -> list[int]:
        return [request.rank] * request.num_layers
