"""Rank allocation: budget-exact, within bounds, multiples, monotone, seeded (issue 2)."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.allocation import distribute, reduced_budget
from orchestrator.core.errors import StudyError
from orchestrator.core.importance import importance_from_frame, importance_from_profile
from orchestrator.core.strategies import allocate

PAPER = dict(rank=32, r_min=4, r_max=64, multiple=4)

importances = st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1, max_size=40).filter(
    lambda xs: sum(xs) > 0
)


@settings(max_examples=300, deadline=None)
@given(importances)
def test_proportional_is_budget_exact_bounded_and_monotone(importance):
    ranks = allocate("proportional", importance=importance, **PAPER)
    assert sum(ranks) == len(importance) * 32
    assert all(4 <= r <= 64 and r % 4 == 0 for r in ranks)
    for i, a in enumerate(importance):
        for j, b in enumerate(importance):
            if a > b:
                assert ranks[i] >= ranks[j], (importance, ranks)


@settings(max_examples=200, deadline=None)
@given(importances, st.floats(min_value=0.125, max_value=1.0))
def test_reduced_hits_the_rounded_reduced_budget(importance, fraction):
    ranks = allocate("reduced", importance=importance, reduced_fraction=fraction, **PAPER)
    budget = reduced_budget(len(importance), 32, fraction, 4)
    assert sum(ranks) == budget
    assert budget % 4 == 0 and abs(budget - len(importance) * 32 * fraction) <= 2
    assert all(4 <= r <= 64 and r % 4 == 0 for r in ranks)


def test_paper_reduced_budget_for_28_layers():
    importance = [1.0 + (i % 7) / 10 for i in range(28)]
    ranks = allocate("reduced", importance=importance, reduced_fraction=0.7, **PAPER)
    assert sum(ranks) == 628  # 0.7 x 896 = 627.2 -> nearest multiple of 4


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**31 - 1))
def test_random_is_budget_exact_and_in_range(num_layers, seed):
    ranks = allocate("random", num_layers=num_layers, random_range=(16, 48), seed=seed, **PAPER)
    assert sum(ranks) == num_layers * 32
    assert all(16 <= r <= 48 and r % 4 == 0 for r in ranks)


def test_random_same_seed_same_allocation_different_seed_differs():
    a = allocate("random", num_layers=28, seed=1, **PAPER)
    assert a == allocate("random", num_layers=28, seed=1, **PAPER)
    others = {tuple(allocate("random", num_layers=28, seed=s, **PAPER)) for s in range(2, 7)}
    assert tuple(a) not in others and len(others) == 5
    assert len(set(a)) > 1  # a control with non-uniform ranks


def test_uniform_and_remainder_goes_to_largest_fraction_then_lowest_index():
    assert allocate("uniform", num_layers=5, **PAPER) == [32] * 5
    # ideal ranks 12, 12, 12 over budget 36 in multiples of 8: units 1.5 each, one extra unit -> layer 0.
    assert distribute([1, 1, 1], budget=32, low=8, high=24, multiple=8) == [16, 8, 8]
    # fractional parts 0.75 > 0.5 > 0.25 decide, regardless of index.
    assert distribute([0.25, 0.5, 0.75, 2.5], budget=32, low=0 + 1 * 4, high=64, multiple=4) == [4, 4, 4, 20]


def test_clipping_redistributes_instead_of_losing_budget():
    ranks = allocate("proportional", importance=[100, 1, 1, 1], **PAPER)
    assert ranks[0] == 64 and sum(ranks) == 128 and ranks[1:] == [24, 20, 20]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="proportional", importance=[1, 2], rank=32, r_min=4, r_max=12, multiple=4), "infeasible"),
        (dict(strategy="proportional", importance=[0, 0], **PAPER), "zero importance"),
        (dict(strategy="proportional", importance=[1, float("nan")], **PAPER), "finite"),
        (dict(strategy="proportional", importance=[1, -1], **PAPER), ">= 0"),
        (dict(strategy="proportional", num_layers=3, **PAPER), "needs the layer importance"),
        (dict(strategy="greedy", num_layers=3, **PAPER), "unknown strategy"),
        (dict(strategy="uniform", num_layers=3, rank=30, r_min=4, r_max=64, multiple=4), "multiples of 4"),
    ],
)
def test_bad_inputs_raise_one_clear_error(kwargs, message):
    with pytest.raises(StudyError, match=message):
        allocate(kwargs.pop("strategy"), **kwargs)


def _profile(rows):
    return pd.DataFrame(rows, columns=["run_id", "strategy", "seed", "step", "layer", "module", "rank", "grad_norm"])


def test_layer_importance_is_eq2_and_reads_profile_parquet(tmp_path):
    rows = []
    for step in (1, 2, 3):
        for layer in range(3):
            for m, module in enumerate(("q_proj", "up_proj")):
                rows.append(("uniform-seed0", "uniform", 0, step, layer, module, 32, float(step * (layer + 1) + m)))
    df = _profile(rows)
    # S(l) = mean_t sum_m norm = mean_t (2 t (l+1) + 1) = 2*2*(l+1) + 1
    assert importance_from_frame(df).values == [5.0, 9.0, 13.0]
    path = tmp_path / "p.parquet"
    df.to_parquet(path)
    found = importance_from_profile(str(path))
    assert found.values == [5.0, 9.0, 13.0] and found.nonfinite == 0 and found.note() is None
    with pytest.raises(StudyError, match="does not exist"):
        importance_from_profile(str(tmp_path / "missing.parquet"))


def test_one_rule_for_non_finite_norms_and_missing_steps(tmp_path):
    # Eq. 2's one rule (orchestrator/core/importance.py): a step with a non-finite norm in any module is left out
    # whole and counted, so every module's mean is over the same steps; each (layer, module) term is the mean over
    # the steps it has rows for; a layer whose module has none is undefined.
    rows = [("uniform-seed0", "uniform", 0, step, layer, "q_proj", 8, float(step + layer))
            for step in (1, 2, 3) for layer in range(2)]
    df = _profile(rows)
    df.loc[(df.step == 2) & (df.layer == 1), "grad_norm"] = float("inf")  # step 2 goes: layer 0 by 1, 3; layer 1 by 2, 4
    path = tmp_path / "p.parquet"
    df.to_parquet(path)
    found = importance_from_profile(str(path))
    assert found.values == [2.0, 3.0] and found.nonfinite == 2 and found.diverged_at is None
    assert "2 row(s) of steps with a non-finite grad_norm" in found.note()
    missing_step = df[~((df.step == 3) & (df.layer == 0))]  # layer 0 has step 1 only now: mean 1.0, not 2.0
    assert importance_from_frame(missing_step).values == [1.0, 3.0]
    # Per-module means over their own finite steps would mix step sets: v_proj non-finite at step 3 (where every
    # norm is small) would be averaged over steps 1-2 only, and outweigh q_proj.
    two = _profile([("u-seed0", "uniform", 0, step, 0, module, 8, norm) for step, q, v in
                    ((1, 4.0, 4.0), (2, 2.0, 2.0), (3, 0.0, float("nan"))) for module, norm in (("q_proj", q),
                                                                                             ("v_proj", v))])
    assert importance_from_frame(two).values == [6.0]  # q: (4 + 2) / 2, v: (4 + 2) / 2; not 2 + 3
    assert importance_from_frame(two).diverged_at == 3  # non-finite from step 3 to the end
    df.loc[df.layer == 1, "grad_norm"] = float("nan")
    with pytest.raises(StudyError, match=r"have no finite gradient norm"):
        importance_from_frame(df)
