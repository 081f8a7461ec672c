"""Base-weight drift: TRL's stock colocated sync (merge in place, read, unmerge) vs rankstudy's (out of place).

The laptop study's uniform run, with its model in bfloat16 (the paper's dtype), trains ``steps`` real GRPO
steps (HF rollouts) twice from the same seed. After every optimizer step, where TRL syncs the engine, one run
exhausts TRL's own sync iterator (``VLLMGeneration._iter_named_params``, reached through ``workers.compat``:
it merges the adapter into the base in place and unmerges it) and the other exhausts
``workers.weights.merged_weights`` (the merged weights computed into new tensors). No engine receives them:
the push is not what moves the base. Measured over the LoRA-targeted base weights at the end:

- ``relative_drift``: ||W_end - W_start|| / ||W_start|| (Frobenius, all targeted weights together),
- ``drift_over_update``: ||W_end - W_start|| / ||scale * B A|| (the drift against the LoRA update itself),
- ``changed_fraction``: share of base elements that changed,
- ``sync_s``: time per sync (median, min, max over the steps).

Goal: ours exactly 0 (bitwise frozen).

    python -m benchmarks.bench_drift [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

from benchmarks.common import laptop_config, set_up_uniform_run, spread


def _targeted(model) -> dict:
    """name -> base weight of every LoRA-targeted module, and name -> its LoRA module."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def _trial(config, stock: bool) -> dict:
    import torch
    from transformers import TrainerCallback

    from workers import compat
    from workers.weights import merged_weights

    with tempfile.TemporaryDirectory(prefix="rankstudy-bench-drift-") as study_dir:
        run = set_up_uniform_run(config, study_dir)
        model = run.trainer.model
        layers = _targeted(model)
        start = {name: module.base_layer.weight.detach().clone() for name, module in layers.items()}
        seconds: list[float] = []

        class Sync(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                began = time.perf_counter()
                weights = compat.trl_sync_iterator(model, run.trainer.accelerator) if stock else merged_weights(model)
                for _name, _tensor in weights:
                    pass
                seconds.append(time.perf_counter() - began)

        run.trainer.add_callback(Sync())
        run.train()
        with torch.no_grad():
            drift = update = base = 0.0
            changed = elements = 0
            for name, module in layers.items():
                now, then = module.base_layer.weight.float(), start[name].float()
                drift += float((now - then).pow(2).sum())
                base += float(then.pow(2).sum())
                update += float(module.get_delta_weight("default").float().pow(2).sum())
                changed += int((module.base_layer.weight != start[name]).sum())
                elements += then.numel()
        dtype = str(next(iter(start.values())).dtype).removeprefix("torch.")
        run.cleanup()
    return {"relative_drift": math.sqrt(drift / base), "drift_over_update": math.sqrt(drift / update) if update else None,
            "changed_fraction": changed / elements, "sync_s": spread(seconds, 5), "steps": len(seconds),
            "base_dtype": dtype}


def run(steps: int = 12) -> dict:
    config = laptop_config(["model.dtype=bfloat16", f"grpo.max_steps={steps}", "grpo.checkpoint_every=1000"])
    stock = _trial(config, stock=True)
    ours = _trial(config, stock=False)
    result = {"steps": steps, "stock_trl_sync": stock, "out_of_place_sync": ours,
              "goal": "out-of-place sync leaves the bf16 base bitwise unchanged (drift exactly 0)"}
    result["within_goal"] = ours["changed_fraction"] == 0 and ours["relative_drift"] == 0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    print(json.dumps(run(args.steps), indent=2))


if __name__ == "__main__":
    main()
