"""The report's findings in words, generated from the summary dict alone (pure, no I/O).

``findings(summary) -> list[str]``: one sentence per result, with the numbers behind it. Accuracy is quoted
with its item-level 95% interval and compared by the paired item-level test (items are shared by every seed
and strategy; :mod:`dashboards.analysis.items`), with the paper's pooled McNemar test beside it. Statements
that a number does not support are not made: a difference is called significant only when the item-level
test gives p < 0.05, and the amplification only "persists" under a control when r >= 0.5.

>>> findings({"strategies": {"uniform": {"accuracy": 0.745, "n_eval": 200, "seeds": [0]},
...           "random": {"accuracy": 0.675, "n_eval": 200, "seeds": [0], "p_value_vs_uniform": 0.01,
...                      "n_paired": 200, "item_ci_low": 0.61, "item_ci_high": 0.74,
...                      "vs_uniform": {"delta": -0.07, "ci_low": -0.12, "ci_high": -0.02,
...                                     "p_permutation": 0.004, "n_items": 200}}}})
['random: 67.5% (95% CI over items 61.0-74.0) vs uniform 74.5%: -7.0 points (paired 95% CI -12.0 to -2.0, sign-flip p = 0.004 over 200 items; pooled McNemar p = 0.010 over 200 paired items, 1 seed): significant at 0.05.']
"""

from __future__ import annotations

from orchestrator.strategies import BASE, REFERENCE


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _p(p: float) -> str:
    """A p-value readably: three decimals, or scientific notation below 0.001.

    >>> _p(0.0304), _p(5.4e-07)
    ('0.030', '5.4e-07')
    """
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _seeds(entry: dict) -> str:
    n = len(entry.get("seeds") or [])
    return f"{n} seed{'s' if n != 1 else ''}"


def _spread(seed_range: list | None, unit: str) -> str:
    """`` (per seed a-b)`` beside a seed-averaged statistic, when there are several seeds."""
    if not seed_range or len(seed_range) != 2 or seed_range[0] == seed_range[1]:
        return ""
    low, high = seed_range
    if unit == "%":
        return f" (per seed {100 * low:.1f}-{100 * high:.1f}%)"
    return f" (per seed {low:.2f}-{high:.2f}x)"


def landscape_findings(land: dict, sft: dict | None) -> list[str]:
    """Flatness, bands, temporal stability and modules of the uniform landscape (and SFT beside it)."""
    out = []
    share = land.get("layer_share") or []
    if share:
        hot, cold = max(range(len(share)), key=share.__getitem__), min(range(len(share)), key=share.__getitem__)
        band = land.get("band_share") or {}
        out.append(
            f"Landscape under uniform ({land.get('n_runs', 0)} run(s), {len(share)} layers): max/min layer share "
            f"{_num(land.get('max_min_ratio'))}x{_spread(land.get('max_min_ratio_seed_range'), 'x')} (layer {hot} "
            f"hottest at {_pct(share[hot], 2)}, layer {cold} coldest at {_pct(share[cold], 2)}); the top 30% of "
            f"layers carry {_pct(land.get('top30_share'))}{_spread(land.get('top30_share_seed_range'), '%')}; "
            f"early/middle/late thirds {_pct(band.get('early'))} / {_pct(band.get('middle'))} / "
            f"{_pct(band.get('late'))}.")
    if land.get("temporal_stability") is not None:
        out.append(f"Temporal stability: layer importance over the first vs the second half of the steps "
                   f"correlates at r = {_num(land['temporal_stability'], '.3f')} (mean over uniform runs).")
    modules = {m: v for m, v in (land.get("module_share") or {}).items() if v is not None}
    if modules:
        top, low = max(modules, key=modules.get), min(modules, key=modules.get)
        out.append(f"Modules: attention {_pct(land.get('attention_share'))}, MLP {_pct(land.get('mlp_share'))}; "
                   f"largest {top} ({_pct(modules[top])}), smallest {low} ({_pct(modules[low])}).")
    if sft and sft.get("max_min_ratio") is not None:
        out.append(f"SFT warm-start on the same model and data: max/min {_num(sft['max_min_ratio'])}x and top-30% "
                   f"share {_pct(sft.get('top30_share'))}, vs GRPO {_num(land.get('max_min_ratio'))}x and "
                   f"{_pct(land.get('top30_share'))}.")
    return out


def _item_ci(entry: dict) -> str:
    if entry.get("item_ci_low") is None:
        return ""
    return f" (95% CI over items {_num(100 * entry['item_ci_low'], '.1f')}-{_num(100 * entry['item_ci_high'], '.1f')})"


def _paired(test: dict) -> str:
    return (f"{100 * test['delta']:+.1f} points (paired 95% CI {_num(100 * test['ci_low'], '.1f')} to "
            f"{_num(100 * test['ci_high'], '.1f')}, sign-flip p = {_p(test['p_permutation'])} over "
            f"{test['n_items']} items")


def strategy_findings(strategies: dict) -> list[str]:
    """Accuracy vs uniform and vs the base model, then the amplification of each non-uniform strategy."""
    out = []
    uniform = strategies.get(REFERENCE, {})
    base_entry = strategies.get(BASE, {})
    for name, entry in strategies.items():
        if name == REFERENCE or entry.get("accuracy") is None:
            continue
        test = entry.get("vs_uniform")
        if uniform.get("accuracy") is None or not test or test.get("delta") is None:
            out.append(f"{name}: {_pct(entry['accuracy'])}{_item_ci(entry)} over {entry.get('n_eval', 0)} items "
                       f"({_seeds(entry)}); no paired uniform evaluation to test against.")
        else:
            p = test["p_permutation"]
            verdict = "significant at 0.05" if p is not None and p < 0.05 else "not significant at 0.05"
            mcnemar = entry.get("p_value_vs_uniform")
            pooled = (f"; pooled McNemar p = {_p(mcnemar)} over {entry.get('n_paired', 0)} paired items, "
                      f"{_seeds(entry)}" if mcnemar is not None else "")
            out.append(f"{name}: {_pct(entry['accuracy'])}{_item_ci(entry)} vs uniform {_pct(uniform['accuracy'])}: "
                       f"{_paired(test)}{pooled}): {verdict}.")
        versus_base = entry.get("vs_base")
        if name != BASE and versus_base and versus_base.get("delta") is not None:
            p = versus_base["p_permutation"]
            side = "above" if versus_base["delta"] > 0 else "below" if versus_base["delta"] < 0 else "level with"
            verdict = "significant at 0.05" if p is not None and p < 0.05 else "not significant at 0.05"
            out.append(f"{name} vs the untrained base model ({_pct(base_entry.get('accuracy'))}): {side} it, "
                       f"{_paired(versus_base)}): {verdict}.")
    base = uniform.get("max_min_ratio")
    for name, entry in strategies.items():
        r = entry.get("rank_shift_corr")
        if name in (REFERENCE, BASE) or r is None:
            continue
        ratio = entry.get("max_min_ratio")
        change = f" ({100 * (ratio / base - 1):+.0f}%)" if ratio is not None and base else ""
        out.append(f"Amplification under {name}: max/min {_num(ratio)}x vs uniform {_num(base)}x{change}; "
                   f"allocated rank vs share shift r = {r:.3f} (mean over {len(entry.get('rank_shift_corr_per_run') or {})}"
                   " seed-paired run(s)).")
    return out


def control_findings(control: dict | None) -> list[str]:
    """Whether the amplification survives per-parameter normalisation and a single module alone."""
    if not control:
        return []
    out = []
    parts = [("per-parameter normalised norms", control.get("per_parameter"))]
    single = control.get("single_module") or {}
    if single:
        module = "q_proj" if "q_proj" in single else next(iter(single))
        parts.append((f"{module} alone (identical shape in every layer)", single[module]))
    for label, part in parts:
        if not part:
            continue
        rs = {s: v["rank_shift_corr"] for s, v in part["strategies"].items() if v.get("rank_shift_corr") is not None}
        if not rs:
            continue
        verdict = "the amplification persists" if min(rs.values()) >= 0.5 else "the amplification weakens or vanishes"
        listed = ", ".join(f"{s} {r:.2f}" for s, r in rs.items())
        out.append(f"Control, {label}: rank vs share shift r = {listed}; {verdict}.")
    return out


def training_findings(training: dict | None, order: list[str]) -> list[str]:
    """Final training correctness reward per strategy (in ``order``) and its spread."""
    training = training or {}
    names = [s for s in order if s in training] + [s for s in training if s not in order]
    finals = {s: training[s]["final_correctness"] for s in names if training[s].get("final_correctness") is not None}
    if not finals:
        return []
    listed = ", ".join(f"{s} {v:.3f}" for s, v in finals.items())
    return [f"Training correctness reward over the last 10% of steps: {listed} "
            f"(spread {max(finals.values()) - min(finals.values()):.3f})."]


def findings(summary: dict) -> list[str]:
    """All findings, in the paper's order: landscape, accuracy, amplification, controls, training."""
    out = []
    if summary.get("landscape"):
        out += landscape_findings(summary["landscape"], summary.get("sft"))
    out += strategy_findings(summary.get("strategies") or {})
    out += control_findings(summary.get("normalized_control"))
    out += training_findings(summary.get("training"), list(summary.get("strategies") or {}))
    from dashboards.analysis.beyond_findings import beyond_findings  # it imports this module's helpers

    return out + beyond_findings(summary)


def cell_findings(cells: list[tuple[str, dict]]) -> list[str]:
    """A study with axes: each cell's findings, prefixed with the cell, in cell order.

    >>> cell_findings([("{lora.rank: 8}", {"findings": ["a."]}), ("{lora.rank: 16}", {"findings": []})])
    ['{lora.rank: 8}: a.']
    """
    return [f"{label}: {line}" for label, part in cells for line in part.get("findings", [])]


# The paper's own numbers (Table 1, sections 3.2-3.4), which the comparison quotes.
PAPER = {"max_min": 2.17, "top30": 0.357, "amplified": 3.00, "r_proportional": 0.946, "r_random": 0.972,
         "accuracy": {"uniform": 0.745, "proportional": 0.700, "random": 0.675, "base": 0.660, "reduced": 0.650}}


def _flatness(land: dict, sft: dict | None) -> str:
    grpo, top = land.get("max_min_ratio"), land.get("top30_share")
    head = (f"Flatness. The paper found GRPO's layer landscape flat (max/min {PAPER['max_min']}x, top 30% of layers "
            f"{_pct(PAPER['top30'])}) where the SFT literature reports >10x and >80%. Here GRPO's max/min is "
            f"{_num(grpo)}x{_spread(land.get('max_min_ratio_seed_range'), 'x')} and its top 30% carry {_pct(top)}")
    if not sft or sft.get("max_min_ratio") is None or grpo is None:
        return head + "; there is no SFT profile on the same model to compare it with."
    ratio = grpo / sft["max_min_ratio"]
    verdict = ("flatter than" if ratio < 0.8 else "more concentrated than" if ratio > 1.25
               else "about as spread as")
    return (head + f", against {_num(sft['max_min_ratio'])}x and {_pct(sft.get('top30_share'))} for the SFT warm "
            f"start on the same model and data: here the GRPO landscape is {verdict} the SFT one"
            + (", the opposite of the paper's contrast." if verdict == "more concentrated than" else "."))


def _amplification(strategies: dict, control: dict | None) -> str:
    uniform = strategies.get(REFERENCE, {}).get("max_min_ratio")
    parts = []
    for name, entry in strategies.items():
        if name in (REFERENCE, BASE) or entry.get("rank_shift_corr") is None:
            continue
        ratio = entry.get("max_min_ratio")
        change = f", {100 * (ratio / uniform - 1):+.0f}%" if ratio is not None and uniform else ""
        parts.append(f"{name} {_num(ratio)}x{change}, r = {entry['rank_shift_corr']:.2f}")
    if not parts:
        return "Amplification: no non-uniform run has a profile and a uniform partner, so it cannot be measured."
    text = (f"Amplification. The paper found non-uniform allocation widens the spread ({PAPER['max_min']}x to "
            f"{PAPER['amplified']:.2f}x under proportional) and that allocated rank predicts the share shift (r = "
            f"{PAPER['r_proportional']} proportional, {PAPER['r_random']} random), also per parameter and for one "
            f"module alone. Here, against uniform's {_num(uniform)}x: " + "; ".join(parts) + ".")
    survives = []
    for label, part in (("per-parameter", (control or {}).get("per_parameter")),
                        ("single-module (q_proj)", ((control or {}).get("single_module") or {}).get("q_proj"))):
        rs = [v["rank_shift_corr"] for v in (part or {}).get("strategies", {}).values()
              if v.get("rank_shift_corr") is not None]
        if rs:
            survives.append((label, min(rs) >= 0.5, ", ".join(f"{r:.2f}" for r in rs)))
    if survives:
        kept = [label for label, ok, _ in survives if ok]
        text += (" Under the controls r = " + "; ".join(f"{label} {rs}" for label, _, rs in survives) + ": the "
                 + ("effect survives both controls, as in the paper." if len(kept) == len(survives) else
                    "effect does not survive the controls, unlike in the paper: at this size it is largely the "
                    "parameter count." if not kept else f"effect survives only the {kept[0]} control."))
    return text


def _accuracy(strategies: dict) -> str:
    uniform = strategies.get(REFERENCE, {})
    paper = ", ".join(f"{name} {_pct(acc)}" for name, acc in PAPER["accuracy"].items())
    if uniform.get("accuracy") is None:
        return f"Accuracy. The paper (200 items, one seed): {paper}. Here no uniform run was evaluated."
    rows, different = [], []
    for name, entry in strategies.items():
        if entry.get("accuracy") is None:
            continue
        ci = _item_ci(entry).removeprefix(" (95% CI over items ").removesuffix(")")
        rows.append(f"{name} {_pct(entry['accuracy'])} [{ci}]")
        test = entry.get("vs_uniform") or {}
        if name != REFERENCE and test.get("p_permutation") is not None and test["p_permutation"] < 0.05:
            different.append(f"{name} ({100 * test['delta']:+.1f} points, p = {_p(test['p_permutation'])})")
    verdict = ("significantly different from uniform by the paired item-level test: " + ", ".join(different)
               if different else "no strategy differs significantly from uniform by the paired item-level test")
    base = [name for name, entry in strategies.items() if name not in (BASE,)
            and (entry.get("vs_base") or {}).get("p_permutation") is not None
            and entry["vs_base"]["p_permutation"] < 0.05]
    base_text = (f"; significantly different from the untrained base model: {', '.join(base)}" if base else
                 "; none differs significantly from the untrained base model" if BASE in strategies else "")
    return (f"Accuracy. The paper (200 items, one seed): {paper}. Here ({uniform.get('n_items') or '?'} items, "
            f"{_seeds(uniform)}): " + ", ".join(rows) + f". {verdict[0].upper() + verdict[1:]}{base_text}.")


def paper_comparison(summary: dict, context: dict) -> list[str]:
    """What this study shows of each of the paper's findings, in words, and what kind of study it is.

    ``context``: ``model`` (a label), ``task``, ``steps`` (GRPO steps), from the study's config.
    """
    out = []
    if summary.get("landscape"):
        out.append(_flatness(summary["landscape"], summary.get("sft")))
    strategies = summary.get("strategies") or {}
    out.append(_amplification(strategies, summary.get("normalized_control")))
    out.append(_accuracy(strategies))
    paper_like = context.get("task") == "gsm8k" and "1.5B" in str(context.get("model"))
    if not paper_like:
        out.append(f"This is a miniature: {context.get('model', 'the model')}, on {context.get('task', 'the task')}, "
                   f"with {context.get('steps', '?')} GRPO steps; not the paper's Qwen2.5-1.5B on GSM8K with 1,000 steps. "
                   "It shows what the pipeline measures and whether the paper's effects appear at this scale, not "
                   "whether they hold for the paper's model.")
    return out
