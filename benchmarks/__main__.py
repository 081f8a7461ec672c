"""``make bench``: every benchmark, one JSON file.

Runs the analysis benchmark (paper-scale synthetic study vs a bare Parquet scan) and the laptop study benchmark
(`make run` wall time, peak memory, learning signal), prints each result and writes ``bench/results.json``
with the date and the command. Speed and memory targets live here, never in timed tests.

    python -m benchmarks            # both
    python -m benchmarks analysis   # one
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import bench_analysis, bench_laptop

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "analysis": lambda tmp: bench_analysis.run(tmp),
    "laptop": lambda tmp: bench_laptop.run(Path(tmp) / "laptop"),
}


def main(argv: list[str]) -> None:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    results = {"date": time.strftime("%Y-%m-%d"), "command": "make bench"}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"rankstudy-bench-{name}-") as tmp:
            started = time.monotonic()
            results[name] = BENCHMARKS[name](tmp)
            results[name]["benchmark_wall_s"] = round(time.monotonic() - started, 1)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    out = REPO / "bench" / "results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
