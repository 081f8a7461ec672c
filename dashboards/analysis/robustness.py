"""Verdicts that do not depend on the machine: a study's verdicts against the same study run elsewhere.

A study's numbers follow the CPU (torch's kernels for its instruction set, the thread count's order of
floating-point sums): on another machine the warm start, every rollout and every accuracy come out different,
so a verdict near its threshold can flip. One machine cannot say which verdicts would; the same study run
under another kernel setting or on another machine can. ``rankstudy analyze DIR --replicate OTHER`` analyses
both, and every verdict the findings state (:func:`dashboards.analysis.findings.stated_verdicts`) that is not
the same in every replicate is marked "not robust" in the findings, the paper comparison and summary.json
(``robustness``). ``benchmarks/bench_machines.py`` makes such replicates on one machine.

Pure: the analysis reads the replicates; this module compares what it found.

>>> rob = compare_verdicts({"random vs base": "higher", "reduced vs base": "higher"},
...                        [(Replicate("b", "/runs/b", {"model": "EPYC", "capability": "AVX2"}),
...                          {"random vs base": "higher", "reduced vs base": "no difference"})])
>>> rob.not_robust
['reduced vs base']
>>> not_robust_note(rob, "reduced vs base")
' Not robust: no difference on b (EPYC, AVX2 kernels).'
>>> not_robust_note(rob, "random vs base")
''
"""

from __future__ import annotations

from dashboards.analysis.schema import Replicate, Robustness

HERE = "here"
IGNORED_SETTINGS = ("cache_dir", "resources")  # where and with what a study ran, not what it is


def differing_setting(here: dict, other: dict, prefix: str = "") -> str | None:
    """The first config key whose value differs between two resolved study configs (study.yaml's ``config``),
    as ``key: a vs b``; None when they are the same study. Where and with what resources it ran do not count.

    >>> differing_setting({"grpo": {"max_steps": 48}, "cache_dir": "/a"}, {"grpo": {"max_steps": 24}, "cache_dir": "/b"})
    'grpo.max_steps: 48 vs 24'
    """
    for key in sorted(set(here) | set(other)):
        dotted = f"{prefix}{key}"
        if not prefix and key in IGNORED_SETTINGS:
            continue
        a, b = here.get(key), other.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = differing_setting(a, b, dotted + ".")
            if found is not None:
                return found
        elif a != b:
            return f"{dotted}: {a!r} vs {b!r}"
    return None


def unique_labels(names: list[str]) -> list[str]:
    """Replicate labels from their directory names, made distinct (and never ``here``).

    >>> unique_labels(["laptop", "laptop", "here"])
    ['laptop', 'laptop-2', 'here-3']
    """
    out: list[str] = []
    for i, name in enumerate(names, start=1):
        label = name if name not in out and name != HERE else f"{name}-{i}"
        out.append(label)
    return out


def compare_verdicts(here: dict[str, str], replicates: list[tuple[Replicate, dict[str, str] | None]]) -> Robustness:
    """Each of ``here``'s verdicts beside every replicate's (None: the replicate does not state it, e.g. it lacks
    the cell or a strategy's runs); a verdict that any replicate states otherwise is not robust."""
    table = {key: {HERE: verdict, **{rep.label: (theirs or {}).get(key) for rep, theirs in replicates}}
             for key, verdict in here.items()}
    not_robust = [key for key, by in table.items() if len(set(by.values())) > 1]
    return Robustness(replicates=[rep for rep, _ in replicates], verdicts=table, not_robust=not_robust)


def machine_label(cpu: dict | None) -> str:
    """A replicate's machine in words: CPU model and kernels (and the override, when one was set).

    >>> machine_label({"model": "Intel Xeon", "capability": "DEFAULT", "aten_cpu_capability": "default"})
    'Intel Xeon, DEFAULT kernels, ATEN_CPU_CAPABILITY=default'
    """
    if not cpu:
        return "machine not recorded"
    text = f"{cpu.get('model', '?')}, {cpu.get('capability', '?')} kernels"
    return text + (f", ATEN_CPU_CAPABILITY={cpu['aten_cpu_capability']}" if cpu.get("aten_cpu_capability") else "")


def not_robust_note(robustness: Robustness | None, *keys: str) -> str:
    """`` Not robust: <verdict> on <replicate> (<machine>).`` after a finding whose verdict differs elsewhere;
    with several keys, each replicate names the verdicts it states otherwise. Empty when all are the same
    everywhere or there are no replicates."""
    if robustness is None:
        return ""
    flipped = [key for key in keys if key in robustness.not_robust]
    parts = []
    for rep in robustness.replicates:
        theirs = [(key, robustness.verdicts[key].get(rep.label) or "not stated") for key in flipped
                  if robustness.verdicts[key].get(rep.label) != robustness.verdicts[key][HERE]]
        if theirs:
            said = theirs[0][1] if len(keys) == 1 else ", ".join(f"{key} {verdict}" for key, verdict in theirs)
            parts.append(f"{said} on {rep.label} ({machine_label(rep.cpu)})")
    return f" Not robust: {'; '.join(parts)}." if parts else ""


def robustness_summary(robustness: Robustness | None) -> list[str]:
    """One sentence on the check: against which replicates, how many verdicts held, which did not."""
    if robustness is None:
        return []
    reps = ", ".join(f"{rep.label} ({machine_label(rep.cpu)})" for rep in robustness.replicates)
    total, flipped = len(robustness.verdicts), robustness.not_robust
    if not flipped:
        return [f"Robustness across machines: all {total} verdicts are the same in the replicates {reps}."]
    return [f"Robustness across machines: {total - len(flipped)} of {total} verdicts are the same in the replicates "
            f"{reps}; not robust (another verdict there): {', '.join(flipped)}."]
