"""The study report: ``write_report(DIR)`` writes DIR/report/summary.json and one self-contained index.html.

The HTML holds Table 1, Figures 1 and 2, the amplification scatter, the layer x step heatmap, the reward
curves, the module shares, the parameter-count control, the findings in words, any warnings, and a few
evaluated completions per strategy. A study with axes gets the cross-cell figure (accuracy, max/min and
rank-shift r against each axis's values) and then all of the above for each cell. plotly.js is inlined once in the page head, so the file opens offline;
figures are embedded with fixed div ids, so the same study gives the same file.

Everything that comes from the study (model completions, targets, run ids, warnings, the study name) is
HTML-escaped: a completion containing ``<script>`` is shown as text and never runs. The figure data is
serialised by plotly, which escapes ``</`` inside its JSON.

Usage: ``python -m dashboards.report DIR`` (or ``rankstudy analyze DIR``) prints the path of index.html.
"""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from dashboards import figures, figures_beyond
from dashboards.analysis import Analysis, analyze
from dashboards.analysis.beyond_findings import (
    adalora_findings,
    decomposition_findings,
    geometry_findings,
    rounds_findings,
)
from dashboards.analysis.findings import comparison_key
from dashboards.analysis.rank_sweep import rank_sweep_findings
from dashboards.analysis.schema import (
    CellSummary,
    ControlStrategy,
    Landscape,
    NormalizedControl,
    PairedDifference,
    Robustness,
    StrategyResult,
    StudySummary,
)
from dashboards.formatting import DASH, number, p_value, params, percent
from orchestrator.core.contract import StudyPaths, atomic_write_text
from orchestrator.core.lora_scaling import SCALINGS
from orchestrator.core.roles import BASE, REFERENCE
from orchestrator.core.study_yaml import read_study_yaml

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 0 24px 48px; color: #222; }
h1 { margin-bottom: 4px; } .muted { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 5px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f6f8; }
.warnings { background: #fff6e5; border-left: 4px solid #f0a020; padding: 6px 16px; }
.figure { margin: 18px 0 6px; } .caption { font-size: 0.9em; color: #444; margin: 0 0 18px; }
pre { background: #f6f8fa; padding: 8px; white-space: pre-wrap; word-break: break-word; max-height: 220px;
      overflow: auto; font-size: 0.85em; }
"""


def _e(value) -> str:
    """HTML-escape anything shown in the page (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _cell_pct(x) -> str:
    """A share in a table cell: percent without the sign, ``–`` when missing."""
    return percent(x, sign="", missing=DASH)


def _delta(test: PairedDifference | None, not_robust: bool = False) -> str:
    """A difference and its verdict: points, its 95% interval over seeds, the Holm-adjusted p (bold when
    significant), or why it was not tested; "not robust" when a replicate of the study judged it otherwise."""
    if test is None or test.delta is None:
        return DASH
    if test.p_value is None:
        return f"{100 * test.delta:+.1f} ({_e(test.test or 'not testable')})"
    p = p_value(test.p_value, missing=DASH)
    return (f"{100 * test.delta:+.1f} [{_cell_pct(test.ci_low)}, {_cell_pct(test.ci_high)}] "
            + (f"<b>p {p}</b>" if test.significant else f"p {p}") + (" <i>not robust</i>" if not_robust else ""))


def _item_p(test: PairedDifference | None) -> str:
    return DASH if test is None else p_value(test.p_permutation, missing=DASH)


def _interval(low, high) -> str:
    return DASH if low is None else f"[{_cell_pct(low)}, {_cell_pct(high)}]"


def table1_html(strategies: dict[str, StrategyResult], robustness: Robustness | None = None) -> str:
    """Table 1: accuracy with item-level and pooled intervals, paired tests against uniform and base (marked
    when a replicate of the study judged them otherwise), and the landscape's max/min and rank-shift r per
    strategy."""
    flipped = set(robustness.not_robust) if robustness is not None else set()
    head = ("<tr><th>Strategy</th><th>Params</th><th>Acc. (%)</th><th>95% CI (items, bootstrap)</th>"
            "<th>95% CI (Wilson, pooled)</th><th>± (Wald, as printed in the paper)</th><th>n</th><th>Seeds</th>"
            "<th>Format ok (%)</th><th>Δ vs uniform (points) [95% CI over seeds], Holm p</th>"
            "<th>Δ vs base (points) [95% CI over seeds], Holm p</th><th>sign-flip p over items vs uniform / base "
            "(descriptive)</th><th>McNemar p vs uniform (pooled; per seed; descriptive)</th>"
            "<th>max/min share (per seed)</th><th>rank–shift r</th></tr>")
    rows = []
    for name, s in strategies.items():
        wald = DASH if s.wald_half_width is None else f"± {_cell_pct(s.wald_half_width)}"
        ratio = number(s.max_min_ratio, unit="x", missing=DASH)
        seed_range = s.max_min_ratio_seed_range or []
        if len(seed_range) == 2 and seed_range[0] != seed_range[1]:
            ratio += f" ({seed_range[0]:.2f}–{seed_range[1]:.2f})"
        per_seed = ", ".join(p_value(p, missing=DASH) for _, p in sorted((s.mcnemar_per_seed or {}).items()))
        mcnemar = p_value(s.p_value_vs_uniform, missing=DASH) + (f"; {per_seed}" if per_seed else "")
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{params(s.trainable_params)}</td><td>{_cell_pct(s.accuracy)}</td>"
            f"<td>{_interval(s.item_ci_low, s.item_ci_high)}</td><td>{_interval(s.ci_low, s.ci_high)}</td>"
            f"<td>{wald}</td><td>{s.n_eval}</td><td>{len(s.seeds or [])}</td><td>{_cell_pct(s.format_rate)}</td>"
            f"<td>{_delta(s.vs_uniform, comparison_key(name, REFERENCE) in flipped)}</td>"
            f"<td>{_delta(s.vs_base, comparison_key(name, BASE) in flipped)}</td>"
            f"<td>{_item_p(s.vs_uniform)} / {_item_p(s.vs_base)}</td><td>{mcnemar}</td>"
            f"<td>{ratio}</td><td>{number(s.rank_shift_corr, '.3f', missing=DASH)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def control_table_html(control: NormalizedControl | None) -> str:
    """max/min ratio and rank-shift r per strategy under each control, beside the unnormalised values."""
    if control is None:
        return ""
    columns = []
    if control.per_parameter is not None:
        columns.append(("per-parameter", control.per_parameter.strategies))
    for module, part in (control.single_module or {}).items():
        columns.append((f"{module} only", part.strategies))
    if control.weight_gradient is not None:
        columns.append(("frozen-weight gradient", control.weight_gradient.strategies))
    strategies = list(dict.fromkeys(s for _, part in columns for s in part))
    if not strategies:
        return ""
    head = "<tr><th>Strategy</th>" + "".join(f"<th>{_e(c)}: max/min, r</th>" for c, _ in columns) + "</tr>"
    rows = []
    for strategy in strategies:
        cells = []
        for _, part in columns:
            v = part.get(strategy) or ControlStrategy()
            cells.append(f"<td>{number(v.max_min_ratio, unit='x', missing=DASH)}, "
                         f"{number(v.rank_shift_corr, missing=DASH)}</td>")
        rows.append(f"<tr><td>{_e(strategy)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def examples_html(examples) -> str:
    """A few evaluated completions per strategy, escaped (model text is untrusted)."""
    if examples is None or examples.empty:
        return "<p class='muted'>No evaluation results.</p>"
    parts = []
    for row in examples.to_dict("records"):
        verdict = {True: "correct", False: "wrong"}.get(row.get("correct"), "unscored")
        parts.append(f"<h4>{_e(row['strategy'])} · {_e(row['run_id'])} · item {_e(row.get('item'))} · {verdict} "
                     f"(prediction {_e(row.get('prediction'))}, target {_e(row.get('target'))})</h4>"
                     f"<pre>{_e(row.get('completion', ''))}</pre>")
    return "".join(parts)


def _figure_html(fig: go.Figure, div_id: str) -> str:
    # plotly.js is inlined once in <head>; each figure is a div plus its data.
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def study_name(study_dir: Path) -> str:
    """The study's ``name`` in DIR/study.yaml (under ``config``, or at the top level), else the directory name."""
    record = read_study_yaml(StudyPaths(study_dir))
    return (record.name if record is not None else None) or study_dir.resolve().name


def _cell_html(s: CellSummary, frames: dict, prefix: str) -> list[str]:
    """Table 1 and every figure of one cell (``s``: its summary); div ids start with ``prefix``."""
    land = s.landscape or Landscape()
    sft = s.sft
    shares = frames.get("layer_shares")
    empty = pd.DataFrame()
    sections = [
        ("fig1", figures.layer_share_figure(shares if shares is not None else empty, frames.get("sft_shares")),
         "Eq. 2 importance S(l) = mean over steps of the sum over modules of the gradient norm, as a share of the "
         f"total; max/min {number(land.max_min_ratio, unit='x')}, top 30% of layers {percent(land.top30_share)}."
         + (f" SFT: max/min {number(sft.max_min_ratio, unit='x')}, top 30% {percent(sft.top30_share)}."
            if sft is not None else "")),
        ("fig2", figures.normalized_importance_figure(shares if shares is not None else empty),
         "Each strategy's layer shares averaged over its seeds, times the number of layers."),
        ("amplification", figures.amplification_figure(frames.get("amplification", empty)),
         "One point per layer and run: the run's allocated rank against its layer share minus the share of "
         "the uniform run with the same seed. Dashed: least-squares line."),
        ("heatmap", figures.heatmap_figure(frames.get("heatmap", empty)),
         f"Temporal stability (first vs second half, Pearson r across layers): "
         f"{number(land.temporal_stability, '.3f')}."),
        ("rewards", figures.reward_curves_figure(frames.get("rewards", empty)),
         "Per run a trailing rolling mean over ~2% of the steps; line: mean over seeds."),
        ("modules", figures.module_share_figure(frames.get("module_shares", empty)),
         f"Attention {percent(land.attention_share)}, MLP {percent(land.mlp_share)} under uniform."),
        ("control", figures.control_figure(frames.get("control_shares", empty)),
         "Left: every norm divided by sqrt(number of LoRA parameters of its module in that layer). Right: one "
         "module alone, whose base weight has the same shape in every layer. Table: max/min and rank–shift r "
         "per strategy under each control."),
    ]
    body = ["<h2>Table 1. Accuracy by allocation strategy</h2>" + table1_html(s.strategies, s.robustness) +
            "<p class='caption'>Accuracy pooled over the strategy's runs, with a 95% percentile bootstrap "
            "interval over items (each item's correctness averaged over seeds). The differences to uniform and "
            "to the untrained base model are judged with the run as the unit: a t-test over seeds on each run's "
            "accuracy, with the run-to-run variance pooled over the cell's strategies, its 95% interval over "
            "seeds, and p adjusted by Holm's method over every comparison of the cell (bold: significant at "
            "0.05). A comparison with one seed is not tested. Descriptive only, because they hold the runs "
            "fixed: the paired sign-flip test over items and, as in the paper, the 95% Wilson interval on the "
            "pooled counts and the exact McNemar test on (seed, item) pairs against uniform, pooled and per "
            "seed. The paper's Table 1 labels its ± column Wilson, but its numbers are the Wald half-widths "
            "shown beside. max/min: seed-averaged shares, each seed's "
            f"own range in brackets. {_e(_scaling_caption(s.lora_scaling))}</p>"]
    for div_id, fig, caption in sections:
        body.append(f"<div class='figure'>{_figure_html(fig, prefix + div_id)}</div>"
                    f"<p class='caption'>{_e(caption)}</p>")
        if div_id == "control":
            body.append(control_table_html(s.normalized_control))
    body += _beyond_html(s, frames, prefix)
    body.append("<h2>Evaluation examples</h2>" + examples_html(frames.get("examples")))
    return body


def _beyond_html(s: CellSummary, frames: dict, prefix: str) -> list[str]:
    """The beyond-the-paper sections, each only when the study measured it."""
    parts = [
        ("adalora", s.adalora, lambda: figures_beyond.rank_steps_figure(frames.get("rank_steps")),
         adalora_findings,
         "PEFT's AdaLoRA, update_and_allocate after every optimizer step; the final total rank equals uniform's "
         "budget. Its accuracy and paired tests are in Table 1."),
        ("rounds", s.rounds, lambda: figures_beyond.rounds_figure(s.rounds), rounds_findings,
         "Round 0 is where the first allocation's profile came from (allocation.profile_from, named in the table); "
         "round k allocates by Eq. 3 from round k-1's profile, same budget, same seed."),
        ("decomposition", s.decomposition,
         lambda: figures_beyond.component_share_figure(frames.get("component_shares")), decomposition_findings,
         "Each component's S_c(l) (Eq. 2 over the decomposed steps) as a share of its total. The components sum "
         "exactly to the gradient the optimizer used (workers/decompose.py): one per reward, and the KL term."),
        ("geometry", s.geometry, lambda: figures_beyond.geometry_figure(frames.get("geometry")),
         geometry_findings,
         "At each run's last measured step. Update share: the layer's sum over modules of ||dW||_F = "
         "||s B A||_F as a share of the run's. Overlap: the share of ||dW||_F^2 inside the span of the frozen "
         "weight's top-k singular vectors (profile.geometry_top_k)."),
    ]
    body = []
    for div_id, part, figure, words, caption in parts:
        if part is None:
            continue
        lines = "".join(f"<li>{_e(line)}</li>" for line in words(part))
        body.append(f"<h2>Beyond the paper: {div_id}</h2><ul>{lines}</ul>"
                    f"<div class='figure'>{_figure_html(figure(), prefix + div_id)}</div>"
                    f"<p class='caption'>{_e(caption)}</p>")
    return body


def _scaling_caption(scaling) -> str:
    """The LoRA scaling convention the runs used, in words (orchestrator.core.lora_scaling)."""
    if not scaling:
        return ""
    if isinstance(scaling, list):
        return f"LoRA scaling: mixed ({', '.join(scaling)}) in this cell."
    return f"LoRA scaling: {scaling} ({SCALINGS.get(scaling, 'unknown convention')})."


def _comparison_html(paragraphs: list[str] | None) -> str:
    """The paper's findings, one paragraph each, against this study's numbers (generated from them)."""
    if not paragraphs:
        return ""
    return "<h2>What this study shows of the paper's findings</h2>" + "".join(f"<p>{_e(p)}</p>" for p in paragraphs)


def cross_cell_points(summary: StudySummary) -> pd.DataFrame:
    """One row per (cell, strategy) of a study with axes: the axis values and the cross-cell figure's numbers."""
    rows = []
    for cell in summary.cells if summary.axes else []:
        label = ", ".join(f"{k}={v}" for k, v in cell.axes.items())
        for strategy, entry in cell.strategies.items():
            rows.append({**cell.axes, "cell": label, "strategy": strategy, "accuracy": entry.accuracy,
                         "max_min_ratio": entry.max_min_ratio, "rank_shift_corr": entry.rank_shift_corr,
                         "ci_low": entry.item_ci_low, "ci_high": entry.item_ci_high})
    return pd.DataFrame(rows)


def render_html(analysis: Analysis, name: str) -> str:
    """The whole page as a string."""
    with figures.report_template():
        return _render_html(analysis, name)


def _render_html(analysis: Analysis, name: str) -> str:
    s = analysis.summary
    body = [f"<h1>{_e(name)}</h1><p class='muted'>Study directory {_e(s.study_dir)} · "
            "<a href='summary.json'>summary.json</a></p>"]
    if analysis.warnings:
        body.append("<div class='warnings'><h3>Warnings (missing parts; everything else is reported)</h3><ul>"
                    + "".join(f"<li>{_e(w)}</li>" for w in analysis.warnings) + "</ul></div>")
    if not s.axes:
        body.append(_comparison_html(s.cells[0].paper_comparison))
    body.append("<h2>Findings</h2><ul>" + "".join(f"<li>{_e(f)}</li>" for f in s.findings) + "</ul>")
    if s.axes:
        fig = figures.cross_cell_figure(cross_cell_points(s), s.axes)
        body.append(f"<h2>Across cells ({len(analysis.cells)} cells of {_e(', '.join(s.axes))})</h2>"
                    f"<div class='figure'>{_figure_html(fig, 'cross-cell')}</div><p class='caption'>"
                    "Each point is one strategy in one cell: accuracy with its 95% interval over items, the max/min "
                    "ratio of its layer shares, and the correlation between allocated rank and share shift "
                    "against uniform (the amplification).</p>")
        body += [f"<p><b>{_e(line)}</b></p>" for line in rank_sweep_findings(s.rank_sweeps)]
        for i, cell in enumerate(analysis.cells):
            body.append(f"<h2 class='cell'>Cell {i}: {_e(cell.label())}</h2>")
            body.append(_comparison_html(cell.summary.paper_comparison))
            body += _cell_html(cell.summary, cell.frames, f"c{i}-")
    else:
        body += _cell_html(s.cells[0], analysis.frames, "")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(name)} · rankstudy report</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>"
            + "\n".join(body) + "</body></html>")


def write_report(study_dir: Path, echo: Callable[[str], None] | None = None, replicates: Sequence[Path] = ()
                 ) -> Path:
    """Analyse DIR (its verdicts checked against ``replicates``: the same study run elsewhere), write
    DIR/report/summary.json and DIR/report/index.html; return the HTML path.

    Both files are written atomically; each warning (a missing or unusable part of the study) also goes to
    ``echo`` as one line, so the console says what the report could not show.
    """
    study_dir = Path(study_dir)
    analysis = analyze(study_dir, replicates)
    for warning in analysis.warnings:
        if echo is not None:
            echo(f"warning: {warning}")
    out = StudyPaths(study_dir).report_dir
    atomic_write_text(out / "summary.json", json.dumps(analysis.summary.to_json(), indent=1, allow_nan=False))
    page = out / "index.html"
    atomic_write_text(page, render_html(analysis, study_name(study_dir)))
    return page


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1])))
