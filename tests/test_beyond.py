"""Beyond the paper, in the analysis: the decomposition's hypothesis test, total-only statistics, re-profiling
rounds, geometry and AdaLoRA summaries, on studies whose answer is planted."""

import math

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dashboards.analysis import summarize
from dashboards.analysis.beyond import adalora_summary, cold_layers, geometry_summary, mean_interval
from dashboards.analysis.profiles import RunMeta
from orchestrator.core.contract import TOTAL
from orchestrator.core.errors import ConfigError
from orchestrator.core.plan import make_plan
from orchestrator.resolve import load_study
from tests.fixtures.synthetic import SyntheticSpec, write_synthetic_study

SPEC = dict(strategies=("uniform", "proportional"), seeds=(0, 1, 2), steps=20, layers=10, decompose_every=5)


@pytest.mark.parametrize(("tilt", "sign"), [(1.0, 1), (-1.0, -1)])
def test_cold_layers_carry_the_planted_share_of_the_format_gradient(tmp_path, tilt, sign):
    write_synthetic_study(tmp_path, SyntheticSpec(**SPEC, component_tilt=tilt))
    summary, _ = summarize(tmp_path)
    uniform = summary["decomposition"]["strategies"]["uniform"]
    assert uniform["components"] == ["correctness", "format", "kl"] and uniform["n_runs"] == 3
    assert uniform["decomposed_steps"] == [4, 4, 4]
    test = uniform["format_minus_correctness"]
    assert test["n"] == 3 and sign * test["mean"] > 0 and sign * test["ci_low"] > 0 and sign * test["ci_high"] > 0
    words = [f for f in summary["findings"] if f.startswith("Per-reward decomposition (uniform")]
    assert len(words) == 1
    assert ("consistent with the paper's hypothesis" in words[0]) == (sign > 0)
    assert ("the opposite of the paper's hypothesis" in words[0]) == (sign < 0)


def test_every_paper_statistic_reads_the_total_rows_only(tmp_path):
    write_synthetic_study(tmp_path / "decomposed", SyntheticSpec(**SPEC))
    full, _ = summarize(tmp_path / "decomposed")
    # The same files without the component rows, and without the column at all (a profile written before it).
    stripped = tmp_path / "stripped"
    write_synthetic_study(stripped, SyntheticSpec(**SPEC))
    for path in (stripped / "profiles").glob("*.parquet"):
        table = pq.read_table(path)
        table = table.filter(pc.equal(table["component"], TOTAL))
        pq.write_table(table.drop(["component"]), path)
    old, _ = summarize(stripped)
    assert old["decomposition"] is None
    for key in ("max_min_ratio", "top30_share", "layer_share", "module_share", "temporal_stability"):
        assert full["landscape"][key] == old["landscape"][key], key
    for strategy in ("uniform", "proportional"):
        assert full["strategies"][strategy]["max_min_ratio"] == old["strategies"][strategy]["max_min_ratio"]
        assert full["strategies"][strategy]["rank_shift_corr"] == old["strategies"][strategy]["rank_shift_corr"]


def test_mean_interval_and_cold_layers():
    r = mean_interval([0.1, 0.3])
    assert r.mean == pytest.approx(0.2) and r.ci_low < 0.2 < r.ci_high
    assert math.isnan(mean_interval([0.4]).ci_low) and mean_interval([]).n == 0
    assert cold_layers(np.array([3.0, 1.0, 2.0])) == [1]  # floor(0.3 x 3) = 0, at least one


def test_rounds_chain_in_the_plan_and_the_report(tmp_path, write_study_config):
    study = load_study(write_study_config(grid={"strategies": ["uniform", "proportional", "proportional_r2",
                                                                 "proportional_r3"], "seeds": [0]}))
    depends = {run.strategy: run.depends_on for run in make_plan(study).runs}
    assert depends == {"uniform": None, "proportional": "uniform-seed0", "proportional_r2": "proportional-seed0",
                       "proportional_r3": "proportional_r2-seed0"}
    with pytest.raises(ConfigError, match=r"need layer importance from the proportional run"):
        load_study(write_study_config(grid={"strategies": ["uniform", "proportional_r2"], "seeds": [0]}))

    write_synthetic_study(tmp_path, SyntheticSpec(strategies=("uniform", "proportional", "proportional_r2"),
                                                  seeds=(0, 1), layers=8))
    summary, _ = summarize(tmp_path)
    rounds = summary["rounds"]["rounds"]
    assert [(r["round"], r["strategy"]) for r in rounds] == [(0, "uniform"), (1, "proportional"),
                                                            (2, "proportional_r2")]
    assert rounds[0]["allocation_max_min"] == 1.0 and rounds[1]["allocation_max_min"] > 1.0
    assert all(r["max_min_ratio"] == summary["strategies"][r["strategy"]]["max_min_ratio"] for r in rounds)
    assert any(f.startswith("Re-profiling rounds:") for f in summary["findings"])


def _meta(run_id, strategy, seed, ranks=None):
    return RunMeta(run_id, strategy, seed, ranks=None if ranks is None else np.asarray(ranks))


def test_geometry_summary_on_a_known_table():
    layers, modules = 4, ["q_proj", "v_proj"]
    grad = np.array([1.0, 2.0, 3.0, 4.0])
    rows = []
    for run_id, ranks in (("uniform-seed0", [8, 8, 8, 8]), ("proportional-seed0", [4, 6, 10, 12])):
        for layer in range(layers):
            for module in modules:
                rows.append({"run_id": run_id, "step": 10, "layer": layer, "module": module, "rank": ranks[layer],
                             "update_norm": grad[layer] / 2, "effective_rank": ranks[layer] / 2,
                             "principal_overlap": 0.25})
                rows.append({**rows[-1], "step": 5, "update_norm": 1.0})  # an earlier checkpoint: not used
    runs = {"uniform-seed0": _meta("uniform-seed0", "uniform", 0, [8] * 4),
            "proportional-seed0": _meta("proportional-seed0", "proportional", 0, [4, 6, 10, 12])}
    summary, frame = geometry_summary(pd.DataFrame(rows), {r: grad for r in runs}, runs)
    uniform, proportional = summary.strategies["uniform"], summary.strategies["proportional"]
    assert uniform.update_vs_gradient_r == pytest.approx(1.0)
    assert math.isnan(uniform.update_vs_rank_rho) and proportional.update_vs_rank_rho == pytest.approx(1.0)
    assert uniform.effective_rank_fraction == pytest.approx(0.5) and uniform.principal_overlap == 0.25
    assert len(frame) == 2 * layers and frame["update_share"].sum() == pytest.approx(2.0)


def test_adalora_summary_compares_the_final_pattern_with_proportional():
    rows = []
    for seed, final in ((0, [10, 20, 30, 40]), (1, [12, 18, 35, 35])):
        for step, ranks in ((1, [42, 42, 42, 42]), (8, final)):
            rows += [{"run_id": f"adalora-seed{seed}", "step": step, "layer": layer, "rank": rank}
                     for layer, rank in enumerate(ranks)]
    runs = {f"adalora-seed{s}": _meta(f"adalora-seed{s}", "adalora", s) for s in (0, 1)}
    runs |= {f"proportional-seed{s}": _meta(f"proportional-seed{s}", "proportional", s, [4, 6, 8, 10]) for s in (0, 1)}
    summary, frame = adalora_summary(pd.DataFrame(rows), runs)
    assert summary.per_seed["0"].spearman_vs_proportional == pytest.approx(1.0)
    assert summary.per_seed["0"].total_rank_first_step == 168
    assert summary.per_seed["1"].total_rank_last_step == 100
    assert summary.cross_seed_spearman == pytest.approx(float(pd.Series([10, 20, 30, 40]).corr(
        pd.Series([12, 18, 35, 35]), method="spearman")))
    assert set(frame["seed"]) == {0, 1}
