"""The report's findings in words, generated from a cell's summary alone (pure, no I/O).

``findings(summary) -> list[str]``: one sentence per result, with the numbers behind it. Accuracy is quoted
with its item-level 95% interval; a difference between strategies, or to the base model, is judged by the
seed-aware verdict (:mod:`dashboards.analysis.verdicts`: a t-test over seeds with the run-to-run variance,
Holm-adjusted over the cell's comparisons), with the item-level and pooled McNemar figures beside it as
descriptive. Statements that a number does not support are not made: a difference is called significant only
when its adjusted p is below 0.05, a comparison with one seed says it is not testable, and the amplification
only "persists" under a control when r >= 0.5.

>>> from dashboards.analysis.schema import CellSummary, PairedDifference, StrategyResult
>>> findings(CellSummary(strategies={"uniform": StrategyResult(accuracy=0.745, n_eval=200, seeds=[0, 1, 2]),
...     "random": StrategyResult(accuracy=0.675, n_eval=200, seeds=[0, 1, 2], p_value_vs_uniform=0.01, n_paired=600,
...                              item_ci_low=0.61, item_ci_high=0.74, vs_uniform=PairedDifference(
...                                  delta=-0.07, ci_low=-0.12, ci_high=-0.02, p_value=0.03, p_unadjusted=0.01,
...                                  significant=True, test="t over seeds", n_seeds=3, df=4, p_permutation=0.004,
...                                  n_items=200))}))[0]
'random: 67.5% (95% CI over items 61.0-74.0) vs uniform 74.5%: -7.0 points (95% CI over seeds -12.0 to -2.0; t over seeds, 3 seeds, 4 df: p = 0.010, adjusted 0.030): significant at 0.05. Descriptive, with the runs held fixed: sign-flip p = 0.004 over 200 items, pooled McNemar p = 0.010 over 600 paired items.'
"""

from __future__ import annotations

from dashboards.analysis.beyond_findings import beyond_findings
from dashboards.analysis.robustness import not_robust_note, robustness_summary
from dashboards.analysis.schema import (
    CellSummary,
    Detectability,
    Landscape,
    NormalizedControl,
    PairedDifference,
    Robustness,
    SFTLandscape,
    StrategyResult,
    TrainingResult,
)
from dashboards.formatting import number, p_value, percent
from orchestrator.core.roles import BASE, REFERENCE


def _seeds(entry: StrategyResult) -> str:
    n = len(entry.seeds or [])
    return f"{n} seed{'s' if n != 1 else ''}"


def _spread(seed_range: list | None, unit: str) -> str:
    """`` (per seed a-b)`` beside a seed-averaged statistic, when there are several seeds."""
    if not seed_range or len(seed_range) != 2 or seed_range[0] == seed_range[1]:
        return ""
    low, high = seed_range
    if unit == "%":
        return f" (per seed {100 * low:.1f}-{100 * high:.1f}%)"
    return f" (per seed {low:.2f}-{high:.2f}x)"


def landscape_findings(land: Landscape, sft: SFTLandscape | None) -> list[str]:
    """Flatness, bands, temporal stability and modules of the uniform landscape (and SFT beside it)."""
    out = []
    share = land.layer_share or []
    if share:
        hot, cold = max(range(len(share)), key=share.__getitem__), min(range(len(share)), key=share.__getitem__)
        band = land.band_share
        out.append(
            f"Landscape under uniform ({land.n_runs} run(s), {len(share)} layers): max/min layer share "
            f"{number(land.max_min_ratio)}x{_spread(land.max_min_ratio_seed_range, 'x')} (layer {hot} "
            f"hottest at {percent(share[hot], 2)}, layer {cold} coldest at {percent(share[cold], 2)}); the top 30% "
            f"of layers carry {percent(land.top30_share)}{_spread(land.top30_share_seed_range, '%')}; "
            f"early/middle/late thirds {percent(band.early)} / {percent(band.middle)} / {percent(band.late)}.")
    if land.temporal_stability is not None:
        out.append(f"Temporal stability: layer importance over the first vs the second half of the steps "
                   f"correlates at r = {number(land.temporal_stability, '.3f')} (mean over uniform runs).")
    modules = {m: v for m, v in (land.module_share or {}).items() if v is not None}
    if modules:
        top, low = max(modules, key=modules.get), min(modules, key=modules.get)
        out.append(f"Modules: attention {percent(land.attention_share)}, MLP {percent(land.mlp_share)}; "
                   f"largest {top} ({percent(modules[top])}), smallest {low} ({percent(modules[low])}).")
    if sft is not None and sft.max_min_ratio is not None:
        out.append(f"SFT warm-start on the same model and data: max/min {number(sft.max_min_ratio)}x and top-30% "
                   f"share {percent(sft.top30_share)}, vs GRPO {number(land.max_min_ratio)}x and "
                   f"{percent(land.top30_share)}.")
    return out


def _item_ci(entry: StrategyResult) -> str:
    if entry.item_ci_low is None:
        return ""
    return f" (95% CI over items {percent(entry.item_ci_low, sign='')}-{percent(entry.item_ci_high, sign='')})"


def _paired(test: PairedDifference) -> str:
    """The difference and its seed-aware verdict, e.g. ``-7.0 points (95% CI over seeds ...): significant at
    0.05``, or ``-7.0 points: not testable with 1 seed``."""
    delta = f"{100 * test.delta:+.1f} points"
    if test.p_value is None:
        return f"{delta}: {test.test or 'not testable'}"
    name = test.test.split(",")[0] if test.test else "test"
    verdict = "significant at 0.05" if test.significant else "not significant at 0.05"
    return (f"{delta} (95% CI over seeds {percent(test.ci_low, sign='')} to {percent(test.ci_high, sign='')}; "
            f"{name}, {test.n_seeds} seeds, {test.df} df: p = {p_value(test.p_unadjusted)}, adjusted "
            f"{p_value(test.p_value)}): {verdict}")


def _descriptive(test: PairedDifference, mcnemar: str = "") -> str:
    return (f" Descriptive, with the runs held fixed: sign-flip p = {p_value(test.p_permutation)} over "
            f"{test.n_items} items{mcnemar}.")


def strategy_findings(strategies: dict[str, StrategyResult], robustness: Robustness | None = None) -> list[str]:
    """Accuracy vs uniform and vs the base model, then the amplification of each non-uniform strategy; a verdict
    that differs in a replicate of the study is marked not robust."""
    out = []
    uniform = strategies.get(REFERENCE) or StrategyResult()
    base_entry = strategies.get(BASE) or StrategyResult()
    for name, entry in strategies.items():
        if name == REFERENCE or entry.accuracy is None:
            continue
        test = entry.vs_uniform
        if uniform.accuracy is None or test is None or test.delta is None:
            out.append(f"{name}: {percent(entry.accuracy)}{_item_ci(entry)} over {entry.n_eval} items "
                       f"({_seeds(entry)}); no paired uniform evaluation to test against.")
        else:
            mcnemar = entry.p_value_vs_uniform
            pooled = (f", pooled McNemar p = {p_value(mcnemar)} over {entry.n_paired or 0} paired items"
                      if mcnemar is not None else "")
            out.append(f"{name}: {percent(entry.accuracy)}{_item_ci(entry)} vs uniform {percent(uniform.accuracy)}: "
                       f"{_paired(test)}.{_descriptive(test, pooled)}"
                       + not_robust_note(robustness, comparison_key(name, REFERENCE)))
        versus_base = entry.vs_base
        if name != BASE and versus_base is not None and versus_base.delta is not None:
            side = "above" if versus_base.delta > 0 else "below" if versus_base.delta < 0 else "level with"
            out.append(f"{name} vs the untrained base model ({percent(base_entry.accuracy)}): {side} it, "
                       f"{_paired(versus_base)}.{_descriptive(versus_base)}"
                       + not_robust_note(robustness, comparison_key(name, BASE)))
    base = uniform.max_min_ratio
    for name, entry in strategies.items():
        r = entry.rank_shift_corr
        if name in (REFERENCE, BASE) or r is None:
            continue
        ratio = entry.max_min_ratio
        change = f" ({100 * (ratio / base - 1):+.0f}%)" if ratio is not None and base else ""
        out.append(f"Amplification under {name}: max/min {number(ratio)}x vs uniform {number(base)}x{change}; "
                   f"allocated rank vs share shift r = {r:.3f} (mean over {len(entry.rank_shift_corr_per_run or {})}"
                   " seed-paired run(s)).")
    return out


WEIGHT_GRADIENT_LABEL = "frozen-weight gradient ||dL/dW|| (rank-invariant)"


def _control_parts(control: NormalizedControl) -> list[tuple[str, dict]]:
    """(label, strategies) of each control the findings state: per parameter, one module (q_proj), then the
    frozen weights' gradient where it was measured."""
    parts = []
    if control.per_parameter is not None:
        parts.append(("per-parameter normalised norms", control.per_parameter.strategies))
    single = control.single_module or {}
    if single:
        module = "q_proj" if "q_proj" in single else next(iter(single))
        parts.append((f"{module} alone (identical shape in every layer)", single[module].strategies))
    if control.weight_gradient is not None:
        parts.append((WEIGHT_GRADIENT_LABEL, control.weight_gradient.strategies))
    return parts


def control_findings(control: NormalizedControl | None, robustness: Robustness | None = None) -> list[str]:
    """Whether the amplification survives per-parameter normalisation and a single module alone."""
    if control is None:
        return []
    out = []
    for label, strategies in _control_parts(control):
        rs = {s: v.rank_shift_corr for s, v in strategies.items() if v.rank_shift_corr is not None}
        if not rs:
            continue
        verdict = "the amplification persists" if persists(rs.values()) else "the amplification weakens or vanishes"
        listed = ", ".join(f"{s} {r:.2f}" for s, r in rs.items())
        out.append(f"Control, {label}: rank vs share shift r = {listed}; {verdict}."
                   + not_robust_note(robustness, control_key(label)))
    return out


def training_findings(training: dict[str, TrainingResult] | None, order: list[str]) -> list[str]:
    """Final training correctness reward per strategy (in ``order``) and its spread."""
    training = training or {}
    names = [s for s in order if s in training] + [s for s in training if s not in order]
    finals = {s: training[s].final_correctness for s in names if training[s].final_correctness is not None}
    if not finals:
        return []
    listed = ", ".join(f"{s} {v:.3f}" for s, v in finals.items())
    return [f"Training correctness reward over the last 10% of steps: {listed} "
            f"(spread {max(finals.values()) - min(finals.values()):.3f})."]


def findings(summary: CellSummary) -> list[str]:
    """All findings, in the paper's order: landscape, accuracy, amplification, controls, training, then beyond."""
    out = robustness_summary(summary.robustness)
    if summary.landscape is not None:
        out += landscape_findings(summary.landscape, summary.sft)
    out += strategy_findings(summary.strategies, summary.robustness)
    out += control_findings(summary.normalized_control, summary.robustness)
    out += training_findings(summary.training, list(summary.strategies))
    return out + beyond_findings(summary)


def cell_findings(cells: list[tuple[str, CellSummary]]) -> list[str]:
    """A study with axes: each cell's findings, prefixed with the cell, in cell order.

    >>> cell_findings([("{lora.rank: 8}", CellSummary(findings=["a."])), ("{lora.rank: 16}", CellSummary())])
    ['{lora.rank: 8}: a.']
    """
    return [f"{label}: {line}" for label, part in cells for line in part.findings]


# The rules the findings state verdicts by (one place: the sentences and stated_verdicts use them).
FLATTER, MORE_CONCENTRATED = 0.8, 1.25  # GRPO's max/min over SFT's: below, flatter; above, more concentrated
CONTROL_R = 0.5  # the amplification persists under a control when every strategy's rank-shift r reaches this


def flatness_of(land: Landscape | None, sft: SFTLandscape | None) -> str | None:
    """GRPO's landscape against SFT's: "flatter than", "about as spread as", "more concentrated than" (None:
    nothing to compare)."""
    if land is None or sft is None or sft.max_min_ratio is None or land.max_min_ratio is None:
        return None
    ratio = land.max_min_ratio / sft.max_min_ratio
    return ("flatter than" if ratio < FLATTER else "more concentrated than" if ratio > MORE_CONCENTRATED
            else "about as spread as")


def persists(rs) -> bool:
    return min(rs) >= CONTROL_R


# The name of each verdict stated_verdicts returns (and a replicate's verdicts are matched by).
FLATNESS_KEY = "GRPO landscape vs SFT"


def comparison_key(name: str, reference: str) -> str:
    """``proportional vs uniform``, ``proportional vs base``; uniform against base is one comparison."""
    return f"{REFERENCE} vs {BASE}" if {name, reference} == {REFERENCE, BASE} else f"{name} vs {reference}"


def control_key(label: str) -> str:
    return f"amplification under {label.split(' (')[0]}"


def difference_of(test: PairedDifference | None) -> str | None:
    """A comparison's verdict in one word: higher, lower, no difference, or not testable (None: no comparison)."""
    if test is None or test.delta is None:
        return None
    if test.p_value is None:
        return "not testable"
    return ("higher" if test.delta > 0 else "lower") if test.significant else "no difference"


def stated_verdicts(summary: CellSummary) -> dict[str, str]:
    """Every verdict the findings and the paper comparison state, by what it is about (the robustness benchmark
    compares them across machines): each strategy against uniform and the base model, GRPO's flatness against
    SFT, and whether the amplification persists under each control."""
    out = {}
    for name, entry in summary.strategies.items():
        for reference, test in ((REFERENCE, entry.vs_uniform), (BASE, entry.vs_base)):
            verdict = difference_of(test)
            if verdict is not None and not (name == BASE and reference == REFERENCE):  # = uniform vs base
                out[comparison_key(name, reference)] = verdict
    flatness = flatness_of(summary.landscape, summary.sft)
    if flatness is not None:
        out[FLATNESS_KEY] = flatness
    for label, strategies in _control_parts(summary.normalized_control or NormalizedControl()):
        rs = [v.rank_shift_corr for v in strategies.values() if v.rank_shift_corr is not None]
        if rs:
            out[control_key(label)] = "persists" if persists(rs) else "weakens or vanishes"
    return out


# The paper's own numbers (Table 1, sections 3.2-3.4), which the comparison quotes.
PAPER = {"max_min": 2.17, "top30": 0.357, "amplified": 3.00, "r_proportional": 0.946, "r_random": 0.972,
         "accuracy": {"uniform": 0.745, "proportional": 0.700, "random": 0.675, "base": 0.660, "reduced": 0.650}}


def _flatness(land: Landscape, sft: SFTLandscape | None, robustness: Robustness | None) -> str:
    grpo, top = land.max_min_ratio, land.top30_share
    head = (f"Flatness. The paper found GRPO's layer landscape flat (max/min {PAPER['max_min']}x, top 30% of layers "
            f"{percent(PAPER['top30'])}) where the SFT literature reports >10x and >80%. Here GRPO's max/min is "
            f"{number(grpo)}x{_spread(land.max_min_ratio_seed_range, 'x')} and its top 30% carry {percent(top)}")
    verdict = flatness_of(land, sft)
    if verdict is None:
        return head + "; there is no SFT profile on the same model to compare it with."
    return (head + f", against {number(sft.max_min_ratio)}x and {percent(sft.top30_share)} for the SFT warm "
            f"start on the same model and data: here the GRPO landscape is {verdict} the SFT one"
            + (", the opposite of the paper's contrast." if verdict == "more concentrated than" else ".")
            + not_robust_note(robustness, FLATNESS_KEY))


def _amplification(strategies: dict[str, StrategyResult], control: NormalizedControl | None,
                   robustness: Robustness | None) -> str:
    uniform = (strategies.get(REFERENCE) or StrategyResult()).max_min_ratio
    parts = []
    for name, entry in strategies.items():
        if name in (REFERENCE, BASE) or entry.rank_shift_corr is None:
            continue
        ratio = entry.max_min_ratio
        change = f", {100 * (ratio / uniform - 1):+.0f}%" if ratio is not None and uniform else ""
        parts.append(f"{name} {number(ratio)}x{change}, r = {entry.rank_shift_corr:.2f}")
    if not parts:
        return "Amplification: no non-uniform run has a profile and a uniform partner, so it cannot be measured."
    text = (f"Amplification. The paper found non-uniform allocation widens the spread ({PAPER['max_min']}x to "
            f"{PAPER['amplified']:.2f}x under proportional) and that allocated rank predicts the share shift (r = "
            f"{PAPER['r_proportional']} proportional, {PAPER['r_random']} random), also per parameter and for one "
            f"module alone. Here, against uniform's {number(uniform)}x: " + "; ".join(parts) + ".")
    control = control or NormalizedControl()
    single = control.single_module.get("q_proj")
    survives = []
    for label, part in (("per-parameter", control.per_parameter), ("single-module (q_proj)", single),
                        ("frozen-weight gradient", control.weight_gradient)):
        rs = [v.rank_shift_corr for v in (part.strategies if part is not None else {}).values()
              if v.rank_shift_corr is not None]
        if rs:
            survives.append((label, persists(rs), ", ".join(f"{r:.2f}" for r in rs)))
    if survives:
        kept = [label for label, ok, _ in survives if ok]
        text += (" Under the controls r = " + "; ".join(f"{label} {rs}" for label, _, rs in survives) + ": the "
                 + ("effect survives every control, as in the paper." if len(kept) == len(survives) else
                    "effect does not survive the controls, unlike in the paper: at this size it is largely the "
                    "parameter count." if not kept else f"effect survives only the {' and '.join(kept)} control(s)."))
        weight = next((ok for label, ok, _ in survives if label == "frozen-weight gradient"), None)
        if weight is not None:
            text += (" On the frozen weights' gradient, which no LoRA rank or scaling touches, "
                     + ("allocated rank still predicts the shift: the amplification is not only mechanical."
                        if weight else "allocated rank no longer predicts the shift: the amplification is the "
                        "LoRA gradient's dependence on rank, not a change in where the objective pulls."))
    return text + not_robust_note(robustness, *(control_key(label) for label, _ in _control_parts(control)))


def _accuracy(strategies: dict[str, StrategyResult], robustness: Robustness | None) -> str:
    uniform = strategies.get(REFERENCE) or StrategyResult()
    paper = ", ".join(f"{name} {percent(acc)}" for name, acc in PAPER["accuracy"].items())
    if uniform.accuracy is None:
        return f"Accuracy. The paper (200 items, one seed): {paper}. Here no uniform run was evaluated."
    rows, different = [], []
    for name, entry in strategies.items():
        if entry.accuracy is None:
            continue
        ci = _item_ci(entry).removeprefix(" (95% CI over items ").removesuffix(")")
        rows.append(f"{name} {percent(entry.accuracy)} [{ci}]")
        test = entry.vs_uniform
        if name != REFERENCE and test is not None and test.significant:
            different.append(f"{name} ({100 * test.delta:+.1f} points, adjusted p = {p_value(test.p_value)})")
    verdict = ("significantly different from uniform by the test over seeds: " + ", ".join(different)
               if different else "no strategy differs significantly from uniform by the test over seeds")
    base = [name for name, entry in strategies.items() if name != BASE and entry.vs_base is not None
            and entry.vs_base.significant]
    base_text = (f"; significantly different from the untrained base model: {', '.join(base)}" if base else
                 "; none differs significantly from the untrained base model" if BASE in strategies else "")
    keys = [comparison_key(name, reference) for name in strategies for reference in (REFERENCE, BASE)
            if name != reference and not (name == BASE and reference == REFERENCE)]
    return (f"Accuracy. The paper (200 items, one seed): {paper}. Here ({uniform.n_items or '?'} items, "
            f"{_seeds(uniform)}): " + ", ".join(rows) + f". {verdict[0].upper() + verdict[1:]}{base_text}."
            + not_robust_note(robustness, *keys))


def detectable(found: Detectability | None) -> str:
    """What the study can detect, from its own run-to-run variance, in words.

    >>> from dashboards.analysis.schema import Detectability
    >>> detectable(Detectability(run_sd=0.03, df=4, n_seeds=2, n_items=512, n_pooled_strategies=4, family_size=7,
    ...                          alpha=0.05 / 7, minimum_detectable_difference=0.19, paper_gap=0.045,
    ...                          seeds_for_paper_gap=14))[:120]
    "What this study can detect. With 2 seeds per strategy, a run's accuracy on these 512 items varies by 3.0 points from see"
    """
    if found is None:
        return ("What this study can detect: no strategy has two seeds, so there is no run-to-run variance to test "
                "a difference against; run at least two seeds per strategy.")
    needed = (f"{found.seeds_for_paper_gap} seeds per strategy" if found.seeds_for_paper_gap is not None
              else "more than 200 seeds per strategy")
    mde = found.minimum_detectable_difference
    return (f"What this study can detect. With {found.n_seeds} seeds per strategy, a run's accuracy on these "
            f"{found.n_items} items varies by {percent(found.run_sd, sign=' points')} from seed to seed (the SD "
            f"pooled over {found.n_pooled_strategies} strategies, {found.df} degrees of freedom). At the strictest "
            f"Holm threshold of its {found.family_size} comparisons (p < {found.alpha:.4f}) a difference from "
            f"uniform is found with 80% power only if it is at least "
            f"{percent(mde, sign=' points') if mde is not None else 'beyond any accuracy'}. The paper's "
            f"{percent(found.paper_gap, sign='-point')} gap (uniform 74.5% vs proportional 70.0%) would need "
            f"{needed} at this variance.")


def paper_comparison(summary: CellSummary, context: dict) -> list[str]:
    """What this study shows of each of the paper's findings, in words, and what kind of study it is.

    ``context``: ``model`` (a label), ``task``, ``steps`` (GRPO steps), from the study's config.
    """
    out = []
    if summary.landscape is not None:
        out.append(_flatness(summary.landscape, summary.sft, summary.robustness))
    out.append(_amplification(summary.strategies, summary.normalized_control, summary.robustness))
    out.append(_accuracy(summary.strategies, summary.robustness))
    out.append(detectable(summary.detectability))
    paper_like = context.get("task") == "gsm8k" and "1.5B" in str(context.get("model"))
    if not paper_like:
        out.append(f"This is a miniature: {context.get('model', 'the model')}, on {context.get('task', 'the task')}, "
                   f"with {context.get('steps', '?')} GRPO steps; not the paper's Qwen2.5-1.5B on GSM8K with 1,000 steps. "
                   "It shows what the pipeline measures and whether the paper's effects appear at this scale, not "
                   "whether they hold for the paper's model.")
    return out + robustness_summary(summary.robustness)
