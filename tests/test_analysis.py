"""Analysis definitions on hand-computed cases, planted effects on synthetic studies, and gaps in a study.

Every expected number here is worked out by hand (in the comments) from the issue's definitions, not
copied from the implementation.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from dashboards.analysis import analyze, summarize
from dashboards.analysis import stats as st
from orchestrator.core.errors import StudyError
from tests.fixtures.synthetic import PAPER_MODULE_SHARE, SyntheticSpec, write_synthetic_study

# ---------------------------------------------------------------------------------------------------------
# Helpers that write a study directory by hand, row by row.


def write_run(study: Path, run_id: str, allocation: list[int], status: str = "completed",
              lora_params: dict[str, list[int]] | None = None, trainable_params: int | None = 1000) -> None:
    strategy, seed = run_id.rsplit("-seed", 1)
    run = {"run_id": run_id, "strategy": strategy, "seed": int(seed), "status": status, "allocation": allocation,
           "trainable_params": trainable_params}
    if lora_params is not None:
        run["lora_params"] = lora_params
    (study / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    (study / "runs" / run_id / "run.json").write_text(json.dumps(run))


def write_profile(study: Path, run_id: str, grads: dict[str, np.ndarray], ranks: list[int]) -> None:
    """``grads[module]`` is a (steps, layers) array of gradient norms."""
    strategy, seed = run_id.rsplit("-seed", 1)
    rows = []
    for module, table in grads.items():
        for step_idx, per_layer in enumerate(np.asarray(table, dtype=float)):
            for layer, g in enumerate(per_layer):
                rows.append((run_id, strategy, int(seed), step_idx + 1, layer, module, ranks[layer], g))
    df = pd.DataFrame(rows, columns=["run_id", "strategy", "seed", "step", "layer", "module", "rank", "grad_norm"])
    df["nonfinite"] = ~np.isfinite(df["grad_norm"])
    (study / "profiles").mkdir(parents=True, exist_ok=True)
    df.sample(frac=1.0, random_state=0).to_parquet(study / "profiles" / f"{run_id}.parquet")  # row order must not matter


def write_eval(study: Path, run_id: str, correct: list[int], items: list[int] | None = None) -> None:
    strategy, seed = run_id.rsplit("-seed", 1)
    items = list(range(len(correct))) if items is None else items
    df = pd.DataFrame({"run_id": run_id, "strategy": strategy, "seed": int(seed), "item": items,
                       "correct": [bool(c) for c in correct], "format_ok": True, "prediction": "1", "target": "1",
                       "completion": "<answer>1</answer>"})
    (study / "eval").mkdir(parents=True, exist_ok=True)
    df.iloc[::-1].to_parquet(study / "eval" / f"{run_id}.parquet")  # reversed: pairing is by item, not position


def flat(steps: int, values: list[float]) -> np.ndarray:
    """A (steps, layers) table with the same norm at every step."""
    return np.tile(np.asarray(values, dtype=float), (steps, 1))


# ---------------------------------------------------------------------------------------------------------
# Statistics, each against its closed form.


def wilson_closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return center - half, center + half


def test_wilson_on_the_papers_table1_counts():
    # Table 1: 74.5 / 70.0 / 67.5 / 65.0 / 66.0 % of n = 200.
    counts = [149, 140, 135, 130, 132]
    for k in counts:
        low, high = st.wilson_interval(k, 200)
        exp_low, exp_high = wilson_closed_form(k, 200)
        assert low == pytest.approx(exp_low, abs=1e-9) and high == pytest.approx(exp_high, abs=1e-9)
    wilson = [round((st.wilson_interval(k, 200)[1] - st.wilson_interval(k, 200)[0]) / 2 * 100, 1) for k in counts]
    wald = [round(st.wald_half_width(k, 200) * 100, 1) for k in counts]
    # The anchor: 149/200 gives 74.5% +/- 6.0 with Wilson.
    assert wilson[0] == 6.0
    # The paper prints +/- 6.0/6.4/6.5/6.6/6.6 and calls it Wilson; those are the Wald half-widths
    # 1.96 sqrt(p(1-p)/200). Wilson's half-widths are 6.0/6.3/6.4/6.6/6.5: three of five differ.
    assert wald == [6.0, 6.4, 6.5, 6.6, 6.6]
    assert wilson == [6.0, 6.3, 6.4, 6.6, 6.5]
    assert all(math.isnan(x) for x in st.wilson_interval(0, 0))


def test_mcnemar_exact_is_a_binomial_test_on_discordant_pairs():
    # b = 2, c = 10: p = 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    assert st.mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert st.mcnemar_exact(10, 2) == pytest.approx(st.mcnemar_exact(2, 10))
    # b = 1, c = 5: 2 * (1 + 6) / 64.
    assert st.mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert st.mcnemar_exact(3, 3) == 1.0
    assert st.mcnemar_exact(0, 0) == 1.0


def test_pearson_and_its_undefined_cases():
    # x = 1..4, y = 2, 4, 6, 8.5: sum dxdy = 10.75, sum dx^2 = 5, sum dy^2 = 23.1875.
    assert st.pearson([1, 2, 3, 4], [2, 4, 6, 8.5]) == pytest.approx(10.75 / math.sqrt(5 * 23.1875))
    assert st.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(st.pearson([1, 1, 1], [1, 2, 3]))  # constant side
    assert math.isnan(st.pearson([1, 2], [1, 2]))  # too few pairs
    assert st.pearson([1, 2, 3, np.nan], [1, 2, 3, 10]) == pytest.approx(1.0)  # the non-finite pair is dropped


def test_landscape_statistics_on_28_layers():
    assert st.band_bounds(28) == (9, 19)  # 0-8, 9-18, 19-27 as in the paper
    assert st.band_bounds(3) == (1, 2)
    share = np.arange(1, 29, dtype=float)
    share /= share.sum()  # share of layer l is (l + 1) / 406
    bands = st.band_share(share)
    assert bands["early"] == pytest.approx(sum(range(1, 10)) / 406)
    assert bands["middle"] == pytest.approx(sum(range(10, 20)) / 406)
    assert bands["late"] == pytest.approx(sum(range(20, 29)) / 406)
    # floor(0.3 * 28) = 8 largest layers: 21..28.
    assert st.top_share(share) == pytest.approx(sum(range(21, 29)) / 406)
    assert st.top_share(np.full(10, 0.1)) == pytest.approx(0.3)  # floor(3.0) = 3, although 0.3 * 10 > 3 in floats
    assert st.max_min_ratio(share) == pytest.approx(28.0)
    assert st.group_shares({"q_proj": 0.25, "up_proj": 0.75}) == (0.25, 0.75)


# The paper's published landscape (Figure 1 and section 3): every value it states, on 28 layers, in percent.
# Bands: 0-8 29.8, 9-18 43.0, 19-27 27.2; hottest layer 15 (4.68), coldest 26 (2.15); top 30% 35.7; layer 1
# 3.09, layer 10 3.93, layer 18 4.53, layer 24 2.23. The other layers are filled in to meet those constraints.
PAPER_SHARES = {
    0: 3.20, 1: 3.09, 2: 3.25, 3: 3.30, 4: 3.35, 5: 3.35, 6: 3.40, 7: 3.40, 8: 3.46,
    9: 4.50, 10: 3.93, 11: 4.45, 12: 4.42, 13: 4.40, 14: 4.38, 15: 4.68, 16: 4.34, 17: 3.37, 18: 4.53,
    19: 3.60, 20: 3.50, 21: 3.40, 22: 3.30, 23: 3.10, 24: 2.23, 25: 2.96, 26: 2.15, 27: 2.96,
}


def test_the_analysis_reproduces_every_landscape_value_the_paper_publishes(tmp_path):
    share = np.array([PAPER_SHARES[layer] for layer in range(28)])
    assert round(share.sum(), 9) == 100.0
    write_run(tmp_path, "uniform-seed0", [32] * 28)
    write_profile(tmp_path, "uniform-seed0", {"q_proj": share[None, :] / 100}, [32] * 28)
    land = summarize(tmp_path)[0]["landscape"]
    pct = [round(100 * x, 2) for x in land["layer_share"]]
    assert (pct.index(max(pct)), max(pct), pct.index(min(pct)), min(pct)) == (15, 4.68, 26, 2.15)
    assert (pct[1], pct[10], pct[18], pct[24]) == (3.09, 3.93, 4.53, 2.23)
    assert {k: round(100 * v, 1) for k, v in land["band_share"].items()} == {"early": 29.8, "middle": 43.0,
                                                                           "late": 27.2}
    assert round(100 * land["top30_share"], 1) == 35.7  # 8 layers; 9 would carry 39.6%
    assert round(land["max_min_ratio"], 2) == 2.18  # 4.68 / 2.15 = 2.177; the paper prints 2.17


# ---------------------------------------------------------------------------------------------------------
# Eq. 2 and the landscape on a hand-built study.


def test_eq2_landscape_temporal_and_module_shares(tmp_path):
    # 3 layers, 4 steps, q_proj and up_proj (= 3 x q_proj). q_proj per layer over steps:
    # layer 0: 1,1,1,1  layer 1: 2,2,2,2  layer 2: 1,1,5,5.
    q = np.array([[1, 2, 1], [1, 2, 1], [1, 2, 5], [1, 2, 5]], dtype=float)
    write_run(tmp_path, "uniform-seed0", [32, 32, 32])
    write_profile(tmp_path, "uniform-seed0", {"q_proj": q, "up_proj": 3 * q}, [32, 32, 32])
    summary, warnings = summarize(tmp_path)
    land = summary["landscape"]
    # S(l) = mean over steps of (q + 3q) = 4 * [1, 2, 3] -> shares 1/6, 1/3, 1/2.
    assert land["layer_share"] == pytest.approx([1 / 6, 1 / 3, 1 / 2])
    assert land["max_min_ratio"] == pytest.approx(3.0)
    assert land["top30_share"] == pytest.approx(0.5)  # floor(0.9) = 0, at least 1 layer
    assert land["band_share"] == pytest.approx({"early": 1 / 6, "middle": 1 / 3, "late": 1 / 2})
    # First half (steps 1-2): S = 4 * [1, 2, 1]; second half: 4 * [1, 2, 5]; r = -sqrt(1/13).
    assert land["temporal_stability"] == pytest.approx(-math.sqrt(1 / 13))
    # q_proj: 24 of 96 in total.
    assert land["module_share"] == pytest.approx({"q_proj": 0.25, "up_proj": 0.75})
    assert land["attention_share"] == pytest.approx(0.25) and land["mlp_share"] == pytest.approx(0.75)
    assert summary["strategies"]["uniform"]["max_min_ratio"] == pytest.approx(3.0)
    assert summary["sft"] is None  # no SFT profile: the part is there, null
    assert not [w for w in warnings if w.startswith("profiles")], warnings


def test_shares_are_averaged_over_seeds_and_temporal_split_uses_floor_half(tmp_path):
    # seed 0: shares 0.2, 0.3, 0.5 (constant norms); seed 1: 1/3 each. Mean: 4/15, 19/60, 5/12.
    write_profile(tmp_path, "uniform-seed0", {"q_proj": flat(5, [2, 3, 5])}, [8, 8, 8])
    write_profile(tmp_path, "uniform-seed1", {"q_proj": flat(5, [1, 1, 1])}, [8, 8, 8])
    summary, warnings = summarize(tmp_path)
    mean = [(0.2 + 1 / 3) / 2, (0.3 + 1 / 3) / 2, (0.5 + 1 / 3) / 2]
    assert summary["landscape"]["layer_share"] == pytest.approx(mean)
    assert summary["landscape"]["max_min_ratio"] == pytest.approx(mean[2] / mean[0])
    # Constant profiles: both halves proportional -> r = 1 for seed 0; seed 1 is constant (undefined) and
    # is left out of the average instead of counting as 0.
    assert summary["landscape"]["temporal_stability"] == pytest.approx(1.0)
    assert any("runs:" in w for w in warnings)  # no run.json anywhere: said once, everything else reported


def test_nonfinite_norms_are_left_out_of_means_and_reported(tmp_path):
    q = flat(4, [1.0, 2.0, 3.0])
    q[1, 0] = np.inf
    q[2, 2] = np.nan
    write_run(tmp_path, "uniform-seed0", [8, 8, 8])
    write_profile(tmp_path, "uniform-seed0", {"q_proj": q}, [8, 8, 8])
    summary, warnings = summarize(tmp_path)
    # Means over the finite values: 1, 2, 3 -> shares 1/6, 1/3, 1/2.
    assert summary["landscape"]["layer_share"] == pytest.approx([1 / 6, 1 / 3, 1 / 2])
    assert any("uniform-seed0 has 2 non-finite grad_norm" in w for w in warnings), warnings


def test_a_step_non_finite_in_one_module_leaves_the_same_steps_out_of_analysis_and_allocation(tmp_path):
    # Eq. 2's one rule (issue 21): step 4 is small everywhere and non-finite in v_proj's layer 0. Left out whole,
    # every module's mean is over steps 1-3 (shares 1/6, 1/3, 1/2); per-module step sets would give v_proj's layer
    # 0 a mean over its three large steps and every other cell one over four, tilting the shares.
    from orchestrator.core.importance import importance_from_profile

    q, v = flat(4, [1.0, 2.0, 3.0]), flat(4, [1.0, 2.0, 3.0])
    q[3], v[3] = 0.0, 0.0
    v[3, 0] = np.nan
    write_run(tmp_path, "uniform-seed0", [8, 8, 8])
    write_profile(tmp_path, "uniform-seed0", {"q_proj": q, "v_proj": v}, [8, 8, 8])
    summary, _ = summarize(tmp_path)
    assert summary["landscape"]["layer_share"] == pytest.approx([1 / 6, 1 / 3, 1 / 2])
    allocation = importance_from_profile(str(tmp_path / "profiles" / "uniform-seed0.parquet")).values
    assert allocation == pytest.approx([2.0, 4.0, 6.0])


def test_a_run_whose_norms_stay_non_finite_to_its_end_is_reported_as_diverged(tmp_path):
    q = flat(4, [1.0, 2.0, 3.0])
    q[2:, 1] = np.inf  # from step 3 on
    write_run(tmp_path, "uniform-seed0", [8, 8, 8])
    write_profile(tmp_path, "uniform-seed0", {"q_proj": q}, [8, 8, 8])
    summary, warnings = summarize(tmp_path)
    assert any("uniform-seed0 diverged: its gradient norms are non-finite from step 3" in w for w in warnings), warnings
    assert summary["landscape"]["layer_share"] == pytest.approx([1 / 6, 1 / 3, 1 / 2])  # steps 1-2


# ---------------------------------------------------------------------------------------------------------
# Amplification, controls and McNemar on hand-built studies.


def amplification_study(study: Path, with_lora_params: bool = True) -> None:
    """Uniform: flat shares. Proportional seed 0: ranks 16/32/48, shares .2/.3/.5; seed 1: same ranks,
    shares .3/.3/.4. One module (q_proj); LoRA params of proportional: 100/400/900 per layer."""
    for seed in (0, 1):
        params = {"q_proj": [400, 400, 400]} if with_lora_params else None
        write_run(study, f"uniform-seed{seed}", [32, 32, 32], lora_params=params)
        write_profile(study, f"uniform-seed{seed}", {"q_proj": flat(4, [1, 1, 1])}, [32, 32, 32])
    for seed, norms in ((0, [2, 3, 5]), (1, [3, 3, 4])):
        params = {"q_proj": [100, 400, 900]} if with_lora_params else None
        write_run(study, f"proportional-seed{seed}", [16, 32, 48], lora_params=params)
        write_profile(study, f"proportional-seed{seed}", {"q_proj": flat(4, norms)}, [16, 32, 48])


def test_rank_shift_correlation_is_per_seed_then_averaged(tmp_path):
    amplification_study(tmp_path)
    summary, warnings = summarize(tmp_path)
    prop = summary["strategies"]["proportional"]
    # seed 0: shift = [-4, -1, 5] / 30 vs ranks [16, 32, 48]: r = 144 / sqrt(512 * 42) = 0.98198.
    # seed 1: shift = [-1, -1, 2] / 30: r = 48 / sqrt(512 * 6) = sqrt(3) / 2.
    r0, r1 = 144 / math.sqrt(512 * 42), math.sqrt(3) / 2
    assert prop["rank_shift_corr_per_run"] == pytest.approx({"proportional-seed0": r0, "proportional-seed1": r1})
    assert prop["rank_shift_corr"] == pytest.approx((r0 + r1) / 2)
    # Seed-averaged shares .25/.3/.45 -> max/min 1.8; uniform 1.0 and no correlation with itself.
    assert prop["max_min_ratio"] == pytest.approx(1.8)
    assert summary["strategies"]["uniform"]["max_min_ratio"] == pytest.approx(1.0)
    assert summary["strategies"]["uniform"]["rank_shift_corr"] is None
    assert summary["strategies"]["uniform"]["p_value_vs_uniform"] is None
    assert not warnings or all("eval" in w or "metrics" in w for w in warnings), warnings


def test_per_parameter_and_single_module_controls(tmp_path):
    amplification_study(tmp_path)
    summary, _ = summarize(tmp_path)
    control = summary["normalized_control"]
    # Per parameter, seed 0: [2, 3, 5] / sqrt([100, 400, 900]) = [0.2, 0.15, 0.1667]; uniform stays flat.
    normed0 = np.array([2 / 10, 3 / 20, 5 / 30])
    normed1 = np.array([3 / 10, 3 / 20, 4 / 30])
    share0, share1 = normed0 / normed0.sum(), normed1 / normed1.sum()
    mean = (share0 + share1) / 2
    per_param = control["per_parameter"]
    assert per_param["landscape"]["max_min_ratio"] == pytest.approx(1.0)
    assert per_param["strategies"]["proportional"]["max_min_ratio"] == pytest.approx(mean.max() / mean.min())
    ranks = np.array([16, 32, 48])
    expected_r = (np.corrcoef(ranks, share0 - 1 / 3)[0, 1] + np.corrcoef(ranks, share1 - 1 / 3)[0, 1]) / 2
    assert per_param["strategies"]["proportional"]["rank_shift_corr"] == pytest.approx(expected_r)
    # Single module: only q_proj here, so it equals the unnormalised analysis.
    single = control["single_module"]["q_proj"]
    assert single["strategies"]["proportional"]["rank_shift_corr"] == pytest.approx(
        summary["strategies"]["proportional"]["rank_shift_corr"])


def test_control_without_lora_params_is_skipped_with_a_warning(tmp_path):
    amplification_study(tmp_path, with_lora_params=False)
    summary, warnings = summarize(tmp_path)
    assert summary["normalized_control"]["per_parameter"] is None
    assert any("lora_params" in w for w in warnings), warnings
    assert summary["normalized_control"]["single_module"]["q_proj"]["strategies"]["proportional"]["rank_shift_corr"] > 0


def test_accuracy_wilson_and_mcnemar_paired_by_seed_and_item(tmp_path):
    # seed 0: uniform 6/10, proportional 4/10; only proportional right on item 6 (b = 1), only uniform
    # right on 3, 4, 5 (c = 3). seed 1: uniform right on items 0, 1 only, proportional on none (c = 2).
    write_eval(tmp_path, "uniform-seed0", [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    write_eval(tmp_path, "proportional-seed0", [1, 1, 1, 0, 0, 0, 1, 0, 0, 0])
    write_eval(tmp_path, "uniform-seed1", [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    write_eval(tmp_path, "proportional-seed1", [0] * 10)
    # A proportional seed without a uniform partner: reported, and left out of the test (but not of accuracy).
    write_eval(tmp_path, "proportional-seed2", [1] * 10)
    summary, warnings = summarize(tmp_path)
    prop, uni = summary["strategies"]["proportional"], summary["strategies"]["uniform"]
    assert (uni["n_eval"], uni["accuracy"]) == (20, pytest.approx(8 / 20))
    assert (prop["n_eval"], prop["accuracy"]) == (30, pytest.approx(14 / 30))
    assert (prop["ci_low"], prop["ci_high"]) == pytest.approx(wilson_closed_form(14, 30))
    assert (prop["mcnemar_b"], prop["mcnemar_c"], prop["n_paired"]) == (1, 5, 20)
    assert prop["p_value_vs_uniform"] == pytest.approx(14 / 64)  # 2 * P(X <= 1), X ~ Bin(6, 1/2)
    assert prop["n_runs"] == 3 and prop["seeds"] == [0, 1, 2]
    assert any("proportional-seed2 has no uniform eval with seed 2" in w for w in warnings), warnings
    # No profiles at all: said, and the accuracy table is still complete.
    assert any(w.startswith("profiles:") for w in warnings)
    assert summary["landscape"] is None


# ---------------------------------------------------------------------------------------------------------
# Planted effects on a synthetic study, and a study with parts missing.


@pytest.fixture(scope="module")
def synthetic_study(tmp_path_factory) -> Path:
    spec = SyntheticSpec(seeds=(0, 1), steps=40, layers=8, eval_items=60, sft_steps=20)
    return write_synthetic_study(tmp_path_factory.mktemp("synthetic") / "study", spec)


def test_synthetic_planted_effects_are_recovered(synthetic_study):
    summary, warnings = summarize(synthetic_study)
    assert warnings == []
    land = summary["landscape"]
    assert 1.8 < land["max_min_ratio"] < 2.6  # planted 2.17 (+/- noise of 40 steps, 2 seeds)
    assert land["temporal_stability"] > 0.9
    for module, share in PAPER_MODULE_SHARE.items():
        assert land["module_share"][module] == pytest.approx(share, abs=0.01)
    for strategy in ("proportional", "random", "reduced"):
        entry = summary["strategies"][strategy]
        assert entry["rank_shift_corr"] > 0.8, strategy  # planted amplification
        assert entry["p_value_vs_uniform"] is not None and 0 <= entry["p_value_vs_uniform"] <= 1
    assert summary["strategies"]["proportional"]["max_min_ratio"] > land["max_min_ratio"]
    assert summary["sft"]["max_min_ratio"] > 8  # planted 12 for SFT
    assert set(summary["sft"]) >= {"max_min_ratio", "top30_share", "layer_share"}
    # Accuracy is the pooled count of the eval files (computed here independently).
    evals = pd.read_parquet(synthetic_study / "eval")
    for strategy, group in evals.groupby("strategy"):
        assert summary["strategies"][strategy]["accuracy"] == pytest.approx(group["correct"].mean())
        assert summary["strategies"][strategy]["n_eval"] == len(group)
    # Trainable params come from run.json: reduced has ~70% of the uniform budget.
    ratio = summary["strategies"]["reduced"]["trainable_params"] / summary["strategies"]["uniform"]["trainable_params"]
    assert ratio == pytest.approx(0.7, abs=0.03)
    json.dumps(summary, allow_nan=False)  # strict JSON: undefined numbers are None


def test_a_synthetic_study_with_axes_is_analysed_cell_by_cell_with_each_cells_planted_effect(tmp_path):
    # The fixture the grid-scale benchmark uses: every cell a whole grid, each with the planted landscape and
    # amplification, and a rank axis that sets each cell's budget.
    spec = SyntheticSpec(seeds=(0, 1), steps=30, layers=8, eval_items=40, axes={"lora.rank": (32, 16)})
    summary, warnings = summarize(write_synthetic_study(tmp_path / "study", spec))
    assert warnings == []
    assert summary["axes"] == ["lora.rank"] and [c["axes"] for c in summary["cells"]] == [{"lora.rank": 32},
                                                                                            {"lora.rank": 16}]
    for cell in summary["cells"]:
        rank = cell["axes"]["lora.rank"]
        assert sorted(cell["run_ids"]) == sorted(f"{s}-seed{seed}__rank-{rank}" for s in spec.strategies
                                                 for seed in (spec.seeds if s != "base" else spec.seeds[:1]))
        assert 1.8 < cell["landscape"]["max_min_ratio"] < 2.6  # planted 2.17
        assert cell["strategies"]["proportional"]["rank_shift_corr"] > 0.8  # planted amplification
        record = json.loads((tmp_path / "study" / "runs" / f"uniform-seed0__rank-{rank}" / "run.json").read_text())
        assert record["axes"] == {"lora.rank": rank} and set(record["allocation"]) == {rank}
    params = [c["strategies"]["uniform"]["trainable_params"] for c in summary["cells"]]
    assert params[0] == 2 * params[1]  # rank 32 vs rank 16


def copy_study(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "report").exists() and shutil.rmtree(dst / "report")
    return dst


def test_missing_table_is_reported_and_the_rest_still_computed(synthetic_study, tmp_path):
    study = copy_study(synthetic_study, tmp_path / "study")
    shutil.rmtree(study / "eval")
    summary, warnings = summarize(study)
    assert any(w.startswith("eval:") and "missing" in w for w in warnings), warnings
    assert summary["landscape"]["max_min_ratio"] > 1.5
    assert summary["strategies"]["proportional"]["rank_shift_corr"] > 0.8
    assert summary["strategies"]["proportional"]["accuracy"] is None


def test_run_lacking_its_uniform_partner_is_reported(synthetic_study, tmp_path):
    study = copy_study(synthetic_study, tmp_path / "study")
    for part in ("profiles", "eval", "metrics"):
        (study / part / "uniform-seed1.parquet").unlink()
    shutil.rmtree(study / "runs" / "uniform-seed1")
    summary, warnings = summarize(study)
    for strategy in ("proportional", "random", "reduced"):
        assert any(f"{strategy}-seed1 has no uniform run with seed 1" in w for w in warnings), warnings
        assert any(f"{strategy}-seed1 has no uniform eval with seed 1" in w for w in warnings), warnings
        entry = summary["strategies"][strategy]
        assert list(entry["rank_shift_corr_per_run"]) == [f"{strategy}-seed0"]  # seed 0 still paired
        assert entry["paired_seeds"] == [0] and entry["p_value_vs_uniform"] is not None


def test_empty_profile_and_failed_run_are_reported(synthetic_study, tmp_path):
    study = copy_study(synthetic_study, tmp_path / "study")
    path = study / "profiles" / "random-seed0.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)  # same schema, zero rows
    run_json = study / "runs" / "reduced-seed1" / "run.json"
    run = json.loads(run_json.read_text())
    run["status"] = "failed"
    run_json.write_text(json.dumps(run))
    summary, warnings = summarize(study)
    assert any("random-seed0.parquet is empty" in w for w in warnings), warnings
    assert any("reduced-seed1 has status 'failed'" in w for w in warnings), warnings
    assert list(summary["strategies"]["random"]["rank_shift_corr_per_run"]) == ["random-seed1"]
    assert summary["strategies"]["reduced"]["n_runs"] == 1  # the failed run is left out everywhere
    assert summary["strategies"]["reduced"]["n_eval"] == 60
    assert summary["landscape"]["max_min_ratio"] > 1.5


def test_unreadable_file_and_missing_directory(tmp_path):
    with pytest.raises(StudyError, match="not a directory"):
        summarize(tmp_path / "nope")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "uniform-seed0.parquet").write_bytes(b"not parquet")
    summary, warnings = summarize(tmp_path)
    assert any("uniform-seed0.parquet is not readable Parquet" in w for w in warnings), warnings
    assert any(w.startswith("eval:") for w in warnings) and any(w.startswith("metrics:") for w in warnings)
    assert summary["strategies"] == {}


def test_profiles_without_run_json_use_their_own_columns(synthetic_study, tmp_path):
    study = copy_study(synthetic_study, tmp_path / "study")
    shutil.rmtree(study / "runs")
    result = analyze(study)
    # Allocation from the profiles' rank column, strategy and seed from theirs.
    cell = result.summary.single
    assert cell.strategies["proportional"].rank_shift_corr > 0.8
    assert cell.strategies["uniform"].trainable_params is None
    assert cell.normalized_control.per_parameter is None
    assert any("runs:" in w for w in result.warnings)
    amp = result.frames["amplification"]
    original = json.loads((synthetic_study / "runs" / "random-seed0" / "run.json").read_text())["allocation"]
    assert amp[amp["run_id"] == "random-seed0"].sort_values("layer")["rank"].tolist() == original


def test_profile_columns_read_are_only_the_needed_ones(synthetic_study, monkeypatch):
    import dashboards.analysis.load as loader

    requested: list[list[str] | None] = []

    class SpyDataset:
        def __init__(self, dataset):
            self.dataset = dataset

        def to_table(self, columns=None, **kwargs):
            requested.append(columns if columns is not None else self.dataset.schema.names)
            return self.dataset.to_table(columns=columns, **kwargs)

    real = loader.ds.dataset
    monkeypatch.setattr(loader.ds, "dataset", lambda *a, **k: SpyDataset(real(*a, **k)))
    summarize(synthetic_study)
    # Profiles: the five columns Eq. 2 needs (strategy, seed and rank come from run.json) and the weight-gradient
    # control's; eval and metrics: no text columns (completions are read for a few examples only, file by file).
    assert ["run_id", "step", "layer", "module", "grad_norm", "weight_grad_norm"] in requested
    assert all("completion" not in cols and "rank" not in cols for cols in requested), requested


def test_all_zero_profiles_are_reported_not_divided_by_zero(tmp_path):
    # Seen on a real tiny CPU study: all-equal rewards in every group give grad_norm 0 everywhere.
    write_run(tmp_path, "uniform-seed0", [8, 8, 8])
    write_profile(tmp_path, "uniform-seed0", {"q_proj": flat(3, [0, 0, 0])}, [8, 8, 8])
    write_eval(tmp_path, "uniform-seed0", [0, 0, 1, 0])
    summary, warnings = summarize(tmp_path)
    assert any("uniform-seed0: every grad_norm is 0" in w for w in warnings), warnings
    assert summary["landscape"]["max_min_ratio"] is None and summary["landscape"]["layer_share"] == []
    assert summary["strategies"]["uniform"]["accuracy"] == pytest.approx(0.25)
    json.dumps(summary, allow_nan=False)


# ---------------------------------------------------------------------------------------------------------
# Statistics that respect the design (issue 11): items shared by seeds and strategies, the base model row.


def test_item_level_intervals_paired_tests_and_the_base_row(tmp_path):
    # 40 items. uniform gets items 0-29 right with both seeds (perfectly correlated seeds); proportional gets
    # items 0-19 right (seed 0) and 0-21 (seed 1); base (evaluated once, seed 0) gets items 0-14 right.
    n = 40
    for seed, right in ((0, 30), (1, 30)):
        write_run(tmp_path, f"uniform-seed{seed}", [32] * 3)
        write_eval(tmp_path, f"uniform-seed{seed}", [int(i < right) for i in range(n)])
    for seed, right in ((0, 20), (1, 22)):
        write_run(tmp_path, f"proportional-seed{seed}", [16, 32, 48])
        write_eval(tmp_path, f"proportional-seed{seed}", [int(i < right) for i in range(n)])
    write_run(tmp_path, "base-seed0", [], trainable_params=0)
    write_eval(tmp_path, "base-seed0", [int(i < 15) for i in range(n)])
    summary, _ = summarize(tmp_path)
    strategies = summary["strategies"]
    assert list(strategies) == ["base", "uniform", "proportional"]  # Table 1 starts with the base model
    assert set(strategies["base"]) == set(strategies["proportional"]) == set(strategies["uniform"])
    uniform, prop, base = strategies["uniform"], strategies["proportional"], strategies["base"]
    # Item-level: each item's correctness averaged over seeds. Uniform's seeds agree on every item, so its
    # effective sample is 40 items, not 80 outcomes: the bootstrap interval is wider than pooled Wilson's.
    assert uniform["item_accuracy"] == pytest.approx(0.75) and uniform["n_items"] == n
    assert uniform["item_ci_low"] < 0.75 < uniform["item_ci_high"]
    assert uniform["item_ci_high"] - uniform["item_ci_low"] > uniform["ci_high"] - uniform["ci_low"]
    # Paired difference to uniform: per item, (proportional mean) - (uniform mean); items 20-29 lose 1 or 0.5.
    test = prop["vs_uniform"]
    assert test["delta"] == pytest.approx(-(8 * 1.0 + 2 * 0.5) / n) and test["n_items"] == n
    assert test["item_ci_low"] < test["delta"] < test["item_ci_high"] < 0 and test["p_permutation"] < 0.01
    # The verdict is over seeds: runs 0.75, 0.75 (uniform) and 0.50, 0.55 (proportional), pooled variance
    # (0 + 0.025^2 * 2) / 2 on 2 df, so the standard error is 0.025 and the 95% interval delta +- t(2) x 0.025.
    half = stats.t.ppf(0.975, 2) * 0.025
    assert (test["ci_low"], test["ci_high"]) == (pytest.approx(test["delta"] - half), pytest.approx(test["delta"] + half))
    assert test["p_unadjusted"] == pytest.approx(2 * stats.t.sf(0.225 / 0.025, 2)) and test["df"] == 2
    assert test["p_value"] >= test["p_unadjusted"] and test["significant"] and test["n_seeds"] == 2
    assert set(prop["mcnemar_per_seed"]) == {"0", "1"} and prop["mcnemar_per_seed"]["0"] == pytest.approx(
        st.mcnemar_exact(0, 10))
    # Against the base model, which answered each item once: proportional is above it; McNemar per seed (its
    # seed-0 run is right on 5 items the base got wrong, its seed-1 run on 7), not pooled over seeds.
    assert prop["vs_base"]["delta"] == pytest.approx((20 - 15 + 1) / n)
    assert prop["vs_base"]["p_mcnemar_per_seed"] == {"0": pytest.approx(st.mcnemar_exact(5, 0)),
                                                     "1": pytest.approx(st.mcnemar_exact(7, 0))}
    assert uniform["vs_base"]["delta"] == pytest.approx(15 / n) and base["vs_base"] is None
    # The base row against uniform is the same comparison as uniform against the base, mirrored.
    assert base["vs_uniform"]["delta"] == pytest.approx(-uniform["vs_base"]["delta"])
    assert base["vs_uniform"]["p_value"] == uniform["vs_base"]["p_value"]
    assert base["trainable_params"] == 0 and base["n_eval"] == n and base["seeds"] == [0]
    found = summary["findings"]
    assert any(f.startswith("proportional: 52.5% (95% CI over items") and "sign-flip p" in f for f in found)
    assert any(f.startswith("proportional vs the untrained base model (37.5%): above it") for f in found)


def test_sign_flip_and_bootstrap_against_their_definitions():
    from dashboards.analysis.items import bootstrap_mean_ci, sign_flip_p

    rng = np.random.default_rng(3)
    balanced = np.array([1.0, -1.0] * 20)
    assert sign_flip_p(balanced, rng) == 1.0  # mean 0: nothing is more extreme than nothing
    # 6 items all +1: P(|mean of random signs| >= 1) = 2 / 64 exactly; the estimate is close.
    assert sign_flip_p(np.ones(6), rng, draws=20000) == pytest.approx(2 / 64, abs=0.005)
    low, high = bootstrap_mean_ci(np.r_[np.ones(30), np.zeros(10)], rng)
    assert low < 0.75 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.75 * 0.25 / 40), rel=0.2)


def test_per_seed_landscape_ratios_beside_the_seed_averaged_one(tmp_path):
    # Seed 0 has layer shares 1:2:4, seed 1 4:2:1: averaging flattens max/min to 1.25; per seed it is 4.
    for seed, norms in ((0, [1.0, 2.0, 4.0]), (1, [4.0, 2.0, 1.0])):
        write_run(tmp_path, f"uniform-seed{seed}", [32] * 3)
        write_profile(tmp_path, f"uniform-seed{seed}", {"q_proj": np.array([norms, norms])}, [32] * 3)
    land = summarize(tmp_path)[0]["landscape"]
    assert land["max_min_ratio"] == pytest.approx(1.25)
    assert land["per_seed"] == {"0": {"max_min_ratio": pytest.approx(4.0), "top30_share": pytest.approx(4 / 7)},
                                "1": {"max_min_ratio": pytest.approx(4.0), "top30_share": pytest.approx(4 / 7)}}
    assert land["max_min_ratio_seed_range"] == pytest.approx([4.0, 4.0])


def test_adding_a_strategy_leaves_the_other_strategies_resampled_numbers_unchanged(tmp_path):
    def study(root: Path, strategies: list[str]) -> dict:
        for strategy in strategies:
            for seed in (0, 1):
                write_run(root, f"{strategy}-seed{seed}", [32] * 3)
                write_eval(root, f"{strategy}-seed{seed}", [(i * 7 + seed + len(strategy)) % 3 == 0 for i in range(30)])
        return summarize(root)[0]["strategies"]

    two = study(tmp_path / "two", ["uniform", "random"])
    three = study(tmp_path / "three", ["uniform", "proportional", "random"])
    for key in ("item_ci_low", "item_ci_high"):
        assert two["random"][key] == three["random"][key], key
    # The item-level (resampled) figures of a comparison too; its verdict pools the run variance over the cell's
    # strategies and is corrected over the cell's comparisons, so it is the cell's, by design.
    for key in ("delta", "item_ci_low", "item_ci_high", "p_permutation", "n_items"):
        assert two["random"]["vs_uniform"][key] == three["random"]["vs_uniform"][key], key
    assert two["random"]["vs_uniform"]["df"] == 2 and three["random"]["vs_uniform"]["df"] == 3


def test_the_paper_comparison_says_what_the_numbers_say_either_way():
    from dashboards.analysis.findings import paper_comparison
    from dashboards.analysis.schema import (
        BaseDifference,
        CellSummary,
        ControlStrategy,
        Landscape,
        LayerLandscape,
        NormalizedControl,
        PairedDifference,
        PerParameterControl,
        ProfileLandscape,
        SFTLandscape,
        SingleModuleControl,
        StrategyResult,
    )

    def verdict(kind, delta, low, high, p):
        return kind(delta, low, high, p_value=p, p_unadjusted=p / 2, significant=p < 0.05, test="t over seeds",
                    n_seeds=2, df=4, n_items=500)

    def summary(grpo_ratio, sft_ratio, r_control, p_uniform, p_base=0.001):
        strategies = {
            "base": StrategyResult(accuracy=0.2, item_ci_low=0.15, item_ci_high=0.25, n_items=500, seeds=[0],
                                   vs_uniform=verdict(PairedDifference, -0.1, -0.15, -0.05, p_base)),
            "uniform": StrategyResult(accuracy=0.3, item_ci_low=0.26, item_ci_high=0.34, n_items=500, seeds=[0, 1],
                                      max_min_ratio=grpo_ratio,
                                      vs_base=verdict(BaseDifference, 0.1, 0.05, 0.15, 0.001)),
            "proportional": StrategyResult(accuracy=0.28, item_ci_low=0.24, item_ci_high=0.32, max_min_ratio=3.0,
                                           rank_shift_corr=0.9,
                                           vs_uniform=verdict(PairedDifference, -0.02, -0.05, 0.01, p_uniform)),
        }
        shifted = {"proportional": ControlStrategy(rank_shift_corr=r_control)}
        control = NormalizedControl(per_parameter=PerParameterControl(ProfileLandscape(), shifted),
                                    single_module={"q_proj": SingleModuleControl(LayerLandscape(), shifted)})
        return CellSummary(landscape=Landscape(max_min_ratio=grpo_ratio, top30_share=0.4),
                           sft=SFTLandscape(max_min_ratio=sft_ratio, top30_share=0.8), strategies=strategies,
                           normalized_control=control)

    context = {"model": "a tiny model", "task": "the arith task", "steps": 24}
    flat = paper_comparison(summary(2.0, 12.0, 0.8, 0.01), context)
    assert "the GRPO landscape is flatter than the SFT one." in flat[0]
    assert "the effect survives every control, as in the paper." in flat[1]
    assert ("Significantly different from uniform by the test over seeds: base (-10.0 points, adjusted p = 0.001), "
            "proportional (-2.0 points, adjusted p = 0.010)") in flat[2]
    assert "significantly different from the untrained base model: uniform" in flat[2]
    assert flat[3].startswith("What this study can detect: no strategy has two seeds")  # (no detectability part)
    assert flat[4].startswith("This is a miniature: a tiny model, on the arith task, with 24 GRPO steps")
    steep = paper_comparison(summary(20.0, 5.0, -0.3, 0.4), context)
    assert "more concentrated than the SFT one, the opposite of the paper's contrast" in steep[0]
    assert "does not survive the controls, unlike in the paper" in steep[1]
    assert "test over seeds: base (-10.0 points, adjusted p = 0.001);" in steep[2]  # proportional (p 0.4) is not
    assert "No strategy differs significantly from uniform" in paper_comparison(summary(2, 12, 0.8, 0.4, 0.3),
                                                                                 context)[2]
    assert len(paper_comparison(summary(2.0, 12.0, 0.8, 0.01), {"task": "gsm8k", "model": "Qwen/Qwen2.5-1.5B"})) == 4
