"""The cost of each optional measurement on the laptop model, as a ratio to a run without it.

Short GRPO runs of the laptop study's prepared model (uniform, seed 0, one thread, built exactly as a study run
by ``workers.run.execute_run``), one per variant, after a discarded warm-up run:

- ``plain``: the per-step gradient profile only (always on);
- ``decompose``: ``profile.decompose_every = 1`` (every step decomposed: the worst case; the cost at every
  N-th step is about 1 + (ratio - 1) / N, reported for the paper's N = 50 too);
- ``geometry``: ``profile.geometry`` at every checkpoint (every ``--steps / 2`` steps) and at the end;
- ``adalora``: the adalora strategy (update_and_allocate after every step, the orthogonality regulariser);
- ``weight_gradient``: ``profile.weight_gradient_every = 1`` (every module's ||dL/dW||_F on every step, the worst
  case). Goal (issue 21): at most 1.10x plain's training time; judged on its own share of the training time,
  the direct measure, since the ratio of two runs carries the machine's noise.

Two figures per variant: ``train_time_ratio`` (its training time / plain's; a shared 2-core machine varies by
+-15% between runs, so this carries that noise) and ``own_share_of_train`` (the measurement's own seconds,
timed inside the run, / its training time: the direct measure). Reported, not judged: these are costs.

    python -m benchmarks.bench_measurements [--steps 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile

from benchmarks.common import laptop_config

PAPER_DECOMPOSE_EVERY = 50
WEIGHT_GRADIENT_GOAL = 1.10


def _train_seconds(config, strategy: str = "uniform") -> tuple[float, dict]:
    from orchestrator.core.plan import RunSpec
    from workers.run import execute_run

    with tempfile.TemporaryDirectory(prefix="rankstudy-bench-measure-") as study_dir:
        record = execute_run(config, RunSpec(strategy, 0, num_gpus=0, num_cpus=1), study_dir)
    return record.timings["train_s"], record.timings


def run(steps: int = 8) -> dict:
    from workers.compat import keep_vllm_unimported

    keep_vllm_unimported()  # HF generation only, as an HF-path study worker
    base = laptop_config([f"grpo.max_steps={steps}", f"grpo.checkpoint_every={max(1, steps // 2)}",
                          "data.eval_limit=8"])
    profile = base.profile
    variants = {
        "plain": (base, "uniform", None),
        "decompose": (dataclasses.replace(base, profile=dataclasses.replace(profile, decompose_every=1)), "uniform",
                      "decompose_s"),
        "geometry": (dataclasses.replace(base, profile=dataclasses.replace(profile, geometry=True)), "uniform",
                     "geometry_s"),
        "adalora": (dataclasses.replace(base, adalora=dataclasses.replace(base.adalora, delta_t=1)), "adalora", None),
        "weight_gradient": (dataclasses.replace(base, profile=dataclasses.replace(profile, weight_gradient_every=1)),
                            "uniform", "weight_gradient_s"),
    }
    _train_seconds(base)  # warm-up: imports, caches
    seconds, result = {}, {"steps": steps}
    for name, (config, strategy, own_key) in variants.items():
        seconds[name], timings = _train_seconds(config, strategy)
        result[name] = {"train_s": round(seconds[name], 2)}
        if name != "plain":
            result[name]["train_time_ratio"] = round(seconds[name] / seconds["plain"], 3)
        if own_key:
            result[name]["own_share_of_train"] = round(timings[own_key] / seconds[name], 4)
    d = result["decompose"]["train_time_ratio"]
    result["decompose"][f"ratio_every_{PAPER_DECOMPOSE_EVERY}_steps"] = round(1 + (d - 1) / PAPER_DECOMPOSE_EVERY, 3)
    w = result["weight_gradient"]
    w["goal"] = f"<= {WEIGHT_GRADIENT_GOAL}x train time at N = 1"
    w["within_goal"] = 1 + w["own_share_of_train"] <= WEIGHT_GRADIENT_GOAL
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(run(args.steps), indent=2))


if __name__ == "__main__":
    main()
