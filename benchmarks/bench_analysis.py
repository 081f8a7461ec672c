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

Usage: ``python -m benchmarks.bench_analysis [--repeats N] [--keep DIR]``; ``run(tmp_dir) -> dict``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds

from dashboards.analysis import summarize
from tests.fixtures.synthetic import SyntheticSpec, rows_per_profile, write_synthetic_study

PAPER_SCALE = SyntheticSpec(seeds=(0, 1, 2, 3, 4), steps=1000, layers=28, eval_items=200)


NEEDED_COLUMNS = ["run_id", "step", "layer", "module", "grad_norm"]


def bare_scan(profile_dir: Path, columns: list[str] | None = None) -> int:
    """Read every column (or the given ones) of every profile file into memory, nothing else; returns rows."""
    return ds.dataset(profile_dir, format="parquet").to_table(columns=columns).num_rows


def analysis_peak_rss_mb(study: Path) -> float:
    """Peak RSS of a fresh process that only imports the analysis and runs summarize() once.

    Read from /proc/self/status VmHWM: ru_maxrss would include the parent's RSS at fork time (Linux keeps
    the larger of the old and new high-water marks across exec).
    """
    code = ("import re, sys; from dashboards.analysis import summarize; summarize(sys.argv[1]); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(study)], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def run(tmp_dir: str | Path, repeats: int = 3, spec: SyntheticSpec = PAPER_SCALE) -> dict:
    """Write the study under ``tmp_dir``, time both, return analysis_s, scan_s, ratio, peak_rss_mb (+ context)."""
    started = time.perf_counter()
    study = write_synthetic_study(Path(tmp_dir) / "paper-scale-study", spec)
    write_s = time.perf_counter() - started
    rows = bare_scan(study / "profiles")
    expected = rows_per_profile(spec) * len(spec.strategies) * len(spec.seeds)
    assert rows == expected, (rows, expected)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating timing repeats (>= 3)")
    parser.add_argument("--keep", type=Path, help="write the study here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
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
