"""The report's findings in words, generated from the summary dict alone (pure, no I/O).

``findings(summary) -> list[str]``: one sentence per result, with the numbers behind it, e.g.
"proportional: 70.0% vs uniform 74.5% (-4.5 points), exact McNemar p = 0.030 over 600 paired items
(3 seeds)". Statements that a number does not support are not made: a difference is called significant
only at p < 0.05, and the amplification only "persists" under a control when r >= 0.5.

>>> findings({"strategies": {"uniform": {"accuracy": 0.745, "n_eval": 200, "seeds": [0]},
...           "random": {"accuracy": 0.675, "n_eval": 200, "seeds": [0], "p_value_vs_uniform": 0.01,
...                      "n_paired": 200, "ci_low": 0.607, "ci_high": 0.736}}})
['random: 67.5% [60.7, 73.6] vs uniform 74.5% (-7.0 points), exact McNemar p = 0.010 over 200 paired items (1 seed): significant at 0.05.']
"""

from __future__ import annotations

from orchestrator.strategies import REFERENCE


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


def landscape_findings(land: dict, sft: dict | None) -> list[str]:
    """Flatness, bands, temporal stability and modules of the uniform landscape (and SFT beside it)."""
    out = []
    share = land.get("layer_share") or []
    if share:
        hot, cold = max(range(len(share)), key=share.__getitem__), min(range(len(share)), key=share.__getitem__)
        band = land.get("band_share") or {}
        out.append(
            f"Landscape under uniform ({land.get('n_runs', 0)} run(s), {len(share)} layers): max/min layer share "
            f"{_num(land.get('max_min_ratio'))}x (layer {hot} hottest at {_pct(share[hot], 2)}, layer {cold} "
            f"coldest at {_pct(share[cold], 2)}); the top 30% of layers carry {_pct(land.get('top30_share'))}; "
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


def strategy_findings(strategies: dict) -> list[str]:
    """Accuracy vs uniform with the McNemar test, then the amplification of each non-uniform strategy."""
    out = []
    uniform = strategies.get(REFERENCE, {})
    for name, entry in strategies.items():
        if name == REFERENCE or entry.get("accuracy") is None:
            continue
        p = entry.get("p_value_vs_uniform")
        if uniform.get("accuracy") is None or p is None:
            out.append(f"{name}: {_pct(entry['accuracy'])} over {entry.get('n_eval', 0)} items "
                       f"({_seeds(entry)}); no paired uniform evaluation to test against.")
            continue
        delta = 100 * (entry["accuracy"] - uniform["accuracy"])
        verdict = "significant at 0.05" if p < 0.05 else "not significant at 0.05"
        ci = (f" [{_num(100 * entry['ci_low'], '.1f')}, {_num(100 * entry['ci_high'], '.1f')}]"
              if entry.get("ci_low") is not None else "")
        out.append(f"{name}: {_pct(entry['accuracy'])}{ci} vs uniform {_pct(uniform['accuracy'])} "
                   f"({delta:+.1f} points), exact McNemar p = {_p(p)} over {entry.get('n_paired', 0)} paired items "
                   f"({_seeds(entry)}): {verdict}.")
    base = uniform.get("max_min_ratio")
    for name, entry in strategies.items():
        r = entry.get("rank_shift_corr")
        if name == REFERENCE or r is None:
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
    return out


def cell_findings(cells: list[tuple[str, dict]]) -> list[str]:
    """A study with axes: each cell's findings, prefixed with the cell, in cell order.

    >>> cell_findings([("{lora.rank: 8}", {"findings": ["a."]}), ("{lora.rank: 16}", {"findings": []})])
    ['{lora.rank: 8}: a.']
    """
    return [f"{label}: {line}" for label, part in cells for line in part.get("findings", [])]
