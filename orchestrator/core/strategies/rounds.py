"""``proportional_r2``, ``proportional_r3``: re-profiling rounds, each allocating from the previous round's profile.

The paper shows its feedback loop once (more rank -> more gradient -> more rank: proportional's own profile is
steeper than the uniform one it was allocated from). Rounds repeat it: round 0 is the run named by
``allocation.profile_from`` (uniform), round 1 is ``proportional`` (Eq. 3 from round 0's S(l)), and round k
is ``proportional_r<k>``: Eq. 3, same budget, from the S(l) of round k-1's run of the same seed and cell. Each
round is a strategy of the grid, so the plan chains them (round k waits for round k-1) and the report shows,
per round, the profile's max/min S(l) ratio and the allocation. A round whose predecessor is not in the grid is
an error at plan time (``grid.strategies``).

>>> from orchestrator.core.strategies import get_strategy
>>> [get_strategy(f"proportional_r{k}").allocation_round for k in (2, 3)]
[2, 3]
>>> get_strategy("proportional_r3").previous_round
'proportional_r2'
"""

from orchestrator.core.strategies.proportional import Proportional
from orchestrator.core.strategies.registry import register_strategy

MAX_ROUND = 3


def round_name(k: int) -> str:
    """The strategy of re-profiling round ``k`` (round 1 is ``proportional`` itself)."""
    return Proportional.name if k == 1 else f"{Proportional.name}_r{k}"


class ProportionalRound(Proportional):
    """Proportional's ranks from the previous round's profile instead of ``allocation.profile_from``."""

    previous_round: str

    def profile_source(self, config) -> str:
        return self.previous_round


for _k in range(2, MAX_ROUND + 1):
    register_strategy(type(f"ProportionalRound{_k}", (ProportionalRound,), {
        "name": round_name(_k),
        "description": f"re-profiling round {_k}: Eq. 3 from the {round_name(_k - 1)} run's profile, same budget",
        "allocation_round": _k,
        "previous_round": round_name(_k - 1),
    }))
