"""Profiling overhead: GRPO step time with the gradient profiler on vs off, same model, same seed, alternating.

Each trial is a short GRPO run of the laptop study's uniform strategy (seed 0, on the prepared laptop model,
one thread as a worker has), built exactly as a study run (``workers.run.GRPORun``); "off" removes the
profiler from the trainer before training. Trials alternate on/off/off/on/... so slow drift of a shared
machine cancels. The same seed gives the same rollouts with the profiler on or off (checked through the
rollout digests, so profiling is shown not to change training), hence each on/off pair does the same work.

Figures (step 1 of each trial excluded, and one discarded warm-up trial first, for one-off costs):

- ``step_time_ratio_on_off``: step i of an "on" trial / step i of its "off" twin, over all pairs and steps;
  its median is the overhead ratio (goal <= 1.01). Twins do the same work, so the ratio is not confounded
  by how long each step's completions happened to be.
- ``run_time_ratio_on_off``: per pair, summed step times on / off (the coarser view, with its range).
- ``profiler_share_of_step``: the profiler's own time inside the "on" steps (``metrics.profile_time_s`` /
  ``step_time_s``), the direct measure that machine noise cannot hide.

    python -m benchmarks.bench_profiling [--pairs 3] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

from benchmarks.common import laptop_config, spread

GOAL = 1.01


def _trial(config, profile: bool) -> dict:
    from orchestrator.plan import RunSpec
    from workers.profiler import ProfilerCallback
    from workers.run import GRPORun

    with tempfile.TemporaryDirectory(prefix="rankstudy-bench-prof-") as study_dir:
        run = GRPORun(config, RunSpec("uniform", 0, num_gpus=0, num_cpus=1), study_dir)
        run.setup()
        if not profile:
            run.trainer.gradient_profiler = None
            run.trainer.remove_callback(ProfilerCallback)
            run.recorder.profiler = None
        run.train()
        rows = run.recorder.table().to_pylist()
        captured = len(run.profiler.steps)
        run.cleanup()
    return {"step_time_s": [r["step_time_s"] for r in rows], "profile_time_s": [r["profile_time_s"] for r in rows],
            "digests": [r["rollout_digest"] for r in rows], "profiled_steps": captured}


def run(pairs: int = 3, steps: int = 6) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as a study worker (cpus_per_run: 1), before torch loads
    import torch

    torch.set_num_threads(1)
    config = laptop_config([f"grpo.max_steps={steps}", f"grpo.checkpoint_every={steps + 1}"])
    _trial(config, True)  # warm-up, discarded: the first run in a process pays one-off costs (lazy imports, allocator)
    order = [(True, False) if i % 2 == 0 else (False, True) for i in range(pairs)]  # on/off, off/on, ...
    pair_ratios, step_ratios, shares, same_rollouts = [], [], [], True
    for first, second in order:
        trial = {flag: _trial(config, flag) for flag in (first, second)}
        on, off = trial[True], trial[False]
        if off["profiled_steps"] != 0 or on["profiled_steps"] != steps:
            raise SystemExit(f"profiling benchmark: profiler captured {on['profiled_steps']}/{off['profiled_steps']} "
                             f"steps with it on/off, expected {steps}/0")
        same_rollouts &= on["digests"] == off["digests"]
        pair_ratios.append(sum(on["step_time_s"][1:]) / sum(off["step_time_s"][1:]))
        step_ratios += [a / b for a, b in zip(on["step_time_s"][1:], off["step_time_s"][1:], strict=True)]
        shares += [p / s for p, s in zip(on["profile_time_s"], on["step_time_s"], strict=True)]
    return {
        "pairs": pairs, "steps_per_trial": steps, "model": "laptop (8-layer Qwen2, hidden 64), 1 thread",
        # Step i of an "on" run vs step i of its "off" twin: the same rollouts, so the same work.
        "step_time_ratio_on_off": spread(step_ratios),
        "run_time_ratio_on_off": spread(pair_ratios),
        "profiler_share_of_step": spread(shares, 6),
        "identical_rollouts_on_off": same_rollouts,
        "goal": f"ratio <= {GOAL}",
        "within_goal": statistics.median(step_ratios) <= GOAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    print(json.dumps(run(args.pairs, args.steps), indent=2))


if __name__ == "__main__":
    main()
