"""Evaluation and training-curve statistics: pooled accuracy, Wilson CIs, McNemar, reward curves.

Pure functions of the eval and metrics tables (pandas) and the run table; they append one warning per
gap (a run whose uniform partner was not evaluated, duplicated items) and report everything else.
``eval_examples`` reads a few completions per strategy for the report (which escapes them).

The tables are small (runs x items, runs x steps) but the analysis runs on every study, so the work is
done in a few vectorised pandas/numpy operations rather than per-run Python loops over rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dashboards.analysis import stats as st
from dashboards.analysis.items import item_statistics
from dashboards.analysis.profiles import RunMeta
from dashboards.analysis.schema import BaseDifference, Detectability, PairedDifference, TrainingResult
from dashboards.analysis.verdicts import SeedVerdict, detectability, run_accuracies, seed_verdicts
from orchestrator.core.roles import REFERENCE

NO_SEED = -1  # internal stand-in for a run whose seed is unknown (it then has no uniform partner)


def with_runs(df: pd.DataFrame, runs: dict[str, RunMeta]) -> pd.DataFrame:
    """Keep rows of known runs and take strategy and seed from the run table (one source of truth).

    >>> runs = {"uniform-seed0": RunMeta("uniform-seed0", "uniform", 0)}
    >>> with_runs(pd.DataFrame({"run_id": ["uniform-seed0", "gone-seed1"], "x": [1, 2]}), runs).to_dict("list")
    {'run_id': ['uniform-seed0'], 'x': [1], 'strategy': ['uniform'], 'seed': [0]}
    """
    codes, uniques = pd.factorize(df["run_id"].astype(str))
    known = np.array([u in runs for u in uniques] + [False])  # index -1 (a null run_id) is unknown
    keep = known[codes]
    codes = codes[keep]
    strategy = np.array([runs[u].strategy if u in runs else "" for u in uniques], dtype=object)
    seed = np.array([runs[u].seed if u in runs and runs[u].seed is not None else NO_SEED for u in uniques],
                    dtype=np.int64)
    return df[keep].assign(run_id=np.asarray(uniques, dtype=object)[codes], strategy=strategy[codes],
                           seed=seed[codes])


def _as_bool(column: pd.Series) -> np.ndarray:
    """A verdict column as booleans; a missing verdict counts as False (not correct, not well-formed)."""
    return column.fillna(False).to_numpy(dtype=bool)


def strategy_eval(eval_df: pd.DataFrame, runs: dict[str, RunMeta],
                  warnings: list[str]) -> tuple[dict[str, dict], Detectability | None]:
    """Per strategy: pooled accuracy, Wilson 95% CI, Wald half-width, format rate, McNemar vs uniform, the
    item-level statistics (:mod:`.items`) and the seed-aware verdicts against uniform and base
    (:mod:`.verdicts`), as :class:`~dashboards.analysis.schema.StrategyResult` fields; and the cell's
    detectability."""
    df = with_runs(eval_df, runs)
    dup = df.duplicated(["run_id", "item"], keep="last")
    if dup.any():
        warnings.append(f"eval: {int(dup.sum())} duplicated (run_id, item) rows; the last of each is used")
        df = df[~dup.to_numpy()]
    df = df.assign(correct=_as_bool(df["correct"]))
    if "format_ok" in df:
        df = df.assign(format_ok=_as_bool(df["format_ok"]))
    pooled = df.groupby("strategy", sort=False).agg(n=("correct", "size"), k=("correct", "sum"))
    formats = df.groupby("strategy", sort=False)["format_ok"].mean() if "format_ok" in df else {}

    # McNemar pairs: every non-uniform row joined to the uniform row of the same (seed, item).
    is_uniform = (df["strategy"] == REFERENCE).to_numpy()
    uniform = df.loc[is_uniform, ["seed", "item", "correct"]].rename(columns={"correct": "u"})
    uniform = uniform.assign(u=uniform["u"].astype(np.int8))
    uniform_seeds = set(uniform["seed"].unique().tolist())
    pairs = df.loc[~is_uniform, ["strategy", "run_id", "seed", "item", "correct"]].merge(
        uniform, on=["seed", "item"], how="left")
    pairs = pairs.assign(matched=pairs["u"].notna(), b=pairs["correct"] & (pairs["u"] == 0),
                         c=~pairs["correct"] & (pairs["u"] == 1))
    per_run = pairs.groupby(["strategy", "run_id", "seed"], sort=True).agg(
        n=("item", "size"), matched=("matched", "sum"), b=("b", "sum"), c=("c", "sum")).reset_index()

    out: dict[str, dict] = {}
    uniform_accuracy = df.loc[is_uniform, "correct"].mean() if is_uniform.any() else math.nan
    for strategy, row in pooled.iterrows():
        n, k = int(row["n"]), int(row["k"])
        low, high = st.wilson_interval(k, n)
        entry = {"accuracy": k / n if n else math.nan, "ci_low": low, "ci_high": high, "n_eval": n, "n_correct": k,
                 "wald_half_width": st.wald_half_width(k, n),
                 "format_rate": float(formats[strategy]) if len(formats) else math.nan}
        if strategy != REFERENCE:
            b = c = paired = 0
            paired_seeds = []
            for run in per_run[per_run["strategy"] == strategy].itertuples(index=False):
                if run.seed not in uniform_seeds:
                    seed = "unknown" if run.seed == NO_SEED else run.seed
                    warnings.append(f"eval: {run.run_id} has no uniform eval with seed {seed}; "
                                    "its items are left out of the McNemar test")
                    continue
                if run.matched < run.n:
                    warnings.append(f"eval: {run.run_id}: {run.n - run.matched} item(s) not evaluated for the "
                                    f"uniform run of seed {run.seed}; left out of the McNemar test")
                b, c, paired = b + int(run.b), c + int(run.c), paired + int(run.matched)
                paired_seeds.append(int(run.seed))
            entry.update({"p_value_vs_uniform": st.mcnemar_exact(b, c) if paired else math.nan,
                          "mcnemar_b": b, "mcnemar_c": c, "n_paired": paired, "paired_seeds": paired_seeds,
                          "accuracy_delta_vs_uniform": entry["accuracy"] - uniform_accuracy})
        out[str(strategy)] = entry
    rows = df[["strategy", "seed", "item", "correct"]]
    for strategy, by_seed in run_accuracies(rows).items():
        out[strategy]["accuracy_per_seed"] = {str(seed): acc for seed, acc in sorted(by_seed.items())}
    verdicts = seed_verdicts(rows)
    for strategy, extra in item_statistics(rows).items():
        for key, kind in (("vs_uniform", PairedDifference), ("vs_base", BaseDifference)):
            if key in extra:
                extra[key] = kind(**{**extra[key], **_verdict_fields(verdicts[strategy][key])})
        out[strategy].update(extra)
    return out, detectability(rows, verdicts)


def _verdict_fields(verdict: SeedVerdict) -> dict:
    """The seed-aware fields of a paired difference (its delta is the item-level one: the same number)."""
    return {"ci_low": verdict.ci_low, "ci_high": verdict.ci_high, "p_value": verdict.p_value,
            "p_unadjusted": verdict.p_unadjusted, "significant": verdict.significant, "test": verdict.test,
            "n_seeds": verdict.n_seeds, "df": verdict.df}


def _run_segments(df: pd.DataFrame) -> list[tuple[int, int]]:
    """[start, stop) row ranges of each run in a frame sorted by run_id."""
    run = df["run_id"].to_numpy()
    bounds = np.flatnonzero(run[1:] != run[:-1]) + 1
    edges = [0, *bounds.tolist(), len(run)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` finite values up to each position (fewer at the start).

    >>> trailing_mean(np.array([1.0, 3.0, np.nan, 5.0]), 2).tolist()
    [1.0, 2.0, 3.0, 5.0]
    """
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    upto = np.arange(1, values.size + 1)
    start = np.maximum(upto - window, 0)
    n = counts[upto] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[upto] - sums[start]) / np.maximum(n, 1), np.nan)


def reward_curves(metrics_df: pd.DataFrame, runs: dict[str, RunMeta]) -> pd.DataFrame:
    """Per strategy, metric and step: mean, min and max over seeds of the smoothed training reward.

    Each run's curve is first a trailing mean over ~2% of its steps (single steps are noisy).
    """
    columns = ["strategy", "metric", "step", "mean", "low", "high", "n_runs"]
    df = with_runs(metrics_df, runs).sort_values(["run_id", "step"], kind="stable")
    metrics = [m for m in ("reward", "reward_correctness", "reward_format") if m in df.columns]
    if df.empty or not metrics:
        return pd.DataFrame(columns=columns)
    segments = _run_segments(df)
    window = max(1, max(stop - start for start, stop in segments) // 50)
    smoothed = {}
    for metric in metrics:
        values = df[metric].to_numpy(dtype=float, na_value=np.nan)
        smoothed[metric] = np.concatenate([trailing_mean(values[a:b], window) for a, b in segments])
    agg = df[["strategy", "step"]].assign(**smoothed).groupby(["strategy", "step"])[metrics].agg(
        ["mean", "min", "max", "count"])
    parts = []
    for metric in metrics:
        part = agg[metric].reset_index().rename(columns={"min": "low", "max": "high", "count": "n_runs"})
        parts.append(part.assign(metric=metric))
    return pd.concat(parts, ignore_index=True)[columns]


def training_summary(metrics_df: pd.DataFrame, runs: dict[str, RunMeta]) -> dict[str, TrainingResult]:
    """Per strategy: mean reward and correctness reward over the last 10% of steps, averaged over runs."""
    df = with_runs(metrics_df, runs).sort_values(["run_id", "step"], kind="stable")
    finals: dict[str, dict[str, list[float]]] = {}
    steps: dict[str, int] = {}
    strategy = df["strategy"].to_numpy()
    step = df["step"].to_numpy()
    columns = {m: df[m].to_numpy(dtype=float, na_value=np.nan) for m in ("reward", "reward_correctness") if m in df}
    for start, stop in _run_segments(df) if len(df) else []:
        name = strategy[start]
        tail = slice(stop - max(1, (stop - start) // 10), stop)
        for metric, values in columns.items():
            chunk = values[tail]
            finals.setdefault(name, {}).setdefault(metric, []).append(
                float(np.mean(chunk[np.isfinite(chunk)])) if np.isfinite(chunk).any() else math.nan)
        finals.setdefault(name, {}).setdefault("_runs", []).append(1.0)
        steps[name] = max(steps.get(name, 0), int(step[start:stop].max()))
    return {name: TrainingResult(final_reward=st.nan_mean(v.get("reward", [])),
                                 final_correctness=st.nan_mean(v.get("reward_correctness", [])),
                                 n_steps=steps[name], n_runs=len(v["_runs"])) for name, v in finals.items()}


def eval_examples(eval_dir: Path, eval_df: pd.DataFrame, runs: dict[str, RunMeta], per_strategy: int = 2
                  ) -> pd.DataFrame:
    """A few evaluated completions per strategy (a right and a wrong one where possible), lowest seed.

    Reads the text columns from one file per strategy only (``DIR/eval/<run_id>.parquet``).
    """
    columns = ["strategy", "run_id", "item", "correct", "format_ok", "prediction", "target", "completion"]
    df = with_runs(eval_df[["run_id"]].drop_duplicates(), runs)
    rows = []
    for strategy, group in df.groupby("strategy", sort=False):
        run_id = min(group["run_id"], key=lambda r: (runs[r].seed is None, runs[r].seed or 0, r))
        path = eval_dir / f"{run_id}.parquet"
        if not path.is_file():
            continue
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in columns[2:] if c in names])
        if "correct" in names:
            correct = pc.fill_null(table["correct"], False).to_numpy(zero_copy_only=False).astype(bool)
            picks = [*np.flatnonzero(correct)[:per_strategy - per_strategy // 2],
                     *np.flatnonzero(~correct)[:per_strategy // 2]]
            picks = sorted(picks) if len(picks) == per_strategy else list(range(min(per_strategy, table.num_rows)))
        else:
            picks = list(range(min(per_strategy, table.num_rows)))
        for record in table.take(picks).to_pylist():
            rows.append({"strategy": strategy, "run_id": run_id, **record})
    return pd.DataFrame(rows, columns=columns).astype(object).where(lambda f: f.notna(), None)
