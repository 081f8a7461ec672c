"""Generation: tokens/s of the worker's vLLM path vs its HF path, same model, same prompts, alternating.

Two study runs of the laptop config are set up exactly as the worker sets them up (``workers.run.GRPORun``), one
with ``grpo.use_vllm`` (TRL's colocated engine, seeded, float32 + eager on CPU) and one without (HF generate),
on the prepared laptop model with its fresh LoRA adapter. Measured, alternating HF / vLLM ``repeats`` times:

- **training batch**: one GRPO rollout batch (``prompts_per_step`` prompts x ``num_generations``, sampled at the
  config's temperature) through TRL's own rollout function (``GRPOTrainer._generate``, reached through
  ``workers.compat``), i.e. exactly what a training step runs;
- **evaluation batch**: ``eval_batch_size`` test prompts, greedy, through the worker's evaluation functions
  (``generate_greedy_hf`` / ``generate_greedy_vllm``).

Tokens are the completions' tokens up to EOS (re-tokenised from the decoded text for both paths, so counted the
same way). For the greedy batch the share of identical completions shows both paths generate the same text.
Goal: vLLM >= 4x HF on the evaluation batch. The engine's start-up is reported apart (paid once per run).

Two models (``MODELS``): the laptop study's own (hidden 64, 8 layers), where per-operation overhead dominates
both paths, and a mid-size one (hidden 384, 10 layers, 6 heads of 64, 2 KV heads, intermediate 1024: 16M
parameters besides the embeddings) with the laptop tokenizer, built offline with random weights and no warm
start (``make bench``'s ``generation_mid``; at hidden 512 and 12 layers the ratio was higher still, 8.7x, but
its HF evaluation batch alone took a minute a repeat). Its completions are not meaningful text, but both paths
run the same greedy decoding to the same length, which is what tokens/s compares.

    python -m benchmarks.bench_generation [--repeats 3] [--model laptop|mid]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks.common import laptop_config, set_up_uniform_run, spread

GOAL = 4.0
# name -> (config overrides of configs/laptop.yaml, description). The mid-size model changes only the laptop
# build's shape, so its tokenizer (vocabulary, training text, seed) is the laptop model's.
MODELS = {
    "laptop": ((), "laptop (8-layer Qwen2, hidden 64, warm-started), 1 thread"),
    "mid": (("model.build.num_layers=10", "model.build.hidden_size=384", "model.build.intermediate_size=1024",
             "model.build.num_heads=6", "model.build.num_kv_heads=2", "warm_start=null"),
            "mid-size (10-layer Qwen2, hidden 384, laptop tokenizer, random weights), 1 thread"),
}


def _setup(config, study_dir: str):
    started = time.perf_counter()
    run = set_up_uniform_run(config, study_dir)
    return run, time.perf_counter() - started


def _count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def _timed(fn) -> tuple[object, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def _compare_paths(fns: dict, tokenizer, repeats: int, identical: bool) -> dict:
    """Tokens per second of the HF and vLLM paths of one batch, alternating, and their ratio; with ``identical``
    also the share of completions the two paths agree on (greedy decoding)."""
    tps = {"hf": [], "vllm": []}
    same = []
    for _ in range(repeats):
        texts = {}
        for name in ("hf", "vllm"):  # alternating: slow drift of the machine hits both alike
            texts[name], seconds = _timed(fns[name])
            tps[name].append(_count_tokens(tokenizer, texts[name]) / seconds)
        same.append(sum(a == b for a, b in zip(texts["hf"], texts["vllm"], strict=True)) / len(texts["hf"]))
    out = {"hf_tokens_per_s": spread(tps["hf"], 1), "vllm_tokens_per_s": spread(tps["vllm"], 1),
           "vllm_over_hf": spread([v / h for v, h in zip(tps["vllm"], tps["hf"], strict=True)], 2)}
    return {**out, "identical_completions": spread(same, 3)} if identical else out


def run(repeats: int = 3, model: str = "laptop") -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, as a study worker; before torch loads
    from workers.generation import vllm_environment

    # vLLM reads its thread count and KV-cache size from the environment when it loads (see vllm_environment);
    # one thread, as a study worker has.
    os.environ.update(vllm_environment(on_cpu=True))
    import torch

    torch.set_num_threads(1)
    from workers import compat
    from workers.evaluate import generate_greedy_hf, prompt_token_ids
    from workers.generation import generate_greedy_vllm

    overrides, description = MODELS[model]
    hf_config = laptop_config(list(overrides))
    g = hf_config.grpo
    vllm_config = laptop_config([*overrides, "grpo.use_vllm=true"])
    with tempfile.TemporaryDirectory(prefix="rankstudy-bench-gen-") as tmp:
        hf_run, _ = _setup(hf_config, f"{tmp}/hf")
        vllm_run, vllm_start_s = _setup(vllm_config, f"{tmp}/vllm")
        tokenizer = hf_run.tokenizer
        train_prompts = [p for p in hf_run.trainer.train_dataset["prompt"][: g.prompts_per_step]
                         for _ in range(g.num_generations)]
        eval_prompts = prompt_token_ids(tokenizer, hf_run.test_set["prompt"][: g.eval_batch_size])

        def train_batch(run):
            run.trainer.model.train()
            completions = compat.generate_rollouts(run.trainer, train_prompts)
            return [c[0]["content"] if isinstance(c, list) else c for c in completions]

        paths = {
            "training": {
                "hf": lambda: train_batch(hf_run),
                "vllm": lambda: train_batch(vllm_run),
            },
            "evaluation": {
                "hf": lambda: generate_greedy_hf(hf_run.trainer.model, tokenizer, eval_prompts,
                                                 g.max_completion_length, batch_size=len(eval_prompts)),
                "vllm": lambda: generate_greedy_vllm(vllm_run.trainer, eval_prompts, g.max_completion_length),
            },
        }
        for fn in (paths["training"]["vllm"], paths["evaluation"]["vllm"]):
            fn()  # warm-up: the first vLLM call syncs the adapter weights into the engine (once per step)
        result = {"repeats": repeats, "model_name": model, "model": description,
                  "vllm_engine_setup_s": round(vllm_start_s, 1)}
        for batch, fns in paths.items():
            size = len(train_prompts) if batch == "training" else len(eval_prompts)
            result[batch] = {"batch": size,
                             "sampling": f"temperature {g.temperature}" if batch == "training" else "greedy",
                             **_compare_paths(fns, tokenizer, repeats, identical=batch == "evaluation")}
        hf_run.cleanup()
        vllm_run.cleanup()
    result["goal"] = f"evaluation vllm_over_hf >= {GOAL}"
    result["within_goal"] = result["evaluation"]["vllm_over_hf"]["median"] >= GOAL
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=list(MODELS), default="laptop")
    args = parser.parse_args()
    print(json.dumps(run(args.repeats, args.model), indent=2))


if __name__ == "__main__":
    main()
