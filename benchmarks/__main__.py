"""``make bench``: every benchmark, each in its own process; one table, one JSON file.

Order matters only for time: ``laptop`` runs `make run`'s study (and so builds and warm-starts the laptop model
into runs/cache, if not there yet), which ``profiling`` and ``generation`` then load. Each benchmark runs in a
fresh Python process so its peak memory, thread settings, vLLM environment and Ray session are its own.
Results go to ``bench/results.json`` with the date, the command and the machine; the table is printed, with
the time each benchmark took and, for the whole set, whether it stayed under :data:`TOTAL_GOAL_S`.
Speed and memory targets live here, never in timed tests.

    python -m benchmarks                       # all, in order
    python -m benchmarks scheduling analysis   # some
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "BENCHMARK-RESULT "
# The whole `make bench`, every benchmark in order, from a fresh clone (so the laptop model is built and warm-started).
TOTAL_GOAL_S = 15 * 60


def _laptop(tmp: str) -> dict:
    from benchmarks import bench_laptop

    result = bench_laptop.run(Path(tmp) / "laptop")
    result.pop("report")  # inside the temporary directory, gone once the benchmark returns
    return result


def _analysis(tmp: str) -> dict:
    from benchmarks import bench_analysis

    return bench_analysis.run(tmp)


def _profiling(tmp: str) -> dict:
    from benchmarks import bench_profiling

    # One on/off pair of twin runs (their ratio is reported, not judged); the goal's figure is the update phase.
    return bench_profiling.run(pairs=1)


def _generation(tmp: str) -> dict:
    from benchmarks import bench_generation

    return bench_generation.run()


def _generation_mid(tmp: str) -> dict:
    from benchmarks import bench_generation

    # Two repeats: its HF evaluation batch takes ~30 s each on 2 cores.
    return bench_generation.run(repeats=2, model="mid")


def _grid_analysis(tmp: str) -> dict:
    from benchmarks import bench_analysis

    return bench_analysis.grid_run(tmp)


def _drift(tmp: str) -> dict:
    from benchmarks import bench_drift

    return bench_drift.run()


def _measurements(tmp: str) -> dict:
    from benchmarks import bench_measurements

    return bench_measurements.run()


def _scheduling(tmp: str) -> dict:
    from benchmarks import bench_scheduling

    return bench_scheduling.run()


def _calibration(tmp: str) -> dict:
    from benchmarks import bench_calibration

    return bench_calibration.run()


BENCHMARKS = {"laptop": _laptop, "profiling": _profiling, "measurements": _measurements, "generation": _generation,
              "generation_mid": _generation_mid, "drift": _drift, "scheduling": _scheduling, "analysis": _analysis,
              "grid_analysis": _grid_analysis, "calibration": _calibration}


def _row(name: str, r: dict) -> tuple[str, str, str]:
    """(figure, goal, met?) of benchmark ``name`` for the printed table and the README."""
    ok = lambda flag: "not measured" if flag is None else "yes" if flag else "NO"  # noqa: E731
    if name == "laptop":
        gain, (low, high) = r["uniform_minus_base"], r["uniform_minus_base_ci"]
        gain_text = ("n/a" if gain is None or low is None else
                     f"{100 * gain:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}] over seeds")
        return (f"{r['wall_s']:.0f} s, peak {r['peak_rss_gib']} GiB (worker {r['worker_peak_rss_gib']} GiB), "
                f"uniform accuracy {r['uniform_accuracy']:.1%} on {r['eval_items_per_run_min']} items, uniform - "
                f"base {gain_text}, correctness reward {r['reward_correctness_first_quarter']} -> "
                f"{r['reward_correctness_last_quarter']}, {r['nonzero_variance_groups']:.0%} groups with reward "
                "variance", "<= 600 s, <= 8 GiB, accuracy 15-70%, uniform - base >= 5 points with its interval "
                "above 0, correctness rises, >= 500 items", ok(r["within_targets"]))
    if name == "calibration":
        null = r["null"][0]
        rates = ", ".join(f"{k} seeds {v:.0%}" for k, v in r["detection_5_points"].items())
        return (f"no effect, {null['studies']} studies, {null['seeds']} seeds: any significant verdict "
                f"{null['any_significant']:.1%} (item-level tests {null['item_level_any']:.0%}); a 5-point effect "
                f"found with {rates}", r["goal"], ok(r["within_goal"]))
    if name == "profiling":
        q = r["update_phase_ratio_on_off"]
        return (f"update phase on/off {q['median']} (95% CI {q['median_ci95'][0]}-{q['median_ci95'][1]}); "
                f"profiler {r['profiler_share_of_step']['median']:.3%} of a step; twin runs "
                f"{r['run_time_ratio_on_off']['median']}", r["goal"], ok(r["within_goal"]))
    if name in ("generation", "generation_mid"):
        e, t = r["evaluation"]["vllm_over_hf"], r["training"]["vllm_over_hf"]
        return (f"{r['model_name']} model: vLLM/HF tokens/s: evaluation {e['median']}x ({e['min']}-{e['max']}), training "
                f"{t['median']}x ({t['min']}-{t['max']})", r["goal"], ok(r["within_goal"]))
    if name == "grid_analysis":
        c = r["chromium"]
        page = ("not measured (no Chromium on PATH; Debian: apt-get install chromium)" if c is None else
                f"{c['seconds']:.1f} s in headless Chromium ({c['figures_drawn']}/{c['figures']} figures drawn)")
        return (f"rankstudy analyze {r['analyze_s']:.1f} s = {r['ratio']}x a bare scan ({r['scan_s']:.1f} s) "
                f"of {r['profile_rows']:,} rows in {r['cells']} cells, peak {r['analyze_peak_gib']} GiB; "
                f"{r['report_mb']} MB page {page}", "<= 2x, <= 3 GiB, page <= 10 s", ok(r["within_goals"]))
    if name == "drift":
        st, ours = r["stock_trl_sync"], r["out_of_place_sync"]
        return (f"bf16 base after {r['steps']} GRPO steps: TRL's sync drift {st['relative_drift']:.2e} of the "
                f"weights ({st['drift_over_update']:.3f}x the LoRA update, {st['changed_fraction']:.1%} of elements), "
                f"ours {ours['relative_drift']:g}; sync {st['sync_s']['median'] * 1e3:.1f} vs "
                f"{ours['sync_s']['median'] * 1e3:.1f} ms", "ours exactly 0", ok(r["within_goal"]))
    if name == "measurements":
        d, g, a, w = r["decompose"], r["geometry"], r["adalora"], r["weight_gradient"]
        return (f"train time vs plain over {r['steps']} steps: decompose every step {d['train_time_ratio']}x "
                f"(own {d['own_share_of_train']:.1%}; every 50 steps ~{d['ratio_every_50_steps']}x), geometry "
                f"{g['train_time_ratio']}x (own {g['own_share_of_train']:.1%}), adalora {a['train_time_ratio']}x, "
                f"weight gradient every step {w['train_time_ratio']}x (own {w['own_share_of_train']:.1%})",
                f"weight gradient {w['goal']} (others reported)", ok(w["within_goal"]))
    if name == "scheduling":
        lat = r["dependency_latency_s"]
        return (f"{r['runs']} runs of {r['duration_s']:.0f} s on {r['slots']} slots: {r['efficiency']:.1%} of "
                f"ideal (slot hand-over {r['wave_gap_s']['median']:.1f} s); dependants start {lat['median']:.2f} s "
                f"(max {lat['max']:.2f}) after their uniform run", ">= 95%, <= 2 s", ok(r["within_goal"]))
    return (f"analysis {r['ratio']}x a bare scan of {r['profile_rows']:,} rows, peak "
            f"{r['analysis_peak_rss_mb']:.0f} MB", "<= 3x", ok(r["ratio"] <= 3))


def _run_child(name: str) -> dict:
    """Run one benchmark in a fresh interpreter; its result comes back on a marked stdout line."""
    code = f"import json, sys; from benchmarks.__main__ import _child; _child({name!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"error: benchmark {name} failed (exit {proc.returncode}); run "
                         f"`python -m benchmarks.bench_{name}` to see why")
    return json.loads(lines[-1][len(MARK):])


def _child(name: str) -> None:
    with tempfile.TemporaryDirectory(prefix=f"rankstudy-bench-{name}-") as tmp:
        started = time.monotonic()
        result = BENCHMARKS[name](tmp)
        result["benchmark_wall_s"] = round(time.monotonic() - started, 1)
    print(MARK + json.dumps(result), flush=True)


def main(argv: list[str]) -> None:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    results = {"date": time.strftime("%Y-%m-%d"), "command": "make bench" if not argv else
               f"python -m benchmarks {' '.join(argv)}",
               "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"}
    started = time.monotonic()
    for name in names:
        print(f"== {name}", flush=True)
        results[name] = _run_child(name)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    results["total_wall_s"] = round(time.monotonic() - started, 1)
    if not argv:  # the goal is for the whole set
        results["total_goal_s"], results["within_total_goal"] = TOTAL_GOAL_S, results["total_wall_s"] < TOTAL_GOAL_S
    out = REPO / "bench" / "results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    rows = [("benchmark", "took", "measured", "goal", "met")] + [
        (n, f"{results[n]['benchmark_wall_s']:.0f} s", *_row(n, results[n])) for n in names]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    verdict = ("" if argv else f" (goal: whole make bench < {TOTAL_GOAL_S // 60} min: "
               f"{'yes' if results['within_total_goal'] else 'NO'})")
    print(f"total {results['total_wall_s']:.0f} s{verdict}; wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
