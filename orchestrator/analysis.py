"""Analysis of a study directory: every statistic of the paper, with uncertainty, as one summary dict.

``summarize(DIR) -> (summary, warnings)`` reads the Parquet results of the output contract (only the columns
it needs) and computes, with the definitions of the analysis issue:

- ``landscape``: the layer-share landscape of the profiling strategy ``uniform`` (Eq. 2 importance, shares
  averaged over its seeds): max/min ratio, top-30% share, early/middle/late band shares, temporal
  stability, module, attention and MLP shares;
- ``strategies``: per strategy, pooled accuracy with a 95% Wilson interval, the exact McNemar p-value
  against uniform on items paired by (seed, item), trainable params, the max/min ratio of its own
  landscape and the rank-vs-share-shift correlation (the amplification effect);
- ``normalized_control``: the landscape and amplification again with norms divided by
  sqrt(LoRA parameters of the module), and for each single module alone;
- ``sft``: the landscape of the SFT warm-start profiles (strategy ``sft``) when there are any;
- ``training``: final training reward per strategy (the paper's "identical reward curves").

Anything missing (a table, a run's uniform partner, an empty profile, a failed run) becomes one line in
``warnings`` and everything else is still reported; undefined numbers are None. ``analyze(DIR)`` returns the
same plus the tables the report draws its figures from. Pure: it reads DIR and writes nothing.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator import analysis_stats as st
from orchestrator.analysis_findings import findings
from orchestrator.analysis_load import (
    ProfileAggregates,
    RunInfo,
    aggregate_profiles,
    load_run_infos,
    parse_run_id,
    read_small_table,
)
from orchestrator.analysis_profiles import (
    RunMeta,
    importance_stats,
    layer_importance,
    module_shares,
    per_parameter_importance,
    step_share_matrix,
    temporal_stability,
)
from orchestrator.analysis_training import eval_examples, reward_curves, strategy_eval, training_summary
from orchestrator.errors import StudyError

KNOWN_ORDER = ("uniform", "proportional", "random", "reduced")


@dataclass
class Analysis:
    """The summary, the warnings, and the long tables (pandas) the report's figures are drawn from."""

    summary: dict
    warnings: list[str]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


def summarize(study_dir: Path) -> tuple[dict, list[str]]:
    """The summary dict (keys as in the analysis issue; undefined numbers None) and one warning per gap."""
    result = analyze(study_dir)
    return result.summary, result.warnings


def order_strategies(names) -> list[str]:
    """The paper's order first, then any other strategy alphabetically.

    >>> order_strategies({"random", "zeta", "uniform", "base"})
    ['uniform', 'random', 'base', 'zeta']
    """
    names = set(names)
    return [s for s in KNOWN_ORDER if s in names] + sorted(names - set(KNOWN_ORDER))


def _collect_runs(infos: dict[str, RunInfo], warnings: list[str], tables: list[pd.DataFrame | None]
                  ) -> tuple[dict[str, RunMeta], set[str]]:
    """Every run of run.json, eval and metrics; runs whose run.json says they did not complete are excluded."""
    runs: dict[str, RunMeta] = {}
    for info in infos.values():
        runs[info.run_id] = RunMeta(info.run_id, info.strategy, info.seed,
                                    np.array(info.allocation) if info.allocation else None,
                                    info.trainable_params, info.lora_params)
    for table in tables:
        if table is None:
            continue
        codes, uniques = pd.factorize(table["run_id"].astype(str))
        first_row = np.full(len(uniques), -1)
        first_row[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # reversed: the first row's write wins
        for i, run_id in enumerate(uniques):
            if run_id in runs or first_row[i] < 0:
                continue
            row = table.iloc[int(first_row[i])]
            strategy, seed = parse_run_id(run_id)
            seed = int(row["seed"]) if "seed" in row and pd.notna(row["seed"]) else seed
            runs[run_id] = RunMeta(run_id, str(row["strategy"]) if "strategy" in row and pd.notna(row["strategy"])
                                   else strategy, seed)
    excluded = {rid for rid, info in infos.items() if info.status not in (None, "completed")}
    for run_id in sorted(excluded):
        warnings.append(f"runs: {run_id} has status {infos[run_id].status!r}; left out of every statistic")
    return {rid: m for rid, m in runs.items() if rid not in excluded}, excluded


def _add_profile_runs(runs: dict[str, RunMeta], excluded: set[str], prof: ProfileAggregates) -> None:
    """Runs known only from their profile; the profiles' rank column where run.json has no allocation."""
    for r, run_id in enumerate(prof.run_ids):
        if run_id in excluded:
            continue
        parsed_strategy, parsed_seed = parse_run_id(run_id)
        meta = runs.setdefault(run_id, RunMeta(run_id, prof.strategies[r] or parsed_strategy,
                                               prof.seeds[r] if prof.seeds[r] is not None else parsed_seed))
        if meta.ranks is None and (prof.profile_rank[r] >= 0).all():
            meta.ranks = prof.profile_rank[r].copy()


def _table_analysis(study_dir: Path, eval_df: pd.DataFrame | None, metrics_df: pd.DataFrame | None,
                    runs: dict[str, RunMeta], warnings: list[str], summary: dict,
                    frames: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Accuracy, McNemar, reward curves, final rewards and examples: everything that needs no profile."""
    grpo_runs = {rid: m for rid, m in runs.items() if m.strategy != "sft"}
    eval_stats = strategy_eval(eval_df, grpo_runs, warnings) if eval_df is not None else {}
    if metrics_df is not None:
        frames["rewards"] = reward_curves(metrics_df, grpo_runs)
        training = training_summary(metrics_df, grpo_runs)
        summary["training"] = {s: training[s] for s in order_strategies(training)}
    if eval_df is not None:
        frames["examples"] = eval_examples(study_dir / "eval", eval_df, grpo_runs)
    return eval_stats


def _profile_analysis(prof: ProfileAggregates, runs: dict[str, RunMeta], warnings: list[str],
                      frames: dict[str, pd.DataFrame]) -> tuple[dict, dict]:
    """Landscape, per-strategy amplification, module shares, heatmap and SFT from the aggregated profiles.

    Returns (summary parts: landscape, sft, normalized_control; per-strategy profile statistics).
    """
    keep = [r for r, rid in enumerate(prof.run_ids) if rid in runs]
    for r in keep:
        if prof.nonfinite[r]:
            warnings.append(f"profiles: {prof.run_ids[r]} has {int(prof.nonfinite[r])} non-finite grad_norm "
                            f"value(s) of {int(prof.rows[r])}; left out of its means")
    importance_all = layer_importance(prof.sum_lm, prof.count_lm)
    grpo = [r for r in keep if runs[prof.run_ids[r]].strategy != "sft"]
    sft = [r for r in keep if runs[prof.run_ids[r]].strategy == "sft"]
    main, frames["layer_shares"], frames["amplification"] = importance_stats(
        {prof.run_ids[r]: importance_all[r] for r in grpo}, runs, warnings)

    landscape = main["landscape"]
    uniform = [r for r in grpo if runs[prof.run_ids[r]].strategy == "uniform"]
    if not uniform:
        warnings.append("profiles: no uniform run has a profile; the landscape (Figure 1) and every "
                        "rank_shift_corr are unavailable")
    temporal = temporal_stability(prof.half_sum[uniform], prof.half_count[uniform]) if uniform else []
    landscape["temporal_stability"] = st.nan_mean(temporal)
    landscape["temporal_stability_per_run"] = dict(zip([prof.run_ids[r] for r in uniform], temporal, strict=True))

    per_run_modules = module_shares(prof.sum_lm, prof.modules)
    module_rows = [(runs[prof.run_ids[r]].strategy, prof.run_ids[r], m, v)
                   for r in grpo for m, v in per_run_modules[r].items()]
    frames["module_shares"] = pd.DataFrame(module_rows, columns=["strategy", "run_id", "module", "share"])
    module_share = {m: st.nan_mean([per_run_modules[r][m] for r in uniform]) for m in prof.modules}
    landscape["module_share"] = module_share
    landscape["attention_share"], landscape["mlp_share"] = (
        st.group_shares(module_share) if uniform else (math.nan, math.nan))
    parts = {"landscape": landscape, "normalized_control": _control_analysis(prof, runs, grpo, warnings, frames)}

    if uniform:
        frames["heatmap"] = step_share_matrix(prof.step_layer_sum[uniform], prof.step_present[uniform], prof.steps)
    if sft:
        # SFT runs are their own "uniform" here: only their landscape is wanted.
        sft_part, sft_shares, _ = importance_stats({prof.run_ids[r]: importance_all[r] for r in sft},
                                                   {prof.run_ids[r]: RunMeta(prof.run_ids[r], "uniform", 0)
                                                    for r in sft}, None)
        parts["sft"] = {k: sft_part["landscape"][k] for k in ("max_min_ratio", "top30_share", "layer_share",
                                                              "band_share", "n_runs")}
        frames["sft_shares"] = sft_shares.assign(strategy="sft")
    return parts, main["strategies"]


def _control_analysis(prof: ProfileAggregates, runs: dict[str, RunMeta], grpo: list[int], warnings: list[str],
                      frames: dict[str, pd.DataFrame]) -> dict:
    """The parameter-count control: norms per sqrt(LoRA parameter), and each module alone."""
    control: dict = {}
    control_frames = []
    normed, lacking = per_parameter_importance(prof.sum_lm, prof.count_lm, prof.run_ids, prof.modules, runs, grpo)
    if normed and any(runs[r].strategy == "uniform" for r in normed):
        part, shares_n, amp_n = importance_stats(normed, runs, None)
        control["per_parameter"] = {"landscape": part["landscape"], "strategies": _control_strategies(part)}
        control_frames.append(shares_n.assign(control="per-parameter normalised"))
        frames["control_amplification"] = amp_n.assign(control="per-parameter normalised")
        if lacking:
            warnings.append(f"runs: {len(lacking)} run(s) lack lora_params in run.json ({', '.join(lacking[:4])}"
                            f"{', ...' if len(lacking) > 4 else ''}); left out of the per-parameter control")
    else:
        control["per_parameter"] = None
        if any(runs[prof.run_ids[r]].strategy == "uniform" for r in grpo):  # (else the landscape warning says it)
            warnings.append("runs: no uniform run has lora_params in run.json; the per-parameter normalised "
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


def analyze(study_dir: Path) -> Analysis:
    """Everything :func:`summarize` returns, plus the figure tables (``Analysis.frames``)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise StudyError(f"analyze: {study_dir} is not a directory; pass the study's output directory")
    run_warnings: list[str] = []
    profile_warnings: list[str] = []
    table_warnings: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    summary: dict = {"study_dir": str(study_dir)}
    infos = load_run_infos(study_dir, run_warnings)
    # The profiles are read and reduced in a worker thread while this one does the small tables: pyarrow
    # and numpy's large loops release the GIL, so the two overlap on a multi-core machine.
    with ThreadPoolExecutor(max_workers=1) as pool:
        profiles_done = pool.submit(aggregate_profiles, study_dir / "profiles", profile_warnings,
                                    {rid for rid, info in infos.items() if info.allocation is not None})
        eval_df = read_small_table(study_dir / "eval", ("run_id", "item", "correct"),
                                   ("strategy", "seed", "format_ok"), table_warnings, "eval")
        metrics_df = read_small_table(study_dir / "metrics", ("run_id", "step"),
                                      ("strategy", "seed", "reward", "reward_correctness", "reward_format"),
                                      table_warnings, "metrics")
        runs, excluded = _collect_runs(infos, run_warnings, [eval_df, metrics_df])
        if eval_df is not None:
            eval_df = eval_df[~eval_df["run_id"].isin(excluded)]
        if metrics_df is not None:
            metrics_df = metrics_df[~metrics_df["run_id"].isin(excluded)]
        eval_stats = _table_analysis(study_dir, eval_df, metrics_df, runs, table_warnings, summary, frames)
        prof = profiles_done.result()
    profile_strategies: dict[str, dict] = {}
    if prof is not None:
        _add_profile_runs(runs, excluded, prof)
        parts, profile_strategies = _profile_analysis(prof, runs, profile_warnings, frames)
        summary.update(parts)
    else:
        profile_warnings.append("profiles: no usable profile; landscape, amplification, heatmap and controls "
                                "are skipped")
        summary["landscape"] = None
        summary["normalized_control"] = None
    warnings = run_warnings + profile_warnings + table_warnings

    grpo_runs = {rid: m for rid, m in runs.items() if m.strategy != "sft"}
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
            "rank_shift_corr": prof_entry.get("rank_shift_corr") if strategy != "uniform" else None,
            "rank_shift_corr_per_run": prof_entry.get("rank_shift_corr_per_run", {}),
            "layer_share": prof_entry.get("layer_share", []),
        })
        if strategy == "uniform":
            entry["p_value_vs_uniform"] = None
        entry.setdefault("p_value_vs_uniform", math.nan)
        strategies[strategy] = entry
    summary["strategies"] = strategies
    rank = {name: i for i, name in enumerate([*strategies, "sft"])}
    for key, frame in frames.items():  # figures draw strategies in table order: uniform first
        if "strategy" in frame.columns and not frame.empty:
            codes, uniques = pd.factorize(frame["strategy"])
            order = np.argsort(np.array([rank.get(u, len(rank)) for u in uniques])[codes], kind="stable")
            frames[key] = frame.take(order).reset_index(drop=True)
    key_order = ("landscape", "strategies", "normalized_control", "sft", "training", "study_dir")
    summary = jsonable({k: summary[k] for k in key_order if k in summary})
    summary["findings"] = findings(summary)
    summary["warnings"] = list(warnings)
    return Analysis(summary=summary, warnings=warnings, frames=frames)


def jsonable(value):
    """numpy scalars to Python, NaN and infinities to None, recursively (summary.json stays strict JSON).

    >>> jsonable({"a": np.float64("nan"), "b": [np.int64(2), float("inf")], "c": (1.5,)})
    {'a': None, 'b': [2, None], 'c': [1.5]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value
