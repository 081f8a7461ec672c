"""The report's figures: one pure function per figure, pandas DataFrame in, plotly Figure out.

The input tables are those of :class:`dashboards.analysis.CellAnalysis.frames` (long format, shares as
fractions); every function copes with an empty table (an empty figure saying so). Colours are fixed per
strategy so a strategy looks the same in every figure. Usage::

    analysis = analyze(study_dir)
    fig = layer_share_figure(analysis.frames["layer_shares"], analysis.frames.get("sft_shares"))

The figures take plotly's default template; the report builds and serialises them inside
:func:`report_template` (plotly_white).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from dashboards.style import strategy_color
from orchestrator.core.projections import module_group
from orchestrator.core.roles import REFERENCE, SFT

TEMPLATE = "plotly_white"


@contextlib.contextmanager
def report_template() -> Iterator[None]:
    """Figures built and serialised inside take ``TEMPLATE`` as plotly's default template.

    Why not ``template=`` on each figure: plotly then validates and deep-copies the whole template for every
    figure (~30 ms each, over a second for a 5-cell report's 36 figures); as the default it is applied when a
    figure is serialised, and every figure's data and layout are the same as before (compared after parsing a
    report's JSON; only the key order inside the template differs). The previous default is restored.
    """
    previous = pio.templates.default
    pio.templates.default = TEMPLATE
    try:
        yield
    finally:
        pio.templates.default = previous


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="h", y=-0.18))
    return fig


def _empty(title: str, why: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=220)


def _seed_spread(shares: pd.DataFrame) -> pd.DataFrame:
    """Per (strategy, layer): mean, min and max share over runs, in percent."""
    return (shares.groupby(["strategy", "layer"])["share"].agg(["mean", "min", "max", "count"]) * [100, 100, 100, 1]
            ).reset_index()


def layer_share_figure(shares: pd.DataFrame, sft_shares: pd.DataFrame | None = None) -> go.Figure:
    """Figure 1: per-layer gradient share under uniform (bars: mean over seeds, whiskers: min-max),
    with the SFT landscape beside it when there is one."""
    title = "Figure 1. Per-layer gradient share (Eq. 2) under uniform allocation"
    uniform = shares[shares["strategy"] == REFERENCE] if not shares.empty else shares
    if uniform.empty:
        return _empty(title, "No uniform run has a usable profile (see the warnings).")
    panels = [("GRPO, uniform", uniform)]
    if sft_shares is not None and not sft_shares.empty:
        panels.append(("SFT warm-start", sft_shares.assign(strategy=SFT)))
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=[p[0] for p in panels])
    for col, (name, frame) in enumerate(panels, start=1):
        spread = _seed_spread(frame)
        n_runs = frame["run_id"].nunique()
        fig.add_bar(x=spread["layer"], y=spread["mean"], name=f"{name} ({n_runs} run{'s' * (n_runs != 1)})",
                    marker_color=strategy_color(frame["strategy"].iloc[0]),
                    error_y=dict(type="data", symmetric=False, array=spread["max"] - spread["mean"],
                                 arrayminus=spread["mean"] - spread["min"], thickness=1),
                    row=1, col=col)
        fig.add_hline(y=100 / spread["layer"].nunique(), line_dash="dot", line_color="grey", row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_yaxes(title_text="share of gradient (%)", row=1, col=1)
    return _layout(fig, title + (" and SFT" if len(panels) > 1 else "") + " (dotted: flat 1/L; whiskers: seed min-max)")


def normalized_importance_figure(shares: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Figure 2: normalised layer importance (share x L, 1 = flat), uniform vs each other strategy."""
    title = title or "Figure 2. Normalised layer importance (share x L; 1 = flat), mean over seeds"
    if shares.empty:
        return _empty(title, "No usable profiles to compare (see the warnings).")
    fig = go.Figure()
    for strategy, frame in shares.groupby("strategy", sort=False):
        n_layers = frame["layer"].nunique()
        mean = frame.groupby("layer")["share"].mean() * n_layers
        ratio = mean.max() / mean.min() if mean.min() > 0 else np.inf
        fig.add_scatter(x=mean.index, y=mean.values, mode="lines+markers", name=f"{strategy} (max/min {ratio:.2f}x)",
                        line=dict(color=strategy_color(strategy), width=3 if strategy == REFERENCE else 2))
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="normalised importance")
    return _layout(fig, title)


def amplification_figure(amplification: pd.DataFrame) -> go.Figure:
    """Allocated rank vs the shift of the layer's share against the uniform run of the same seed."""
    title = "Amplification: allocated rank vs share shift against uniform (same seed)"
    if amplification.empty:
        return _empty(title, "No non-uniform run with a uniform partner of the same seed.")
    fig = go.Figure()
    for strategy, frame in amplification.groupby("strategy", sort=False):
        r = frame.groupby("run_id").apply(lambda g: np.corrcoef(g["rank"], g["shift"])[0, 1]
                                          if g["rank"].nunique() > 1 else np.nan, include_groups=False).mean()
        color = strategy_color(strategy)
        fig.add_scatter(x=frame["rank"], y=frame["shift"] * 100, mode="markers", name=f"{strategy} (r = {r:.2f})",
                        marker=dict(color=color, size=7, opacity=0.6),
                        customdata=np.stack([frame["layer"], frame["seed"]], axis=1),
                        hovertemplate="layer %{customdata[0]}, seed %{customdata[1]}<br>rank %{x}<br>"
                                      "shift %{y:.2f} points<extra></extra>")
        if frame["rank"].nunique() > 1:
            slope, intercept = np.polyfit(frame["rank"], frame["shift"] * 100, 1)
            xs = np.array([frame["rank"].min(), frame["rank"].max()])
            fig.add_scatter(x=xs, y=slope * xs + intercept, mode="lines", line=dict(color=color, dash="dash"),
                            showlegend=False, hoverinfo="skip")
    fig.add_hline(y=0.0, line_color="grey", line_width=1)
    fig.update_xaxes(title_text="allocated rank of the layer")
    fig.update_yaxes(title_text="share - uniform share (points)")
    return _layout(fig, title + " (r: Pearson across layers, mean over seeds)")


def heatmap_figure(matrix: pd.DataFrame) -> go.Figure:
    """Layer x step heatmap: each step's layer shares under uniform (mean over seeds, steps binned)."""
    title = "Layer x step: each step's gradient share per layer under uniform (mean over seeds)"
    if matrix is None or matrix.empty:
        return _empty(title, "No usable uniform profile (see the warnings).")
    fig = go.Figure(go.Heatmap(z=matrix.values * 100, x=list(matrix.columns), y=list(matrix.index),
                               colorscale="Viridis", colorbar=dict(title="%"),
                               hovertemplate="step %{x}<br>layer %{y}<br>%{z:.2f}%<extra></extra>"))
    fig.update_xaxes(title_text="training step (first step of each bin)")
    fig.update_yaxes(title_text="layer")
    return _layout(fig, title, height=460)


def reward_curves_figure(rewards: pd.DataFrame) -> go.Figure:
    """Training reward per strategy: mean over seeds (line) and min-max band, one panel per metric."""
    title = "Training reward per strategy (smoothed; band: min-max over seeds)"
    if rewards.empty:
        return _empty(title, "No training metrics.")
    metrics = list(dict.fromkeys(rewards["metric"]))
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics)
    for col, metric in enumerate(metrics, start=1):
        for strategy, frame in rewards[rewards["metric"] == metric].groupby("strategy", sort=False):
            color = strategy_color(strategy)
            fig.add_scatter(x=pd.concat([frame["step"], frame["step"][::-1]]),
                            y=pd.concat([frame["high"], frame["low"][::-1]]), fill="toself",
                            fillcolor=_rgba(color, 0.15), line=dict(width=0), hoverinfo="skip", showlegend=False,
                            legendgroup=strategy, row=1, col=col)
            fig.add_scatter(x=frame["step"], y=frame["mean"], mode="lines", name=strategy, line=dict(color=color),
                            legendgroup=strategy, showlegend=col == 1, row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    return _layout(fig, title)


def module_share_figure(module_shares: pd.DataFrame) -> go.Figure:
    """Share of gradient per projection module, per strategy (mean over runs, whiskers min-max)."""
    title = "Module shares of the gradient (sum over steps and layers)"
    if module_shares.empty or module_shares["share"].isna().all():
        return _empty(title, "No usable profiles (see the warnings).")
    fig = go.Figure()
    for strategy, frame in module_shares.groupby("strategy", sort=False):
        agg = frame.groupby("module", sort=False)["share"].agg(["mean", "min", "max"]) * 100
        fig.add_bar(x=agg.index, y=agg["mean"], name=strategy, marker_color=strategy_color(strategy),
                    error_y=dict(type="data", symmetric=False, array=agg["max"] - agg["mean"],
                                 arrayminus=agg["mean"] - agg["min"], thickness=1))
    modules = list(dict.fromkeys(module_shares["module"]))
    n_attention = sum(module_group(m) == "attention" for m in modules)
    if 0 < n_attention < len(modules):
        fig.add_vline(x=n_attention - 0.5, line_dash="dot", line_color="grey")
        fig.add_annotation(x=(n_attention - 1) / 2, y=1.05, yref="paper", text="attention", showarrow=False)
        fig.add_annotation(x=(n_attention + len(modules) - 1) / 2, y=1.05, yref="paper", text="MLP",
                           showarrow=False)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="share of gradient (%)")
    return _layout(fig, title)


def control_figure(control_shares: pd.DataFrame) -> go.Figure:
    """The parameter-count control: normalised layer importance per strategy with norms per parameter
    (left) and for one module of identical shape in every layer (right), as the table's ``control`` says."""
    title = "Control: is the amplification a parameter-counting artifact?"
    if control_shares.empty:
        return _empty(title, "No control available (see warnings).")
    wanted = list(dict.fromkeys(control_shares["control"]))
    fig = make_subplots(rows=1, cols=len(wanted), shared_yaxes=True,
                        subplot_titles=[c.replace("normalised", "normalised (norm / sqrt(params))") for c in wanted])
    for col, control in enumerate(wanted, start=1):
        frame = control_shares[control_shares["control"] == control]
        for strategy, group in frame.groupby("strategy", sort=False):
            n_layers = group["layer"].nunique()
            mean = group.groupby("layer")["share"].mean() * n_layers
            fig.add_scatter(x=mean.index, y=mean.values, mode="lines", name=strategy, legendgroup=strategy,
                            showlegend=col == 1, line=dict(color=strategy_color(strategy)), row=1, col=col)
        fig.add_hline(y=1.0, line_dash="dot", line_color="grey", row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_yaxes(title_text="normalised importance (share x L)", row=1, col=1)
    return _layout(fig, title)


def cross_cell_figure(points: pd.DataFrame, axes: list[str]) -> go.Figure:
    """Across the cells of a study: accuracy (95% interval over items), max/min layer share and rank-shift r per
    strategy, against each axis's values (one row of panels per axis; a point per cell).

    ``points`` has one row per (cell, strategy): the axis values (one column per axis key), ``cell``,
    ``strategy``, ``accuracy``, ``ci_low``, ``ci_high``, ``max_min_ratio``, ``rank_shift_corr``.
    """
    title = "Across cells: accuracy, landscape spread and amplification against each axis"
    if points.empty or not axes:
        return _empty(title, "The study has no axes, or no cell has results.")
    metrics = [("accuracy", "accuracy (%)"), ("max_min_ratio", "max/min layer share"),
               ("rank_shift_corr", "rank-shift r")]
    fig = make_subplots(rows=len(axes), cols=len(metrics), horizontal_spacing=0.07,
                        vertical_spacing=min(0.25, 0.6 / len(axes)),
                        subplot_titles=[f"{label} vs {axis}" for axis in axes for _, label in metrics])
    for row, axis in enumerate(axes, start=1):
        for strategy, frame in points.groupby("strategy", sort=False):
            x = frame[axis].map(str)
            for col, (metric, label) in enumerate(metrics, start=1):
                y = frame[metric].astype(float)
                error = None
                if metric == "accuracy":
                    error = dict(type="data", symmetric=False, thickness=1,
                                 array=(frame["ci_high"].astype(float) - y) * 100,
                                 arrayminus=(y - frame["ci_low"].astype(float)) * 100)
                    y = y * 100
                fig.add_scatter(x=x, y=y, mode="markers+lines" if len(axes) == 1 else "markers", name=strategy,
                                legendgroup=strategy, showlegend=row == 1 and col == 1, error_y=error,
                                marker=dict(color=strategy_color(strategy), size=9),
                                line=dict(color=strategy_color(strategy)), text=frame["cell"],
                                hovertemplate="%{text}<br>" + label + " %{y:.3g}<extra>" + strategy + "</extra>",
                                row=row, col=col)
                fig.update_xaxes(title_text=axis, type="category", row=row, col=col)
    return _layout(fig, title, height=360 * len(axes) + 60)
