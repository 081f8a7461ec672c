"""The analysis of one cell of a study: the runs of one combination of axis values (all runs without axes).

``analyze_cell`` takes the cell's runs, its rows of the eval and metrics tables and its rows of the
aggregated profiles, and returns its :class:`~dashboards.analysis.schema.CellSummary` (landscape, strategies,
controls, SFT, training and the beyond-the-paper parts), the figure tables and the warnings. The reference
strategy (:data:`orchestrator.core.roles.REFERENCE`, ``uniform``) is what the landscape describes and what every
other strategy is compared with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dashboards.analysis import stats as st
from dashboards.analysis.aggregate import ProfileAggregates
from dashboards.analysis.beyond import adalora_summary, decomposition_summary, geometry_summary, rounds_summary
from dashboards.analysis.profiles import (
    ImportanceStats,
    RunMeta,
    StrategyProfile,
    importance_stats,
    module_shares,
    per_parameter_importance,
    step_share_matrix,
    temporal_stability,
)
from dashboards.analysis.schema import (
    CellSummary,
    ControlStrategy,
    Landscape,
    LayerLandscape,
    NormalizedControl,
    PerParameterControl,
    SFTLandscape,
    SingleModuleControl,
    StrategyResult,
    WeightGradientControl,
    shallow,
)
from dashboards.analysis.training import eval_examples, reward_curves, strategy_eval, training_summary
from dashboards.style import order_strategies
from orchestrator.core.importance import layer_importance
from orchestrator.core.roles import REFERENCE, SFT


@dataclass
class CellResult:
    """One cell's summary, figure tables and warnings (profile warnings, table warnings)."""

    summary: CellSummary
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    profile_warnings: list[str] = field(default_factory=list)
    table_warnings: list[str] = field(default_factory=list)


def analyze_cell(study_dir: Path, runs: dict[str, RunMeta], eval_df: pd.DataFrame | None,
                 metrics_df: pd.DataFrame | None, prof: ProfileAggregates | None,
                 components: pd.DataFrame | None = None, geometry: pd.DataFrame | None = None,
                 rank_steps: pd.DataFrame | None = None) -> CellResult:
    """The cell's summary. Every table holds the cell's rows only; ``components`` (decomposed profile rows),
    ``geometry`` and ``rank_steps`` (the ranks per step of runs whose ranks change) are optional."""
    result = CellResult(summary=CellSummary())
    summary = result.summary
    eval_stats = _table_analysis(study_dir, eval_df, metrics_df, runs, result)
    profile_strategies: dict[str, StrategyProfile] = {}
    importance: dict[str, np.ndarray] = {}  # S(l) per run: the beyond-the-paper parts read it too
    if prof is not None:
        profile_strategies, importance = _profile_analysis(prof, runs, result)
    else:
        result.profile_warnings.append("profiles: no usable profile; landscape, amplification, heatmap and "
                                       "controls are skipped")
    summary.strategies = _strategy_entries(runs, eval_stats, profile_strategies)
    weight = summary.normalized_control.weight_gradient if summary.normalized_control else None
    summary.rounds = rounds_summary(summary.strategies, runs, weight.strategies if weight else None)
    summary.decomposition, result.frames["component_shares"] = decomposition_summary(components, importance, runs)
    summary.geometry, result.frames["geometry"] = geometry_summary(geometry, importance, runs)
    summary.adalora, result.frames["rank_steps"] = adalora_summary(rank_steps, runs)
    scalings = sorted({m.lora_scaling for m in runs.values() if m.lora_scaling})
    summary.lora_scaling = scalings[0] if len(scalings) == 1 else (scalings or None)
    _order_figure_tables(result.frames, [*summary.strategies, SFT])
    return result


def _order_figure_tables(frames: dict[str, pd.DataFrame], order: list[str]) -> None:
    """Figures draw strategies in Table 1's order (the dashboards' style order)."""
    rank = {name: i for i, name in enumerate(order)}
    for key, frame in frames.items():
        if "strategy" in frame.columns and not frame.empty:
            codes, uniques = pd.factorize(frame["strategy"])
            positions = np.argsort(np.array([rank.get(u, len(rank)) for u in uniques])[codes], kind="stable")
            frames[key] = frame.take(positions).reset_index(drop=True)


def _strategy_entries(runs: dict[str, RunMeta], eval_stats: dict[str, dict],
                      profile_strategies: dict[str, StrategyProfile]) -> dict[str, StrategyResult]:
    grpo_runs = {rid: m for rid, m in runs.items() if m.strategy != SFT}
    strategies = {}
    for strategy in order_strategies(m.strategy for m in grpo_runs.values()):
        ids = [rid for rid, m in grpo_runs.items() if m.strategy == strategy]
        params = [grpo_runs[r].trainable_params for r in ids if grpo_runs[r].trainable_params is not None]
        profile = profile_strategies.get(strategy)
        entry = StrategyResult(**{"accuracy": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                                  "max_min_ratio": math.nan, **eval_stats.get(strategy, {})})
        entry.n_runs, entry.seeds = len(ids), sorted({grpo_runs[r].seed for r in ids if grpo_runs[r].seed is not None})
        entry.trainable_params = int(round(np.mean(params))) if params else None
        if profile is not None:
            entry.max_min_ratio, entry.layer_share = profile.max_min_ratio, profile.layer_share
            entry.max_min_ratio_per_seed = profile.max_min_ratio_per_seed
            entry.max_min_ratio_seed_range = profile.max_min_ratio_seed_range
            entry.rank_shift_corr_per_run = profile.rank_shift_corr_per_run
            entry.rank_shift_corr = profile.rank_shift_corr if strategy != REFERENCE else None
        if strategy != REFERENCE and entry.p_value_vs_uniform is None:
            entry.p_value_vs_uniform = math.nan  # compared with uniform, but no paired evaluation
        strategies[strategy] = entry
    return strategies


def _table_analysis(study_dir: Path, eval_df: pd.DataFrame | None, metrics_df: pd.DataFrame | None,
                    runs: dict[str, RunMeta], result: CellResult) -> dict[str, dict]:
    """Accuracy, McNemar, reward curves, final rewards and examples: everything that needs no profile."""
    grpo_runs = {rid: m for rid, m in runs.items() if m.strategy != SFT}
    eval_stats = {}
    if eval_df is not None:
        eval_stats, result.summary.detectability = strategy_eval(eval_df, grpo_runs, result.table_warnings)
    if metrics_df is not None:
        result.frames["rewards"] = reward_curves(metrics_df, grpo_runs)
        training = training_summary(metrics_df, grpo_runs)
        result.summary.training = {s: training[s] for s in order_strategies(training)}
    if eval_df is not None:
        result.frames["examples"] = eval_examples(study_dir / "eval", eval_df, grpo_runs)
    return eval_stats


def _profile_analysis(prof: ProfileAggregates, runs: dict[str, RunMeta],
                      result: CellResult) -> tuple[dict[str, StrategyProfile], dict[str, np.ndarray]]:
    """Landscape, per-strategy amplification, module shares, heatmap, controls and SFT from the profiles.

    Fills the summary's landscape, normalized_control and sft; returns the per-strategy profile statistics and
    S(l) per run.
    """
    warnings, frames = result.profile_warnings, result.frames
    keep = [r for r, rid in enumerate(prof.run_ids) if rid in runs]
    for r in keep:
        if prof.nonfinite[r]:
            warnings.append(f"profiles: {prof.run_ids[r]} has {int(prof.nonfinite[r])} non-finite grad_norm "
                            f"value(s) of {int(prof.rows[r])}; their steps are left out of its means whole")
        if prof.run_ids[r] in prof.diverged_at:
            warnings.append(f"profiles: {prof.run_ids[r]} diverged: its gradient norms are non-finite from step "
                            f"{prof.diverged_at[prof.run_ids[r]]} to its last step; S(l) uses the steps before")
    importance_all = layer_importance(prof.sum_lm, prof.count_lm)
    grpo = [r for r in keep if runs[prof.run_ids[r]].strategy != SFT]
    sft = [r for r in keep if runs[prof.run_ids[r]].strategy == SFT]
    main = importance_stats({prof.run_ids[r]: importance_all[r] for r in grpo}, runs, warnings)
    frames["layer_shares"], frames["amplification"] = main.shares, main.amplification
    reference = [r for r in grpo if runs[prof.run_ids[r]].strategy == REFERENCE]
    if not reference:
        warnings.append(f"profiles: no {REFERENCE} run has a profile; the landscape (Figure 1) and every "
                        "rank_shift_corr are unavailable")
    result.summary.landscape = _landscape(prof, main, reference, grpo, runs, frames)
    result.summary.normalized_control = _control_analysis(prof, runs, grpo, warnings, frames)
    if sft:
        # SFT runs are their own reference here: only their landscape is wanted.
        sft_stats = importance_stats({prof.run_ids[r]: importance_all[r] for r in sft},
                                     {prof.run_ids[r]: RunMeta(prof.run_ids[r], REFERENCE, 0) for r in sft}, None)
        land = sft_stats.landscape
        result.summary.sft = SFTLandscape(max_min_ratio=land.max_min_ratio, top30_share=land.top30_share,
                                          layer_share=land.layer_share, band_share=land.band_share,
                                          n_runs=land.n_runs)
        frames["sft_shares"] = sft_stats.shares.assign(strategy=SFT)
    return main.strategies, {prof.run_ids[r]: importance_all[r] for r in keep}


def _landscape(prof: ProfileAggregates, main: ImportanceStats, reference: list[int], grpo: list[int],
               runs: dict[str, RunMeta], frames: dict[str, pd.DataFrame]) -> Landscape:
    """Figure 1's landscape with its temporal stability and module shares (undefined without a reference run);
    the module-share and heatmap tables."""
    temporal = temporal_stability(prof.half_sum[reference], prof.half_count[reference]) if reference else []
    per_run_modules = module_shares(prof.sum_lm, prof.modules)
    module_rows = [(runs[prof.run_ids[r]].strategy, prof.run_ids[r], m, v)
                   for r in grpo for m, v in per_run_modules[r].items()]
    frames["module_shares"] = pd.DataFrame(module_rows, columns=["strategy", "run_id", "module", "share"])
    module_share = {m: st.nan_mean([per_run_modules[r][m] for r in reference]) for m in prof.modules}
    attention, mlp = st.group_shares(module_share) if reference else (math.nan, math.nan)
    if reference:
        frames["heatmap"] = step_share_matrix(prof.step_layer_sum[reference], prof.step_present[reference],
                                              prof.steps)
    return Landscape(**shallow(main.landscape), temporal_stability=st.nan_mean(temporal),
                     temporal_stability_per_run=dict(zip([prof.run_ids[r] for r in reference], temporal, strict=True)),
                     module_share=module_share, attention_share=attention, mlp_share=mlp)


def _control_analysis(prof: ProfileAggregates, runs: dict[str, RunMeta], grpo: list[int], warnings: list[str],
                      frames: dict[str, pd.DataFrame]) -> NormalizedControl:
    """The parameter-count control: norms per sqrt(LoRA parameter), and each module alone."""
    control = NormalizedControl()
    control_frames = []
    normed, lacking = per_parameter_importance(prof.sum_lm, prof.count_lm, prof.run_ids, prof.modules, runs, grpo)
    if normed and any(runs[r].strategy == REFERENCE for r in normed):
        part = importance_stats(normed, runs, None)
        control.per_parameter = PerParameterControl(landscape=part.landscape, strategies=_control_strategies(part))
        control_frames.append(part.shares.assign(control="per-parameter normalised"))
        frames["control_amplification"] = part.amplification.assign(control="per-parameter normalised")
        if lacking:
            warnings.append(f"runs: {len(lacking)} run(s) lack lora_params in run.json ({', '.join(lacking[:4])}"
                            f"{', ...' if len(lacking) > 4 else ''}); left out of the per-parameter control")
    elif any(runs[prof.run_ids[r]].strategy == REFERENCE for r in grpo):  # (else the landscape warning says it)
        warnings.append(f"runs: no {REFERENCE} run has lora_params in run.json; the per-parameter normalised "
                        "control is skipped (the single-module control is still reported)")
    shown = "q_proj" if "q_proj" in prof.modules else prof.modules[0]  # the report's control figure shows one
    for m_idx, module in enumerate(prof.modules):
        single = layer_importance(prof.sum_lm[:, :, m_idx:m_idx + 1], prof.count_lm[:, :, m_idx:m_idx + 1])
        part = importance_stats({prof.run_ids[r]: single[r] for r in grpo}, runs, None, tables=module == shown)
        land = part.landscape
        control.single_module[module] = SingleModuleControl(
            landscape=LayerLandscape(max_min_ratio=land.max_min_ratio, top30_share=land.top30_share,
                                     layer_share=land.layer_share),
            strategies=_control_strategies(part))
        if module == shown:
            control_frames.append(part.shares.assign(control=f"{module} only"))
    control.weight_gradient = _weight_gradient_control(prof, runs, grpo, warnings, control_frames)
    frames["control_shares"] = pd.concat(control_frames, ignore_index=True) if control_frames else pd.DataFrame()
    return control


def _weight_gradient_control(prof: ProfileAggregates, runs: dict[str, RunMeta], grpo: list[int], warnings: list[str],
                             control_frames: list[pd.DataFrame]) -> WeightGradientControl | None:
    """Eq. 2 on the frozen weights' gradient norms, where runs measured them (None where none did)."""
    if prof.weight_sum_lm is None:
        return None
    weight = layer_importance(prof.weight_sum_lm, prof.weight_count_lm)
    measured = {prof.run_ids[r]: weight[r] for r in grpo if prof.weight_count_lm[r].sum() > 0}
    if not any(runs[r].strategy == REFERENCE for r in measured):
        warnings.append(f"profiles: no {REFERENCE} run measured weight_grad_norm (profile.weight_gradient_every); "
                        "the weight-gradient control is skipped")
        return None
    part = importance_stats(measured, runs, None)
    control_frames.append(part.shares.assign(control="weight gradient"))
    return WeightGradientControl(landscape=part.landscape, strategies=_control_strategies(part), n_runs=len(measured))


def _control_strategies(part: ImportanceStats) -> dict[str, ControlStrategy]:
    return {s: ControlStrategy(max_min_ratio=v.max_min_ratio, rank_shift_corr=v.rank_shift_corr)
            for s, v in part.strategies.items()}
