"""The GPU check: the worker's GRPO path at the paper's model shape, on one CUDA device, in one short command.

For a CUDA machine with torch, transformers and peft (TRL and datasets may come as wheels; neither Ray nor vLLM
is needed): ``make gpu-check`` (or ``python -m benchmarks.gpu_check``). It

1. builds the paper's model shape with random weights from a config, nothing downloaded: Qwen2.5-1.5B
   (28 layers, hidden 1536, intermediate 8960, 12 heads, 2 KV heads, vocabulary 151,936, tied embeddings),
   with a 1,000-token BPE tokenizer trained on the generated arithmetic task (its ids are a subset of the
   vocabulary);
2. runs a study run exactly as a worker does (``workers.run.GRPORun``: LoRA rank 32 on all 7 projections,
   profiler, audit, frozen-base digests) with HF generation for a few GRPO steps, in bf16 with gradient
   checkpointing (the worker turns both on when CUDA is there), then one batch of greedy evaluation;
3. prints one table: seconds per step split into generation / update / weight sync (HF generation has no
   sync), the profiler's share of a step, peak GPU memory, evaluation tokens/s, and whether the frozen base
   stayed bitwise frozen (run.json ``frozen_base`` before == after).

``--tiny`` runs the same code on CPU with a 2-layer, hidden-64 model in float32 (the test suite runs it).
``--json PATH`` also writes the figures as JSON. Random weights: the completions are noise and every reward
0, so the figures are speed, memory and correctness of the machinery, not of learning.

    python -m benchmarks.gpu_check [--steps 4] [--tiny] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

PAPER_SHAPE = dict(num_hidden_layers=28, hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                   num_key_value_heads=2, vocab_size=151_936)
TINY_SHAPE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=1_000)
TOKENIZER_VOCAB = 1_000


def build_model(out_dir: Path, shape: dict, dtype: str, task_options: dict) -> Path:
    """A randomly initialised Qwen2 of ``shape`` and a small trained tokenizer, saved to ``out_dir``."""
    import torch
    import transformers

    from orchestrator.core.config import DataConfig
    from orchestrator.resolve import resolve_data
    from workers.local_model import train_tokenizer
    from workers.tasks import get_task

    task = get_task("arith")
    data = resolve_data(DataConfig(task="arith", options=task_options))
    tokenizer = train_tokenizer(task.corpus(task.dataset(data, "train")), TOKENIZER_VOCAB)
    config = transformers.Qwen2Config(**shape, max_position_embeddings=4096, tie_word_embeddings=True,
                                      bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def study_config(model_dir: Path, tiny: bool, steps: int) -> dict:
    return {
        "name": "gpu-check",
        "model": {"name_or_path": str(model_dir), "dtype": "float32" if tiny else "bfloat16"},
        "data": {"task": "arith", "options": {"train_size": 256, "test_size": 64, "seed": 0},
                 "eval_limit": 8 if tiny else 64},
        "lora": {"rank": 8 if tiny else 32, "alpha": 16 if tiny else 64, "dropout": 0.0},
        "grpo": {"num_generations": 4, "prompts_per_step": 2 if tiny else 4, "max_steps": steps,
                 "max_completion_length": 16 if tiny else 256, "learning_rate": 1.0e-5, "use_vllm": False,
                 "checkpoint_every": 10_000, "eval_batch_size": 8 if tiny else 64},
        "grid": {"strategies": ["uniform"], "seeds": [0]},
        "resources": {"gpus_per_run": 0 if tiny else 1, "cpus_per_run": 1},
    }


def run_check(tiny: bool = False, steps: int = 4) -> dict:
    import torch

    from orchestrator.core.plan import RunSpec
    from orchestrator.resolve import load_study
    from workers import compat
    from workers.run import GRPORun

    if not tiny and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --tiny for the CPU version of this check")
    with tempfile.TemporaryDirectory(prefix="rankstudy-gpu-check-") as tmp:
        tmp = Path(tmp)
        raw = study_config(tmp / "model", tiny, steps)
        started = time.perf_counter()
        build_model(tmp / "model", TINY_SHAPE if tiny else PAPER_SHAPE, raw["model"]["dtype"],
                    raw["data"]["options"])
        build_s = time.perf_counter() - started
        (tmp / "study.yaml").write_text(yaml.safe_dump(raw))
        config = load_study(tmp / "study.yaml").config
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        run = GRPORun(config, RunSpec("uniform", 0, num_gpus=0 if tiny else 1, num_cpus=1), tmp / "study")
        run.setup()
        generation_s = compat.time_rollouts(run.trainer)
        run.train()
        eval_started = time.perf_counter()
        table = run.evaluate()
        eval_s = time.perf_counter() - eval_started
        record = run.write(table)
        tokenizer = run.tokenizer
        eval_tokens = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"])
                          for c in table.column("completion").to_pylist())
        metrics = run.recorder.table().to_pylist()
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        run.cleanup()
    step_s = [m["step_time_s"] for m in metrics]
    gen = [generation_s.get(m["step"], 0.0) for m in metrics]
    shares = [m["profile_time_s"] / m["step_time_s"] for m in metrics if m["step_time_s"]]
    frozen = record.frozen_base or {}
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "shape": TINY_SHAPE if tiny else PAPER_SHAPE, "dtype": raw["model"]["dtype"], "steps": len(metrics),
        "batch": raw["grpo"]["prompts_per_step"] * raw["grpo"]["num_generations"],
        "max_completion_length": raw["grpo"]["max_completion_length"],
        "build_s": round(build_s, 1), "trainable_params": record.trainable_params,
        # The first step pays for warm-up (kernels, allocator): medians over the steps after it, when there are.
        "step_s": _median_after_first(step_s), "generation_s": _median_after_first(gen),
        "update_s": _median_after_first([s - g for s, g in zip(step_s, gen, strict=True)]),
        "sync_s": 0.0, "profiler_share_of_step": _median_after_first(shares, 5),
        "peak_gpu_memory_gib": round(peak, 2) if peak is not None else None,
        "eval_items": table.num_rows, "eval_tokens_per_s": round(eval_tokens / eval_s, 1) if eval_s else None,
        "frozen_base_unchanged": bool(frozen.get("before")) and frozen.get("before") == frozen.get("after"),
    }


def _median_after_first(values: list[float], digits: int = 3) -> float | None:
    kept = values[1:] if len(values) > 1 else values
    return round(statistics.median(kept), digits) if kept else None


def format_table(r: dict) -> str:
    rows = [
        ("device", f"{r['device']}, {r['dtype']}, {r['shape']['num_hidden_layers']} layers x hidden "
                   f"{r['shape']['hidden_size']}, vocabulary {r['shape']['vocab_size']:,}"),
        ("GRPO steps", f"{r['steps']} of {r['batch']} completions x {r['max_completion_length']} tokens, "
                       f"{r['trainable_params']:,} LoRA parameters"),
        ("seconds per step", f"{r['step_s']} (generation {r['generation_s']} / update {r['update_s']} / "
                             f"sync {r['sync_s']}: HF generation, no engine)"),
        ("profiler share of a step", f"{r['profiler_share_of_step']:.3%}" if r["profiler_share_of_step"] is not None
         else "n/a"),
        ("peak GPU memory", f"{r['peak_gpu_memory_gib']} GiB" if r["peak_gpu_memory_gib"] is not None else "n/a (CPU)"),
        ("evaluation", f"{r['eval_items']} items, {r['eval_tokens_per_s']} tokens/s (greedy, HF)"),
        ("frozen base bitwise frozen", "yes" if r["frozen_base_unchanged"] else "NO"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the same code on CPU with a 2-layer model")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    result = run_check(tiny=args.tiny, steps=args.steps)
    print(format_table(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if result["frozen_base_unchanged"] else 1)


if __name__ == "__main__":
    main()
