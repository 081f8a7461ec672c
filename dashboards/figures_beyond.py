"""Figures of the beyond-the-paper measurements (dashboards/analysis/beyond.py): pure, DataFrame in, Figure out.

Same conventions as :mod:`dashboards.figures` (fixed strategy colours, an empty figure that says why).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.analysis.schema import Rounds
from dashboards.figures import _empty, _layout
from dashboards.style import strategy_color

COMPONENT_DASH = {"format": "solid", "correctness": "dash", "kl": "dot"}


def component_share_figure(shares: pd.DataFrame) -> go.Figure:
    """Each layer's share of each gradient component (mean over seeds), one panel per strategy."""
    title = "Per-reward gradient decomposition: each layer's share of each component"
    if shares is None or shares.empty:
        return _empty(title, "no decomposed step (profile.decompose_every: 0)")
    strategies = list(dict.fromkeys(shares["strategy"]))
    fig = make_subplots(rows=1, cols=len(strategies), subplot_titles=strategies, shared_yaxes=True)
    mean = shares.groupby(["strategy", "component", "layer"])["share"].mean().reset_index()
    for col, strategy in enumerate(strategies, start=1):
        for component, part in mean[mean["strategy"] == strategy].groupby("component", sort=False):
            fig.add_trace(go.Scatter(x=part["layer"], y=100 * part["share"], mode="lines+markers",
                                     name=f"{strategy}: {component}", legendgroup=str(component),
                                     line=dict(color=strategy_color(strategy),
                                               dash=COMPONENT_DASH.get(str(component), "dashdot"))),
                          row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_yaxes(title_text="share of the component's gradient (%)", row=1, col=1)
    return _layout(fig, title)


def rounds_figure(rounds: Rounds | None) -> go.Figure:
    """Left: max/min ratio of each round's own profile, per seed. Right: each round's allocation (seed-averaged)."""
    title = "Re-profiling rounds: the landscape and the allocation over rounds"
    if rounds is None:
        return _empty(title, "no round beyond the first (add proportional_r2 to grid.strategies)")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("max/min ratio of the round's profile", "allocated rank"))
    seeds = sorted({s for r in rounds.rounds for s in r.max_min_ratio_per_seed})
    for seed in seeds:
        points = [(r.round, r.max_min_ratio_per_seed[seed]) for r in rounds.rounds if seed in r.max_min_ratio_per_seed]
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                 name=f"seed {seed}", line=dict(color="#555")), row=1, col=1)
    for r in rounds.rounds:
        allocations = list(r.allocation_per_seed.values())
        if not allocations:
            continue
        mean = pd.DataFrame(allocations).mean(axis=0)
        fig.add_trace(go.Scatter(x=list(range(len(mean))), y=mean, mode="lines+markers",
                                 name=f"round {r.round}: {r.strategy}",
                                 line=dict(color=strategy_color(r.strategy))), row=1, col=2)
    fig.update_xaxes(title_text="round", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    return _layout(fig, title)


def geometry_figure(geometry: pd.DataFrame) -> go.Figure:
    """One point per layer and run: the layer's share of the update against its share of the gradient."""
    title = "Where the update goes: update share ||dW||_F against gradient share S(l), per layer"
    if geometry is None or geometry.empty:
        return _empty(title, "no geometry table (profile.geometry: false)")
    fig = go.Figure()
    for strategy, part in geometry.groupby("strategy", sort=False):
        fig.add_trace(go.Scatter(x=100 * part["grad_share"], y=100 * part["update_share"], mode="markers",
                                 name=str(strategy), marker=dict(color=strategy_color(str(strategy)), size=7),
                                 text=[f"{r} layer {layer} rank {rank:g}" for r, layer, rank
                                       in zip(part["run_id"], part["layer"], part["rank"], strict=True)]))
    fig.update_xaxes(title_text="gradient share S(l) (%)")
    fig.update_yaxes(title_text="update share (%)")
    return _layout(fig, title)


def rank_steps_figure(rank_steps: pd.DataFrame) -> go.Figure:
    """AdaLoRA: each layer's total rank (over modules) at each step, one line per layer, first seed shown."""
    title = "AdaLoRA: each layer's rank over the steps (sum over modules)"
    if rank_steps is None or rank_steps.empty:
        return _empty(title, "no adalora run")
    seed = sorted(rank_steps["seed"].dropna().unique())[0]
    part = rank_steps[rank_steps["seed"] == seed]
    fig = go.Figure()
    for layer, rows in part.groupby("layer"):
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["rank"], mode="lines", name=f"layer {layer}"))
    fig.update_xaxes(title_text=f"optimizer step (seed {seed})")
    fig.update_yaxes(title_text="rank, summed over modules")
    return _layout(fig, title)
