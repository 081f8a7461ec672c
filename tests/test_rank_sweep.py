"""The rank sweep's answer (issue 21): does uniform accuracy move with lora.rank, per value of the other axes?"""

import math

from dashboards.analysis import summarize
from dashboards.analysis.rank_sweep import rank_sweep_findings, rank_sweeps
from dashboards.analysis.schema import CellSummary, StrategyResult, StudySummary
from tests.fixtures.synthetic import SyntheticSpec, write_synthetic_study


def _cell(rank, scaling, accuracies):
    result = StrategyResult(accuracy_per_seed={str(seed): acc for seed, acc in enumerate(accuracies)})
    return {"lora.rank": rank, "lora.scaling": scaling}, CellSummary(strategies={"uniform": result})


def test_each_scaling_rule_gets_its_own_sweep_and_answer():
    cells = [_cell(1, "fixed_alpha", [0.30, 0.31, 0.29]), _cell(8, "fixed_alpha", [0.50, 0.52, 0.51]),
             _cell(1, "rslora", [0.40, 0.45, 0.35]), _cell(8, "rslora", [0.41, 0.36, 0.44])]
    fixed, rslora = rank_sweeps(cells)
    assert fixed.other_axes == {"lora.scaling": "fixed_alpha"} and fixed.ranks == [1, 8] and fixed.n_seeds == [3, 3]
    assert fixed.flat is False and fixed.p_value < 0.001 and (fixed.df_between, fixed.df_within) == (1, 4)
    assert rslora.flat is True and rslora.p_value > 0.5
    lines = rank_sweep_findings([fixed, rslora])
    assert lines[0].startswith("Rank sweep (lora.scaling=fixed_alpha): uniform accuracy by lora.rank")
    assert "rank 1: 30.0% [" in lines[0] and "Accuracy moves with rank" in lines[0]
    assert "Flat in rank" in lines[1]


def test_one_seed_per_rank_is_not_testable():
    [sweep] = rank_sweeps([_cell(1, "fixed_alpha", [0.3]), _cell(8, "fixed_alpha", [0.5])])
    assert sweep.flat is None and math.isnan(sweep.p_value)
    assert rank_sweep_findings([sweep])[0].endswith("Not testable: a rank needs two seeds or more.")


def test_a_study_with_a_rank_axis_states_the_sweep_first_and_keeps_it_in_summary_json(tmp_path):
    write_synthetic_study(tmp_path, SyntheticSpec(strategies=("uniform", "proportional"), seeds=(0, 1, 2),
                                                  axes={"lora.rank": (4, 8, 16)}))
    summary, _ = summarize(tmp_path)
    [sweep] = summary["rank_sweeps"]
    assert sweep["ranks"] == [4, 8, 16] and sweep["n_seeds"] == [3, 3, 3] and sweep["flat"] in (True, False)
    assert summary["findings"][0].startswith("Rank sweep: uniform accuracy by lora.rank")
    assert StudySummary.from_json(summary).rank_sweeps[0].ranks == [4, 8, 16]
