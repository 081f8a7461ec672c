"""Verdicts that do not depend on the machine: the laptop study on one machine under settings that stand in for others.

A study's figures follow the CPU: torch picks its kernels by the instruction set it finds, and the thread count
changes the order of floating-point reductions, so the same study on another machine gives other numbers (the
warm start most of all). Within one machine, kernel setting and thread count it repeats to the last digit. This
benchmark runs ``rankstudy run configs/laptop.yaml`` cold, each in its own cache (nothing shared), under:

- ``native``: the machine's own kernels and the preparation's default threads (what ``make run`` does);
- ``default-kernels``: ``ATEN_CPU_CAPABILITY=default`` (torch's portable kernels, no AVX2/AVX-512);
- ``one-thread``: the machine's kernels with the warm start on one thread (``resources.preparation_cpus=1``).

It prints each run's Table 1 side by side and every verdict the findings state
(:func:`dashboards.analysis.findings.stated_verdicts`): a strategy against uniform and the base model, GRPO's
landscape against SFT's, the amplification under each control; the numbers may differ, the verdicts should
not. Then it writes the first setting's report with the others as its replicates (``rankstudy analyze DIR
--replicate OTHER``), which marks every verdict that differs as not robust. It takes three cold laptop studies
(about 30 minutes on 2 cores), so it is not part of ``make bench``:

    python -m benchmarks.bench_machines [--settings native default-kernels] [--output DIR] [--reuse]

``--reuse`` analyses the study directories a previous call left in DIR instead of running them again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dashboards.analysis import analyze
from dashboards.analysis.findings import stated_verdicts
from dashboards.report import write_report

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "native": ({}, []),
    "default-kernels": ({"ATEN_CPU_CAPABILITY": "default"}, []),
    "one-thread": ({}, ["resources.preparation_cpus=1"]),
}


def run_setting(name: str, root: Path) -> float:
    """Run the laptop study cold under setting ``name`` into ROOT/<name>; its wall time in seconds."""
    env_extra, overrides = SETTINGS[name]
    out = root / name
    cmd = [sys.executable, "-m", "orchestrator", "run", str(REPO / "configs" / "laptop.yaml"), "--output", str(out),
           "--set", f"cache_dir={root / (name + '-cache')}", *[a for o in overrides for a in ("--set", o)]]
    env = {**os.environ, **env_extra}
    env.pop("RAY_ADDRESS", None)  # a local cluster of its own: the kernel setting reaches every worker
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name}: rankstudy run failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return round(wall, 1)


def setting_figures(out: Path) -> dict:
    """Table 1, the stated verdicts, the landscapes' max/min and the machine of one setting's study."""
    cell = analyze(out).summary.single
    record = json.loads((out / "runs" / "uniform-seed0" / "run.json").read_text())
    table1 = {}
    for strategy, entry in cell.strategies.items():
        table1[strategy] = {"accuracy": entry.accuracy,
                            **{key: None if test is None else {"delta": test.delta, "ci": [test.ci_low, test.ci_high],
                                                               "p": test.p_value, "significant": test.significant}
                               for key, test in (("vs_uniform", entry.vs_uniform), ("vs_base", entry.vs_base))}}
    return {"cpu": record.get("cpu"), "table1": table1,
            "verdicts": stated_verdicts(cell), "flatness": [cell.landscape.max_min_ratio if cell.landscape else None,
                                                            cell.sft.max_min_ratio if cell.sft else None]}


def compare(results: dict[str, dict]) -> dict:
    """Every stated verdict across the settings, and the ones that differ."""
    keys = sorted({k for r in results.values() for k in r["verdicts"]})
    table = {k: {name: r["verdicts"].get(k) for name, r in results.items()} for k in keys}
    differing = [k for k, by in table.items() if len(set(by.values())) > 1]
    return {"verdicts": table, "differing": differing, "same": not differing}


def format_table(results: dict[str, dict]) -> str:
    """Table 1 of each setting side by side: accuracy, then the difference to base and to uniform in points
    (``*``: significant by the seed-aware, Holm-adjusted verdict)."""
    def diff(test: dict | None) -> str:
        return "-" if test is None or test["delta"] is None else f"{100 * test['delta']:+.1f}" + (
            "*" if test["significant"] else "")

    names = list(results)
    lines = ["strategy    " + "".join(f"{n}: acc / vs base / vs uniform".rjust(44) for n in names)]
    for s in next(iter(results.values()))["table1"]:
        cells = []
        for n in names:
            row = results[n]["table1"].get(s)
            cells.append("-" if row is None else
                         f"{100 * row['accuracy']:.1f}% / {diff(row['vs_base'])} / {diff(row['vs_uniform'])}")
        lines.append(f"{s:<12}" + "".join(c.rjust(44) for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="analyse the studies already in --output")
    args = parser.parse_args()
    root = args.output or Path(tempfile.mkdtemp(prefix="rankstudy-bench-machines-"))
    walls = {name: None if args.reuse else run_setting(name, root) for name in args.settings}
    results = {name: {"wall_s": walls[name], **setting_figures(root / name)} for name in args.settings}
    first, *others = args.settings
    page = write_report(root / first, replicates=[root / name for name in others])
    report = {"settings": {n: {"env": SETTINGS[n][0], "overrides": SETTINGS[n][1]} for n in args.settings},
              "results": results, **compare(results)}
    (root / "machines.json").write_text(json.dumps(report, indent=2))
    print(format_table(results))
    print(json.dumps({"verdicts": report["verdicts"], "differing": report["differing"]}, indent=2))
    print(f"wrote {root / 'machines.json'}; the report of {first} with the others as replicates: {page}")


if __name__ == "__main__":
    main()
