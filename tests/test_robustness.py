"""Verdicts checked against a replicate of the study (the same study on another machine or kernel setting)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dashboards.analysis import analyze
from dashboards.report import write_report
from orchestrator.core.errors import StudyError
from tests.fixtures.synthetic import SyntheticSpec, write_synthetic_study

REPO = Path(__file__).resolve().parents[1]
OTHER_CPU = {"model": "AMD EPYC 7B13", "capability": "AVX2", "aten_cpu_capability": None, "threads": 1}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    spec = SyntheticSpec(seeds=(0, 1, 2), steps=6, layers=4, modules=("q_proj", "v_proj"), eval_items=200)
    return write_synthetic_study(tmp_path_factory.mktemp("robust") / "here", spec)


def replicate_of(study: Path, where: Path, wrong: str | None = None) -> Path:
    """A copy of ``study`` made "on another machine": its run.json files name another CPU, and with ``wrong``
    every answer of that strategy's runs is wrong (the numbers differ enough to flip its verdicts)."""
    shutil.copytree(study, where)
    for path in (where / "runs").glob("*/run.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "cpu": OTHER_CPU}))
    if wrong is not None:
        for path in (where / "eval").glob(f"{wrong}-seed*.parquet"):
            table = pd.read_parquet(path)
            table["correct"] = False
            table.to_parquet(path)
    return where


def test_a_replicate_that_agrees_marks_nothing_and_says_every_verdict_held(study, tmp_path):
    cell = analyze(study, [replicate_of(study, tmp_path / "same")]).summary.single
    assert cell.robustness.not_robust == []
    assert [r.label for r in cell.robustness.replicates] == ["same"]
    assert cell.robustness.verdicts["proportional vs uniform"] == {"here": "no difference", "same": "no difference"}
    assert cell.findings[0].startswith(f"Robustness across machines: all {len(cell.robustness.verdicts)} verdicts")
    assert not any("Not robust" in line for line in cell.findings)
    # Without replicates nothing is said about robustness at all.
    plain = analyze(study).summary.single
    assert plain.robustness is None and not any("Robustness" in line for line in plain.findings)


def test_a_verdict_that_flips_on_the_replicate_is_marked_not_robust_where_it_is_stated(study, tmp_path):
    other = replicate_of(study, tmp_path / "epyc", wrong="random")
    page = write_report(study, replicates=[other]).read_text(encoding="utf-8")
    summary = json.loads((study / "report" / "summary.json").read_text())
    robustness = summary["robustness"]
    assert "random vs uniform" in robustness["not_robust"] and "random vs base" in robustness["not_robust"]
    assert robustness["verdicts"]["random vs uniform"] == {"here": "no difference", "epyc": "lower"}
    assert "proportional vs uniform" not in robustness["not_robust"]
    assert robustness["replicates"][0]["cpu"] == OTHER_CPU
    sentence = next(f for f in summary["findings"] if f.startswith("random:"))
    assert sentence.endswith("Not robust: lower on epyc (AMD EPYC 7B13, AVX2 kernels).")
    assert not any("Not robust" in f for f in summary["findings"] if f.startswith("proportional:"))
    accuracy = next(p for p in summary["paper_comparison"] if p.startswith("Accuracy."))
    assert "Not robust: random vs uniform lower" in accuracy
    assert page.count("<i>not robust</i>") == 2  # Table 1: random's two verdicts
    write_report(study)  # leave the module's study as it was for the other tests


def test_a_replicate_of_another_study_or_no_study_is_refused_before_any_analysis(study, tmp_path):
    other = replicate_of(study, tmp_path / "other")
    text = (other / "study.yaml").read_text()
    (other / "study.yaml").write_text(text + 'config: {"grpo": {"max_steps": 99}}\n')
    with pytest.raises(StudyError, match=r"another study, not a replicate \(grpo: None vs \{'max_steps': 99\}\)"):
        analyze(study, [other])
    with pytest.raises(StudyError, match="not a study directory"):
        analyze(study, [tmp_path / "missing"])
    with pytest.raises(StudyError, match="the study itself"):
        analyze(study, [study])


def test_the_cli_checks_verdicts_against_replicates(study, tmp_path):
    other = replicate_of(study, tmp_path / "epyc", wrong="random")
    out = subprocess.run([sys.executable, "-m", "orchestrator", "analyze", str(study), "--replicate", str(other)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    summary = json.loads((study / "report" / "summary.json").read_text())
    assert summary["robustness"]["replicates"][0]["study_dir"] == str(other)
    bad = subprocess.run([sys.executable, "-m", "orchestrator", "analyze", str(study), "--replicate",
                          str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "not a study directory" in bad.stderr
    write_report(study)
