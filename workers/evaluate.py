"""Test-set evaluation: greedy completions for each test question, scored with the training rewards.

Generation is either HF ``generate`` (CPU path; left-padded batches, greedy) or the run's colocated vLLM
engine (``workers.generation.generate_greedy_vllm``). Scoring is shared and pure: a completion is
``correct`` when the correctness reward gives 1.0 and ``format_ok`` when the format reward does, so the
evaluation uses exactly the reward functions of training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
import torch

from orchestrator.contract import EVAL_SCHEMA
from workers.rewards import correctness_reward, extract_answer, format_reward


def score_completions(completions: Sequence[str], targets: Sequence[str]) -> dict[str, list]:
    """Per-item scores with the training reward functions.

    >>> score_completions(["<think>a</think><answer>7</answer>", "7"], ["7", "7"])
    {'correct': [True, False], 'format_ok': [True, False], 'prediction': ['7', None]}
    """
    correct = correctness_reward(list(completions), answer=list(targets))
    formatted = format_reward(list(completions))
    return {
        "correct": [c == 1.0 for c in correct],
        "format_ok": [f == 1.0 for f in formatted],
        "prediction": [extract_answer(c) for c in completions],
    }


@torch.no_grad()
def generate_greedy_hf(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions with HF generate, in left-padded batches (prompts are already chat-rendered)."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models must be left-padded for batched generation
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            generated = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                temperature=None, top_p=None, top_k=None,
            )
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def evaluation_table(
    labels, items: Sequence[int], targets: Sequence[str], completions: Sequence[str]
) -> pa.Table:
    """The DIR/eval/<run_id>.parquet table for one run."""
    scores = score_completions(completions, targets)
    n = len(items)
    return pa.table(
        {
            "run_id": [labels.run_id] * n,
            "strategy": [labels.strategy] * n,
            "seed": [labels.seed] * n,
            "item": list(items),
            "correct": scores["correct"],
            "format_ok": scores["format_ok"],
            "prediction": scores["prediction"],
            "target": list(targets),
            "completion": list(completions),
        },
        schema=EVAL_SCHEMA,
    )


def evaluate(
    generate: Callable[[list[str]], list[str]],
    prompts: Sequence[str],
    items: Sequence[int],
    targets: Sequence[str],
    labels,
    batch_size: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """Generate in chunks of ``batch_size`` (reporting progress) and return the scored table."""
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        completions.extend(generate(list(prompts[start : start + batch_size])))
        if on_progress:
            on_progress(len(completions), len(prompts))
    return evaluation_table(labels, items, targets, completions)
