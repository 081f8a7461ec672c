"""Analysis benchmark: ``summarize()`` on a paper-scale synthetic study vs a bare Parquet scan of its profiles.

Paper scale: 4 strategies x 5 seeds x 1000 steps x 28 layers x 7 modules = 3.92M profile rows (plus eval of
200 items and metrics per run), written by :mod:`tests.fixtures.synthetic`. The two timings alternate (scan,
analysis, scan, analysis, ...) after one warm-up of each, so both see the same page cache and machine
load; the figure is the ratio of the medians. Goal: analysis within 3x of the scan. The scan reads every
column as written (plain strings, as the run stage writes them); ``ratio_vs_needed_columns`` compares with
a scan of only the five columns the analysis reads, a stricter baseline.

``peak_rss_mb`` is the peak resident memory of this process (ru_maxrss), which covers the scan of every
profile column as well as the analysis; the synthetic study is written run by run, so it stays small.
``analysis_peak_rss_mb`` is that of a fresh process running summarize() alone.

Grid scale (``grid_run``): a study with axes of paper shape, 4 strategies x 5 seeds x 5 cells (a learning-rate
axis) x 1000 steps x 28 layers x 7 modules = 19.6M profile rows, plus the base row's evaluation per cell. Here
the whole command is timed, as a user runs it: ``rankstudy analyze DIR`` (the CLI's ``main`` in a fresh
Python process: imports, the analysis, summary.json and the HTML report) against a fresh process that reads
every column of every Parquet file of the study (profiles, eval, metrics) and nothing else, alternating after
one warm-up of each. Goals: within 2x of that scan, peak memory (VmHWM of the analyze process) <= 3 GiB, and
the report opens in headless Chromium within 10 s: the wall time of ``chromium --headless --dump-dom`` on the
page (start-up, parsing the inlined plotly.js, drawing every figure), with every figure div drawn (an SVG
inside it) in the dumped DOM. Without a Chromium on PATH that figure is reported as not measured.

Usage: ``python -m benchmarks.bench_analysis [--repeats N] [--keep DIR] [--grid]``; ``run(tmp_dir) -> dict``,
``grid_run(tmp_dir) -> dict``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dashboards.analysis import summarize
from tests.fixtures.synthetic import SyntheticSpec, profile_rows, write_synthetic_study

PAPER_SCALE = SyntheticSpec(seeds=(0, 1, 2, 3, 4), steps=1000, layers=28, eval_items=200)
GRID_SCALE = dataclasses.replace(PAPER_SCALE, axes={"grpo.learning_rate": (1e-6, 2e-6, 5e-6, 1e-5, 2e-5)})
GRID_GOALS = {"ratio": 2.0, "peak_gib": 3.0, "chromium_s": 10.0}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_HWM = "print('VmHWM', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)))"


NEEDED_COLUMNS = ["run_id", "step", "layer", "module", "grad_norm"]


def bare_scan(profile_dir: Path, columns: list[str] | None = None) -> int:
    """Read every column (or the given ones) of every profile file into memory, nothing else; returns rows."""
    return ds.dataset(profile_dir, format="parquet").to_table(columns=columns).num_rows


def analysis_peak_rss_mb(study: Path) -> float:
    """Peak RSS of a fresh process that only imports the analysis and runs summarize() once."""
    return round(_timed_child("from dashboards.analysis import summarize\nsummarize(sys.argv[1])", str(study))[1], 1)


def run(tmp_dir: str | Path, repeats: int = 3, spec: SyntheticSpec = PAPER_SCALE) -> dict:
    """Write the study under ``tmp_dir``, time both, return analysis_s, scan_s, ratio, peak_rss_mb (+ context)."""
    started = time.perf_counter()
    study = write_synthetic_study(Path(tmp_dir) / "paper-scale-study", spec)
    write_s = time.perf_counter() - started
    rows = bare_scan(study / "profiles")
    assert rows == profile_rows(spec), (rows, profile_rows(spec))
    summary, warnings = summarize(study)  # warm-up: imports, page cache
    assert not warnings, warnings
    scan_times, analysis_times, needed_times = [], [], []
    for _ in range(max(3, repeats)):
        t0 = time.perf_counter()
        bare_scan(study / "profiles")
        t1 = time.perf_counter()
        summarize(study)
        t2 = time.perf_counter()
        bare_scan(study / "profiles", NEEDED_COLUMNS)
        t3 = time.perf_counter()
        scan_times.append(t1 - t0)
        analysis_times.append(t2 - t1)
        needed_times.append(t3 - t2)
    analysis_s, scan_s = statistics.median(analysis_times), statistics.median(scan_times)
    needed_s = statistics.median(needed_times)
    return {
        "analysis_s": round(analysis_s, 4),
        "scan_s": round(scan_s, 4),
        "ratio": round(analysis_s / scan_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # A stricter baseline: a scan of only the five profile columns the analysis reads.
        "scan_needed_columns_s": round(needed_s, 4),
        "ratio_vs_needed_columns": round(analysis_s / needed_s, 3),
        "analysis_peak_rss_mb": analysis_peak_rss_mb(study),
        "profile_rows": rows,
        "repeats": len(scan_times),
        "analysis_spread_s": [round(min(analysis_times), 4), round(max(analysis_times), 4)],
        "scan_spread_s": [round(min(scan_times), 4), round(max(scan_times), 4)],
        "write_study_s": round(write_s, 2),
        "uniform_max_min_ratio": summary["landscape"]["max_min_ratio"],
    }


def _timed_child(code: str, *args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a fresh Python process running ``code``; it prints its own VmHWM
    (ru_maxrss of a child would include the parent's pages at fork time)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", f"import re, sys\n{code}\n{_HWM}", *args], capture_output=True,
                         text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed (exit {out.returncode}): {out.stderr[-2000:]}")
    hwm = re.findall(r"^VmHWM (\d+)$", out.stdout, flags=re.M)
    return seconds, int(hwm[-1]) / 1024


SCAN_CODE = ("import pyarrow.dataset as ds\n"
             "rows = sum(ds.dataset(f'{sys.argv[1]}/{t}', format='parquet').to_table().num_rows\n"
             "           for t in ('profiles', 'eval', 'metrics'))")
ANALYZE_CODE = ("from orchestrator.cli import main\n"
                "assert main(['analyze', sys.argv[1]]) == 0")


def open_in_chromium(page: Path, timeout_s: float = 120) -> dict | None:
    """Wall time for headless Chromium to load ``page`` and dump its DOM, and how many figures it drew.

    ``--dump-dom`` prints the DOM after the load event, that is after every inline script (each figure's
    ``Plotly.newPlot``) has run; a figure counts as drawn when its div holds plotly's SVG. None without Chromium.
    """
    browser = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    if browser is None:
        return None
    with tempfile.TemporaryDirectory(prefix="rankstudy-chromium-") as profile:
        started = time.perf_counter()
        # No background networking, QUIC, component updates or sync: with them Chromium keeps dialling out, which
        # an offline machine refuses over and over while the page loads.
        out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-quic", "--disable-component-update",
                              "--disable-sync",
                              f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=timeout_s)
        seconds = time.perf_counter() - started
    divs = out.stdout.split('class="plotly-graph-div')[1:]
    drawn = sum('class="main-svg"' in div.split('class="plotly-graph-div', 1)[0] for div in divs)
    return {"seconds": round(seconds, 2), "figures": len(divs), "figures_drawn": drawn,
            "exit_code": out.returncode, "browser": Path(browser).name}


def grid_run(tmp_dir: str | Path, repeats: int = 3, spec: SyntheticSpec = GRID_SCALE) -> dict:
    """The grid-scale study: ``rankstudy analyze`` vs a bare scan (fresh processes), its peak, the page in Chromium."""
    started = time.perf_counter()
    study = write_synthetic_study(Path(tmp_dir) / "grid-scale-study", spec)
    write_s = time.perf_counter() - started
    rows = sum(pq.read_metadata(path).num_rows for path in (study / "profiles").glob("*.parquet"))
    assert rows == profile_rows(spec), (rows, profile_rows(spec))
    _timed_child(SCAN_CODE, str(study))  # warm-up of each: page cache, imports' .pyc files
    _timed_child(ANALYZE_CODE, str(study))
    scans, analyses = [], []
    for _ in range(max(3, repeats)):
        scans.append(_timed_child(SCAN_CODE, str(study)))
        analyses.append(_timed_child(ANALYZE_CODE, str(study)))
    analyze_s, scan_s = statistics.median(a for a, _ in analyses), statistics.median(s for s, _ in scans)
    summary = json.loads((study / "report" / "summary.json").read_text())
    page = study / "report" / "index.html"
    chromium = open_in_chromium(page)
    peak_gib = max(m for _, m in analyses) / 1024
    result = {
        "profile_rows": rows, "cells": len(summary["cells"]), "runs": sum(len(c["run_ids"]) for c in summary["cells"]),
        "analyze_s": round(analyze_s, 2), "scan_s": round(scan_s, 2), "ratio": round(analyze_s / scan_s, 3),
        "analyze_spread_s": [round(min(a for a, _ in analyses), 2), round(max(a for a, _ in analyses), 2)],
        "scan_spread_s": [round(min(s for s, _ in scans), 2), round(max(s for s, _ in scans), 2)],
        "analyze_peak_gib": round(peak_gib, 2), "scan_peak_gib": round(max(m for _, m in scans) / 1024, 2),
        "report_mb": round(page.stat().st_size / 2**20, 1), "chromium": chromium,
        "repeats": len(scans), "write_study_s": round(write_s, 1), "goals": GRID_GOALS,
    }
    result["within_goals"] = grid_goals_met(result["ratio"], peak_gib, chromium)
    return result


def grid_goals_met(ratio: float, peak_gib: float, chromium: dict | None) -> bool | None:
    """True when every grid-scale goal is met, False when a measured one is missed, and None ("not measured")
    when the measured ones are met but the page could not be opened (no Chromium): never a silent yes.

    >>> page = {"seconds": 5.1, "exit_code": 0, "figures": 36, "figures_drawn": 36}
    >>> grid_goals_met(0.9, 1.6, page), grid_goals_met(0.9, 1.6, None), grid_goals_met(2.5, 1.6, None)
    (True, None, False)
    >>> grid_goals_met(0.9, 1.6, {**page, "figures_drawn": 35}), grid_goals_met(0.9, 1.6, {**page, "seconds": 11})
    (False, False)
    """
    if ratio > GRID_GOALS["ratio"] or peak_gib > GRID_GOALS["peak_gib"]:
        return False
    if chromium is None:
        return None
    return (chromium["seconds"] <= GRID_GOALS["chromium_s"] and chromium["exit_code"] == 0
            and chromium["figures"] > 0 and chromium["figures_drawn"] == chromium["figures"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating timing repeats (>= 3)")
    parser.add_argument("--keep", type=Path, help="write the study here and keep it (default: a temp dir)")
    parser.add_argument("--grid", action="store_true", help="only the grid-scale study (5 cells, 19.6M rows)")
    args = parser.parse_args(argv)
    if args.grid:
        with tempfile.TemporaryDirectory(prefix="rankstudy-bench-") as tmp:
            result = grid_run(args.keep or tmp, args.repeats)
        print(json.dumps(result))
        return 0
    if args.keep:
        result = run(args.keep, args.repeats)
    else:
        with tempfile.TemporaryDirectory(prefix="rankstudy-bench-") as tmp:
            result = run(tmp, args.repeats)
    print(f"analysis {result['analysis_s']:.3f} s | bare scan {result['scan_s']:.3f} s | ratio {result['ratio']:.2f}x "
          f"(goal <= 3x; vs a scan of the 5 needed columns {result['ratio_vs_needed_columns']:.2f}x) | peak RSS "
          f"{result['peak_rss_mb']:.0f} MB (analysis alone {result['analysis_peak_rss_mb']:.0f} MB) | "
          f"{result['profile_rows']:,} profile rows")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
