"""The HTML report: both files written, every figure present, plotly inlined once, model text escaped."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from plotly.offline import get_plotlyjs

from dashboards.report import write_report
from tests.fixtures.synthetic import SyntheticSpec, write_synthetic_study

FIGURE_IDS = ("fig1", "fig2", "amplification", "heatmap", "rewards", "modules", "control")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    spec = SyntheticSpec(seeds=(0, 1), steps=30, layers=6, eval_items=40, sft_steps=10)
    study = write_synthetic_study(tmp_path_factory.mktemp("report") / "study", spec)
    # Model output is untrusted: a completion that tries to run script, and a target with markup.
    path = study / "eval" / "uniform-seed0.parquet"
    table = pq.read_table(path)
    completions = table["completion"].to_pylist()
    correct = table["correct"].to_pylist()
    first_right = correct.index(True)  # the report shows a right and a wrong completion per strategy
    completions[first_right] = "<script>alert('pwned')</script><answer>7</answer>"
    table = table.set_column(table.schema.get_field_index("completion"), "completion", pa.array(completions))
    pq.write_table(table, path)
    return study


@pytest.fixture(scope="module")
def report(study) -> tuple[Path, str, dict]:
    page = write_report(study)
    summary = json.loads((study / "report" / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"summary.json holds {c}, not strict JSON"))
    return page, page.read_text(encoding="utf-8"), summary


def test_writes_summary_and_self_contained_html(study, report):
    page, html, summary = report
    assert page == study / "report" / "index.html"
    assert {"landscape", "strategies", "normalized_control", "sft", "findings", "warnings"} <= set(summary)
    assert set(summary["strategies"]) == {"base", "uniform", "proportional", "random", "reduced"}
    # plotly.js inline exactly once, nothing fetched from the network.
    plotly_js = get_plotlyjs()
    assert html.count(plotly_js) == 1
    page_only = html.replace(plotly_js, "")  # (the bundle itself names a topojson CDN for geo maps, unused)
    assert not re.search(r"<script[^>]+src=", page_only)
    assert "http://" not in page_only and "https://" not in page_only
    for div_id in FIGURE_IDS:
        assert f'id="{div_id}"' in html, div_id
    assert html.count("Plotly.newPlot(") == len(FIGURE_IDS)


def test_table1_and_findings_are_in_the_page(report):
    _, html, summary = report
    uniform = summary["strategies"]["uniform"]
    assert "Table 1" in html
    row = re.search(r"<tr><td>uniform</td>(.*?)</tr>", html).group(1)
    assert f"{100 * uniform['accuracy']:.1f}" in row
    assert f"[{100 * uniform['ci_low']:.1f}, {100 * uniform['ci_high']:.1f}]" in row
    assert summary["findings"] and all(f.replace("'", "&#x27;") in html for f in summary["findings"])
    assert any(f.startswith("proportional:") and "McNemar p =" in f for f in summary["findings"])
    assert "SFT warm-start" in html


def test_model_text_is_escaped(report):
    _, html, _ = report
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert "<script>alert" not in html


def test_report_with_missing_parts_still_writes_everything_else(study, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(study, partial)
    shutil.rmtree(partial / "metrics")
    shutil.rmtree(partial / "report", ignore_errors=True)
    (partial / "profiles" / "sft-seed0.parquet").unlink()
    html = write_report(partial).read_text(encoding="utf-8")
    summary = json.loads((partial / "report" / "summary.json").read_text())
    assert any(w.startswith("metrics:") for w in summary["warnings"])
    assert "Warnings" in html and "metrics:" in html
    assert "No training metrics." in html  # the reward figure says why it is empty
    assert summary["sft"] is None and 'id="fig1"' in html
    assert summary["strategies"]["proportional"]["accuracy"] is not None


def test_study_name_comes_from_study_yaml(tmp_path):
    from dashboards.report import study_name

    (tmp_path / "study.yaml").write_text("config:\n  name: paper-qwen\nversions: {}\n")  # the run stage's layout
    assert study_name(tmp_path) == "paper-qwen"
    (tmp_path / "study.yaml").write_text("name: flat-name\n")
    assert study_name(tmp_path) == "flat-name"
    (tmp_path / "study.yaml").write_text(": not yaml : [")
    assert study_name(tmp_path) == tmp_path.name


def test_every_figure_is_drawn_with_the_white_template_and_plotlys_default_is_left_as_it_was(report):
    import plotly.io as pio

    from dashboards import figures

    _, html, _ = report
    white = json.dumps(pio.templates[figures.TEMPLATE].layout.plot_bgcolor)
    calls = re.findall(r'Plotly\.newPlot\(\s*"([^"]+)",\s*(\[.*?\]),\s*(\{.*?"template":\{.*?\}\}.*?)\)', html)
    assert {c[0] for c in calls} == set(FIGURE_IDS)
    assert all(f'"plot_bgcolor":{white}' in c[2] for c in calls)
    assert pio.templates.default == "plotly"  # the report set it only while it drew
    with figures.report_template():
        assert pio.templates.default == figures.TEMPLATE
    assert pio.templates.default == "plotly"


@pytest.mark.parametrize("spec", [
    SyntheticSpec(seeds=(0, 1), steps=8, layers=4, eval_items=20, sft_steps=4, decompose_every=2),
    SyntheticSpec(seeds=(0,), steps=6, layers=4, eval_items=20, axes={"lora.rank": (16, 32)}),
], ids=["decomposed", "axes"])
def test_summary_json_is_exactly_the_schema(spec, tmp_path):
    # Every key summary.json holds is in the schema (dashboards/analysis/schema.py), and nothing is lost reading it
    # back: a single-cell study's top level and a study with axes alike.
    from dashboards.analysis.schema import StudySummary

    study = write_synthetic_study(tmp_path / "study", spec)
    write_report(study)
    data = json.loads((study / "report" / "summary.json").read_text())
    parsed = StudySummary.from_json(data)
    assert parsed.to_json() == data
    assert bool(parsed.axes) == bool(spec.axes) and len(parsed.cells) == max(1, len(spec.cells()))
    if not spec.axes:
        assert parsed.single.decomposition is not None and parsed.single.decomposition.strategies
        assert list(data)[:10] == ["landscape", "strategies", "normalized_control", "sft", "training", "lora_scaling",
                                   "rounds", "decomposition", "geometry", "adalora"]
    with pytest.raises(ValueError, match=r"key 'surprise' is not in the summary schema"):
        StudySummary.from_json({**data, "surprise": 1})
    cell = data["cells"][0] if spec.axes else data
    with pytest.raises(ValueError, match=r"expected a number, got 'high'"):
        StudySummary.from_json({**data, **({"cells": [{**cell, "landscape": {**cell["landscape"],
                                                                               "max_min_ratio": "high"}}]}
                                           if spec.axes else {"landscape": {**cell["landscape"],
                                                                            "max_min_ratio": "high"}})})
