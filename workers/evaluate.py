"""Test-set evaluation: greedy completions for each test question, scored with the training rewards.

Generation is either HF ``generate`` (CPU path; left-padded batches) or the run's colocated vLLM engine
(``workers.generation.generate_greedy_vllm``), both greedy with every decoding setting explicit (so a model's
``generation_config.json`` cannot change them) and both from the same prompt token ids, tokenised as TRL
tokenises training prompts (:func:`prompt_token_ids`). Scoring is shared and pure: a completion is
``correct`` when the correctness reward gives 1.0 and ``format_ok`` when the format reward does, so the
evaluation uses exactly the reward functions of training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
import torch
from transformers import GenerationConfig

from orchestrator.core.contract import EVAL_SCHEMA
from orchestrator.core.errors import StudyError


def prompt_token_ids(tokenizer, conversations: Sequence[list[dict[str, str]]]) -> list[list[int]]:
    """The prompt tokens of each conversation exactly as TRL 1.16 tokenises training prompts: the chat template
    with the assistant turn opener, tokenised by ``apply_chat_template`` (no BOS added on top of the template's).

    Raises StudyError when the tokenizer has no chat template (a base model rather than an instruct model).
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise StudyError(
            f"tokenizer {name!r} has no chat template; use an instruct/chat model or set tokenizer.chat_template"
        )
    return [list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]) for messages in conversations]


def greedy_generation_config(tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Greedy decoding stated in full, so nothing of a model's own ``generation_config.json`` applies
    (Qwen2.5-Instruct ships sampling, top-k/top-p and a repetition penalty there; ``generate(**kwargs)`` would
    apply whatever the keyword arguments leave out)."""
    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, repetition_penalty=1.0,
                            temperature=None, top_k=None, top_p=None, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)


@torch.no_grad()
def generate_greedy_hf(model, tokenizer, prompt_ids: Sequence[list[int]], max_new_tokens: int,
                       batch_size: int) -> list[str]:
    """Greedy completions with HF generate, in left-padded batches of prompt token ids."""
    was_training = model.training
    model.eval()
    config = greedy_generation_config(tokenizer, max_new_tokens)
    outputs: list[str] = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            chunk = [list(ids) for ids in prompt_ids[start : start + batch_size]]
            # Decoder-only models must be left-padded for batched generation.
            batch = tokenizer.pad({"input_ids": chunk}, padding=True, padding_side="left",
                                  return_tensors="pt").to(model.device)
            generated = model.generate(**batch, generation_config=config)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def evaluation_table(
    labels, items: Sequence[int], targets: Sequence[str], completions: Sequence[str], task
) -> pa.Table:
    """The DIR/eval/<run_id>.parquet table for one run, scored by the task (``Task.score``)."""
    scores = task.score(list(completions), list(targets))
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
    generate: Callable[[list[list[int]]], list[str]],
    prompts: Sequence[list[int]],
    items: Sequence[int],
    targets: Sequence[str],
    labels,
    batch_size: int,
    task,
    on_progress: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """Generate in chunks of ``batch_size`` (reporting progress) and return the scored table."""
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        completions.extend(generate(list(prompts[start : start + batch_size])))
        if on_progress:
            on_progress(len(completions), len(prompts))
    return evaluation_table(labels, items, targets, completions, task)
