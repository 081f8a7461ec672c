"""The beyond-the-paper results in words (AdaLoRA, rounds, decomposition, geometry), from a cell's summary alone.

A difference is called a difference only when its 95% interval excludes 0; with one seed no interval exists
and the sentence says so.

>>> from dashboards.analysis.schema import CellSummary, Decomposition, DecompositionStrategy, SeedDifferences
>>> part = DecompositionStrategy(components=["correctness", "format", "kl"], n_runs=2,
...     cold_share={"format": 0.2, "correctness": 0.1, "kl": 0.15}, layer_share={}, decomposed_steps=[6, 6],
...     cold_layers_per_seed={}, format_minus_correctness=SeedDifferences(mean=0.1, ci_low=0.02, ci_high=0.18, n=2))
>>> beyond_findings(CellSummary(decomposition=Decomposition({"uniform": part}, cold_fraction=0.3)))[0][:96]
'Per-reward decomposition (uniform, 2 seeds): the coldest 30% of layers by total S(l) carry 20.0%'
"""

from __future__ import annotations

import math

from dashboards.analysis.schema import AdaLoraSummary, CellSummary, Decomposition, Geometry, Rounds
from dashboards.formatting import number as _num
from dashboards.formatting import percent as _pct


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def rounds_findings(rounds: Rounds | None) -> list[str]:
    if rounds is None:
        return []
    steps = [f"round {r.round} ({r.strategy}) {_num(r.max_min_ratio)}x" for r in rounds.rounds]
    ratios = [r.max_min_ratio for r in rounds.rounds if _finite(r.max_min_ratio)]
    trend = ("rises with every round (the feedback loop compounds)" if len(ratios) > 1 and
             all(b > a for a, b in zip(ratios, ratios[1:], strict=False)) else
             "does not rise monotonically over the rounds" if len(ratios) > 1 else "has too few rounds to compare")
    out = f"Re-profiling rounds: the max/min ratio of each round's own profile is {', '.join(steps)}; it {trend}."
    weight = [r for r in rounds.rounds if _finite(r.weight_gradient_max_min)]
    if weight:
        out += (" On the frozen weights' gradient (rank-invariant): " + ", ".join(
            f"round {r.round} {_num(r.weight_gradient_max_min)}x" for r in weight) + ".")
    return [out]


def decomposition_findings(decomposition: Decomposition | None) -> list[str]:
    if decomposition is None:
        return []
    out = []
    fraction = decomposition.cold_fraction
    for strategy, entry in decomposition.strategies.items():
        shares = ", ".join(f"{_pct(v)} of the {c} gradient" for c, v in entry.cold_share.items())
        n = entry.n_runs
        head = (f"Per-reward decomposition ({strategy}, {n} seed{'s' if n != 1 else ''}): the coldest "
                f"{round(100 * fraction)}% of layers by total S(l) carry {shares}")
        test = entry.format_minus_correctness
        if test is None:
            out.append(head + "; the study has no format and correctness rewards to test the paper's hypothesis.")
            continue
        if not (_finite(test.ci_low) and _finite(test.ci_high)):
            mean = f"{100 * test.mean:+.1f} points" if _finite(test.mean) else "undefined"
            out.append(head + f". Format minus correctness share: {mean}, defined for {test.n} of {n} seed(s) "
                       "(a component without gradient in every decomposed step has no shares): no interval, so no "
                       "conclusion on the paper's hypothesis.")
            continue
        span = f"{100 * test.mean:+.1f} points (95% CI {100 * test.ci_low:+.1f} to {100 * test.ci_high:+.1f})"
        if test.ci_low > 0:
            verdict = "consistent with the paper's hypothesis that cold layers carry formatting"
        elif test.ci_high < 0:
            verdict = "the opposite of the paper's hypothesis: cold layers carry relatively more of the correctness signal"
        else:
            verdict = "the interval includes 0, so this does not support the hypothesis that cold layers carry formatting"
        out.append(head + f". Format minus correctness share: {span}; {verdict}.")
    return out


def geometry_findings(geometry: Geometry | None) -> list[str]:
    if geometry is None:
        return []
    out = []
    for strategy, entry in geometry.strategies.items():
        parts = [f"update share vs gradient share r = {_num(entry.update_vs_gradient_r)}"]
        if _finite(entry.update_vs_rank_rho):
            parts.append(f"vs allocated rank Spearman {_num(entry.update_vs_rank_rho)}")
        parts.append(f"effective rank {_pct(entry.effective_rank_fraction, 0)} of the LoRA rank")
        parts.append(f"{_pct(entry.principal_overlap)} of the update inside W0's top-k singular subspace")
        out.append(f"Where the update goes ({strategy}, {entry.n_runs} run(s), last measured step): "
                   + "; ".join(parts) + ".")
    return out


def adalora_findings(adalora: AdaLoraSummary | None) -> list[str]:
    if adalora is None:
        return []
    totals = sorted({(v.total_rank_first_step, v.total_rank_last_step) for v in adalora.per_seed.values()})
    moved = ", ".join(f"{a} -> {b}" for a, b in totals)
    return [f"AdaLoRA ({adalora.n_runs} run(s)): total rank {moved} over training; its final per-layer ranks "
            f"against {adalora.compared_with}'s allocation of the same seed: Spearman r = "
            f"{_num(adalora.spearman_vs_proportional)}; across seeds: r = {_num(adalora.cross_seed_spearman)} "
            "(n/a with one seed or equal ranks)."]


def beyond_findings(summary: CellSummary) -> list[str]:
    """AdaLoRA, rounds, decomposition and geometry findings, in that order (empty for what was not measured)."""
    return (adalora_findings(summary.adalora) + rounds_findings(summary.rounds)
            + decomposition_findings(summary.decomposition) + geometry_findings(summary.geometry))
