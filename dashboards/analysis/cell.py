"""The analysis of one cell of a study: the runs of one combination of axis values (all runs without axes).

``analyze_cell`` takes the cell's runs, its rows of the eval and metrics tables and its rows of the
aggregated profiles, and returns the summary part the paper's statistics fill (``landscape``,
``strategies``, ``normalized_control``, ``sft``, ``training``), the figure tables and the warnings. The
reference strategy (:data:`orchestrator.strategies.REFERENCE`, ``uniform``) is what the landscape describes
and what every other strategy is compared with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dashboards.analysis import stats as st
from dashboards.analysis.beyond import adalora_summary, decomposition_summary, geometry_summary, rounds_summary
from dashboards.analysis.load import ProfileAggregates
from dashboards.analysis.profiles import (
    RunMeta,
    importance_stats,
    module_shares,
    per_parameter_importance,
    step_share_matrix,
    temporal_stability,
)
from dashboards.analysis.training import eval_examples, reward_curves, strategy_eval, training_summary
from orchestrator.importance import layer_importance
from orchestrator.strategies import REFERENCE, SFT, order_strategies

SUMMARY_KEYS = ("landscape", "strategies", "normalized_control", "sft", "training", "lora_scaling", "rounds",
                "decomposition", "geometry", "adalora")


@dataclass
class CellResult:
    """One cell's summary part, figure tables and warnings (run warnings, profile warnings, table warnings)."""

    summary: dict
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    profile_warnings: list[str] = field(default_factory=list)
    table_warnings: list[str] = field(default_factory=list)


def analyze_cell(study_dir: Path, runs: dict[str, RunMeta], eval_df: pd.DataFrame | None,
                 metrics_df: pd.DataFrame | None, prof: ProfileAggregates | None,
                 components: pd.DataFrame | None = None, geometry: pd.DataFrame | None = None,
                 rank_steps: pd.DataFrame | None = None) -> CellResult:
    """The cell's summary part. Every table holds the cell's rows only; ``components`` (decomposed profile rows),
    ``geometry`` and ``rank_steps`` (the ranks per step of runs whose ranks change) are optional."""
    result = CellResult(summary={})
    eval_stats = _table_analysis(study_dir, eval_df, metrics_df, runs, result)
    profile_strategies: dict[str, dict] = {}
    importance: dict[str, np.ndarray] = {}  # S(l) per run: the beyond-the-paper parts read it too
    if prof is not None:
        parts, profile_strategies, importance = _profile_analysis(prof, runs, result.profile_warnings,
                                                                  result.frames)
        result.summary.update(parts)
    else:
        result.profile_warnings.append("profiles: no usable profile; landscape, amplification, heatmap and "
                                       "controls are skipped")
        result.summary["landscape"] = None
        result.summary["normalized_control"] = None
    result.summary["strategies"] = _strategy_entries(runs, eval_stats, profile_strategies)
    result.summary["rounds"] = rounds_summary(result.summary["strategies"], runs)
    result.summary["decomposition"], result.frames["component_shares"] = decomposition_summary(
        components, importance, runs)
    result.summary["geometry"], result.frames["geometry"] = geometry_summary(geometry, importance, runs)
    result.summary["adalora"], result.frames["rank_steps"] = adalora_summary(rank_steps, runs)
    scalings = sorted({m.lora_scaling for m in runs.values() if m.lora_scaling})
    result.summary["lora_scaling"] = scalings[0] if len(scalings) == 1 else (scalings or None)
    rank = {name: i for i, name in enumerate([*result.summary["strategies"], SFT])}
    for key, frame in result.frames.items():  # figures draw strategies in Table 1's order (the registry's)
        if "strategy" in frame.columns and not frame.empty:
            codes, uniques = pd.factorize(frame["strategy"])
            order = np.argsort(np.array([rank.get(u, len(rank)) for u in uniques])[codes], kind="stable")
            result.frames[key] = frame.take(order).reset_index(drop=True)
    result.summary = {k: result.summary[k] for k in SUMMARY_KEYS if k in result.summary}
    return result


def _strategy_entries(runs: dict[str, RunMeta], eval_stats: dict, profile_strategies: dict) -> dict[str, dict]:
    grpo_runs = {rid: m for rid, m in runs.items() if m.strategy != SFT}
    strategies = {}
    for strategy in order_strategies(m.strategy for m in grpo_runs.values()):
        ids = [rid for rid, m in grpo_runs.items() if m.strategy == strategy]
        params = [grpo_runs[r].trainable_params for r in ids if grpo_runs[r].trainable_params is not None]
        seeds = sorted({grpo_runs[r].seed for r in ids if grpo_runs[r].seed is not None})
        prof_entry = profile_strategies.get(strategy, {})
        entry = {"accuracy": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_eval": 0}
        entry.update(eval_stats.get(strategy, {}))
        entry.update({
            "n_runs": len(ids), "seeds": seeds,
            "trainable_params": int(round(np.mean(params))) if params else None,
            "max_min_ratio": prof_entry.get("max_min_ratio", math.nan),
            "rank_shift_corr": prof_entry.get("rank_shift_corr") if strategy != REFERENCE else None,
            "rank_shift_corr_per_run": prof_entry.get("rank_shift_corr_per_run", {}),
            "max_min_ratio_per_seed": prof_entry.get("max_min_ratio_per_seed", {}),
            "max_min_ratio_seed_range": prof_entry.get("max_min_ratio_seed_range", []),
            "layer_share": prof_entry.get("layer_share", []),
        })
        if strategy == REFERENCE:
            entry["p_value_vs_uniform"] = None
        entry.setdefault("p_value_vs_uniform", math.nan)
        for key in ("item_accuracy", "item_ci_low", "item_ci_high", "n_items", "vs_uniform", "vs_base",
                    "mcnemar_per_seed", "mcnemar_b", "mcnemar_c", "n_paired", "paired_seeds",
                    "accuracy_delta_vs_uniform"):
            entry.setdefault(key, None)  # every strategy has every key (None: not applicable or no data)
        strategies[strategy] = entry
    return strategies


def _table_analysis(study_dir: Path, eval_df: pd.DataFrame | None, metrics_df: pd.DataFrame | None,
                    runs: dict[str, RunMeta], result: CellResult) -> dict[str, dict]:
    """Accuracy, McNemar, reward curves, final rewards and examples: everything that needs no profile."""
    grpo_runs = {rid: m for rid, m in runs.items() if m.strategy != SFT}
    eval_stats = strategy_eval(eval_df, grpo_runs, result.table_warnings) if eval_df is not None else {}
    if metrics_df is not None:
        result.frames["rewards"] = reward_curves(metrics_df, grpo_runs)
        training = training_summary(metrics_df, grpo_runs)
        result.summary["training"] = {s: training[s] for s in order_strategies(training)}
    if eval_df is not None:
        result.frames["examples"] = eval_examples(study_dir / "eval", eval_df, grpo_runs)
    return eval_stats


def _profile_analysis(prof: ProfileAggregates, runs: dict[str, RunMeta], warnings: list[str],
                      frames: dict[str, pd.DataFrame]) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """Landscape, per-strategy amplification, module shares, heatmap and SFT from the aggregated profiles.

    Returns (summary parts: landscape, sft, normalized_control; per-strategy profile statistics; S(l) per run).
    """
    keep = [r for r, rid in enumerate(prof.run_ids) if rid in runs]
    for r in keep:
        if prof.nonfinite[r]:
            warnings.append(f"profiles: {prof.run_ids[r]} has {int(prof.nonfinite[r])} non-finite grad_norm "
                            f"value(s) of {int(prof.rows[r])}; left out of its means")
    importance_all = layer_importance(prof.sum_lm, prof.count_lm)
    grpo = [r for r in keep if runs[prof.run_ids[r]].strategy != SFT]
    sft = [r for r in keep if runs[prof.run_ids[r]].strategy == SFT]
    main, frames["layer_shares"], frames["amplification"] = importance_stats(
        {prof.run_ids[r]: importance_all[r] for r in grpo}, runs, warnings)

    landscape = main["landscape"]
    reference = [r for r in grpo if runs[prof.run_ids[r]].strategy == REFERENCE]
    if not reference:
        warnings.append(f"profiles: no {REFERENCE} run has a profile; the landscape (Figure 1) and every "
                        "rank_shift_corr are unavailable")
    temporal = temporal_stability(prof.half_sum[reference], prof.half_count[reference]) if reference else []
    landscape["temporal_stability"] = st.nan_mean(temporal)
    landscape["temporal_stability_per_run"] = dict(zip([prof.run_ids[r] for r in reference], temporal, strict=True))

    per_run_modules = module_shares(prof.sum_lm, prof.modules)
    module_rows = [(runs[prof.run_ids[r]].strategy, prof.run_ids[r], m, v)
                   for r in grpo for m, v in per_run_modules[r].items()]
    frames["module_shares"] = pd.DataFrame(module_rows, columns=["strategy", "run_id", "module", "share"])
    module_share = {m: st.nan_mean([per_run_modules[r][m] for r in reference]) for m in prof.modules}
    landscape["module_share"] = module_share
    landscape["attention_share"], landscape["mlp_share"] = (
        st.group_shares(module_share) if reference else (math.nan, math.nan))
    parts = {"landscape": landscape, "normalized_control": _control_analysis(prof, runs, grpo, warnings, frames)}

    if reference:
        frames["heatmap"] = step_share_matrix(prof.step_layer_sum[reference], prof.step_present[reference],
                                              prof.steps)
    if sft:
        # SFT runs are their own reference here: only their landscape is wanted.
        sft_part, sft_shares, _ = importance_stats({prof.run_ids[r]: importance_all[r] for r in sft},
                                                   {prof.run_ids[r]: RunMeta(prof.run_ids[r], REFERENCE, 0)
                                                    for r in sft}, None)
        parts["sft"] = {k: sft_part["landscape"][k] for k in ("max_min_ratio", "top30_share", "layer_share",
                                                              "band_share", "n_runs")}
        frames["sft_shares"] = sft_shares.assign(strategy=SFT)
    return parts, main["strategies"], {prof.run_ids[r]: importance_all[r] for r in keep}


def _control_analysis(prof: ProfileAggregates, runs: dict[str, RunMeta], grpo: list[int], warnings: list[str],
                      frames: dict[str, pd.DataFrame]) -> dict:
    """The parameter-count control: norms per sqrt(LoRA parameter), and each module alone."""
    control: dict = {}
    control_frames = []
    normed, lacking = per_parameter_importance(prof.sum_lm, prof.count_lm, prof.run_ids, prof.modules, runs, grpo)
    if normed and any(runs[r].strategy == REFERENCE for r in normed):
        part, shares_n, amp_n = importance_stats(normed, runs, None)
        control["per_parameter"] = {"landscape": part["landscape"], "strategies": _control_strategies(part)}
        control_frames.append(shares_n.assign(control="per-parameter normalised"))
        frames["control_amplification"] = amp_n.assign(control="per-parameter normalised")
        if lacking:
            warnings.append(f"runs: {len(lacking)} run(s) lack lora_params in run.json ({', '.join(lacking[:4])}"
                            f"{', ...' if len(lacking) > 4 else ''}); left out of the per-parameter control")
    else:
        control["per_parameter"] = None
        if any(runs[prof.run_ids[r]].strategy == REFERENCE for r in grpo):  # (else the landscape warning says it)
            warnings.append(f"runs: no {REFERENCE} run has lora_params in run.json; the per-parameter normalised "
                            "control is skipped (the single-module control is still reported)")
    control["single_module"] = {}
    shown = "q_proj" if "q_proj" in prof.modules else prof.modules[0]  # the report's control figure shows one
    for m_idx, module in enumerate(prof.modules):
        single = layer_importance(prof.sum_lm[:, :, m_idx:m_idx + 1], prof.count_lm[:, :, m_idx:m_idx + 1])
        part, shares_m, _ = importance_stats({prof.run_ids[r]: single[r] for r in grpo}, runs, None,
                                             tables=module == shown)
        control["single_module"][module] = {"landscape": {k: part["landscape"][k] for k in
                                                          ("max_min_ratio", "top30_share", "layer_share")},
                                            "strategies": _control_strategies(part)}
        if module == shown:
            control_frames.append(shares_m.assign(control=f"{module} only"))
    frames["control_shares"] = pd.concat(control_frames, ignore_index=True) if control_frames else pd.DataFrame()
    return control


def _control_strategies(part: dict) -> dict:
    return {s: {"max_min_ratio": v["max_min_ratio"], "rank_shift_corr": v["rank_shift_corr"]}
            for s, v in part["strategies"].items()}
