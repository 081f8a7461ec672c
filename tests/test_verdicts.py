"""Verdicts that hold (issue 20): over seeds, corrected for the comparisons a cell makes, calibrated, and honest
about what a study can detect."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmarks.bench_calibration import detection_rate, null_shares
from dashboards.analysis.verdicts import detectability, holm, minimum_detectable, seed_verdicts


def runs(accuracies: dict[str, list[float]], items: int = 200, nested: bool = True) -> pd.DataFrame:
    """Eval rows whose runs have these accuracies; with ``nested`` every run is right on a prefix of the items, so
    a run that is worse is worse on the very items another got right (the strongest item-level evidence)."""
    rows = []
    for strategy, by_seed in accuracies.items():
        for seed, accuracy in enumerate(by_seed):
            right = round(accuracy * items)
            correct = np.arange(items) < right if nested else np.random.default_rng(seed).permutation(items) < right
            rows.append(pd.DataFrame({"strategy": strategy, "seed": seed, "item": np.arange(items), "correct": correct}))
    return pd.concat(rows, ignore_index=True)


def test_two_runs_that_landed_low_are_not_a_difference_between_strategies():
    # Uniform's two seeds: 50% and 60%; proportional's: 45% and 55%. Over items the gap is 5 points on 10% of
    # them, all in the same direction (sign-flip p tiny); over seeds it is 5 points against a 7-point spread.
    from dashboards.analysis.items import item_means, paired_difference

    df = runs({"uniform": [0.50, 0.60], "proportional": [0.45, 0.55]})
    means = item_means(df)
    item_level = paired_difference(means["proportional"], means["uniform"], np.random.default_rng(0))
    assert item_level["p_permutation"] < 0.001
    verdict = seed_verdicts(df)["proportional"]["vs_uniform"]
    s = math.sqrt(((0.05**2) * 2 + (0.05**2) * 2) / 2)  # pooled SD of the runs, 2 df
    assert verdict.delta == pytest.approx(-0.05) and verdict.df == 2
    assert verdict.p_unadjusted == pytest.approx(2 * stats.t.sf(0.05 / (s * math.sqrt(1 / 2 + 1 / 2)), 2))
    assert verdict.ci_low < 0 < verdict.ci_high and not verdict.significant


def test_a_consistent_difference_is_found_and_the_base_model_is_a_fixed_row():
    df = runs({"base": [0.30], "uniform": [0.50, 0.51, 0.49], "proportional": [0.40, 0.41, 0.39]}, nested=False)
    verdicts = seed_verdicts(df)
    assert verdicts["proportional"]["vs_uniform"].significant
    assert verdicts["proportional"]["vs_uniform"].delta == pytest.approx(-0.10)
    # The base model is evaluated once (greedy, seed-free): a constant, so only the trained side varies.
    to_base = verdicts["uniform"]["vs_base"]
    se = math.sqrt(((0.01**2 * 2) * 2) / 4 / 3)  # pooled variance over 4 df, 3 runs of uniform
    assert to_base.ci_high - to_base.delta == pytest.approx(stats.t.ppf(0.975, 4) * se)
    assert verdicts["base"]["vs_uniform"].delta == pytest.approx(-to_base.delta)
    assert verdicts["base"]["vs_uniform"].p_value == to_base.p_value  # one comparison, stated from both sides


def test_holm_adjusts_over_every_comparison_of_the_cell_and_one_seed_is_not_testable():
    df = runs({"base": [0.30], "uniform": [0.50, 0.52], "proportional": [0.40, 0.43], "random": [0.47]},
              nested=False)
    verdicts = seed_verdicts(df)
    # random has one seed: no verdict, and no item-level p stands in for one.
    for key in ("vs_uniform", "vs_base"):
        assert verdicts["random"][key].test == "not testable with 1 seed"
        assert math.isnan(verdicts["random"][key].p_value) and not verdicts["random"][key].significant
    # The family: proportional vs uniform, proportional vs base, uniform vs base (= base vs uniform).
    tested = {("proportional", "vs_uniform"): None, ("proportional", "vs_base"): None, ("uniform", "vs_base"): None}
    raw = {key: verdicts[key[0]][key[1]].p_unadjusted for key in tested}
    adjusted = holm(raw)
    for key in tested:
        assert verdicts[key[0]][key[1]].p_value == pytest.approx(adjusted[key])
        assert adjusted[key] >= raw[key]
        assert "(3 comparisons)" in verdicts[key[0]][key[1]].test
    with_one_seed_each = runs({"uniform": [0.5], "proportional": [0.4]})
    assert seed_verdicts(with_one_seed_each)["proportional"]["vs_uniform"].test == "not testable with 1 seed"


def test_the_verdicts_hold_their_level_when_nothing_differs_and_the_item_level_tests_do_not():
    # 200 synthetic studies with no strategy effect, a random effect per run and items of varied difficulty
    # (benchmarks/bench_calibration.py): the share with any significant verdict stays at 5% plus Monte-Carlo
    # error; the former item-level verdicts (each comparison at 0.05) call something significant in most.
    result = null_shares(studies=200, seeds=2)
    bound = 0.05 + 2 * result["monte_carlo_se_at_5pct"]
    print(f"any significant verdict under the null: seed-aware {result['any_significant']:.3f}, "
          f"item-level {result['item_level_any']:.3f} (bound {bound:.3f}, 200 studies, 2 seeds)")
    assert result["any_significant"] <= bound
    assert result["item_level_any"] > 0.3


def test_a_planted_five_point_effect_is_found_more_often_with_more_seeds():
    rates = [detection_rate(studies=60, seeds=seeds) for seeds in (3, 10)]
    print(f"5-point effect found with 3 / 10 seeds: {rates}")
    assert rates[0] < rates[1] and rates[1] > 0.4


def test_what_a_study_can_detect_follows_from_its_run_variance():
    df = runs({"base": [0.3], "uniform": [0.50, 0.56], "proportional": [0.45, 0.51], "random": [0.48, 0.54]},
              nested=False)
    found = detectability(df, seed_verdicts(df))
    assert found.run_sd == pytest.approx(math.sqrt(0.03**2 * 2)) and found.df == 3 and found.n_seeds == 2
    assert found.family_size == 5 and found.alpha == pytest.approx(0.05 / 5)
    # 80% power at the strictest Holm threshold, two strategies of 2 seeds, 3 df: by definition of power.
    mde = found.minimum_detectable_difference
    se = found.run_sd * math.sqrt(2 / 2)
    critical = stats.t.ppf(1 - found.alpha / 2, 3)
    assert stats.nct.sf(critical, 3, mde / se) + stats.nct.cdf(-critical, 3, mde / se) == pytest.approx(0.8, abs=1e-6)
    # Seeds for the paper's 4.5 points: the fewest per strategy whose detectable difference is that small.
    k = found.seeds_for_paper_gap
    assert minimum_detectable(found.run_sd, k, 3 * (k - 1), found.alpha) <= 0.045
    assert minimum_detectable(found.run_sd, k - 1, 3 * (k - 2), found.alpha) > 0.045
