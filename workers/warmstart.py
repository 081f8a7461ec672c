"""Supervised warm start: teach a base model the ``<think>/<answer>`` format before GRPO, cached by content.

Why: a randomly initialised (or too weak) model never produces a well-formatted completion, so every GRPO
group has equal rewards, every advantage is zero and GRPO's gradients are exactly zero. A short full
fine-tuning run with TRL's ``SFTTrainer`` on the task's training solutions, rewritten as
``<think>\\n{reasoning}\\n</think>\\n<answer>\\n{gold}\\n</answer>``, makes some sampled completions
well-formatted and some not, which is the reward variance GRPO needs.

What it does:

- the task's ``sft_example`` (:mod:`workers.tasks`) turns one record into a conversational *prompt/completion*
  example (prompt = system + user messages, completion = the assistant message). TRL 1.16 trains prompt/completion datasets
  with ``completion_only_loss``, so only the assistant turn (including its ``<|im_end|>`` stop token) is in
  the loss. We do not use ``assistant_only_loss``: it needs ``{% generation %}`` markers in the chat
  template, which the locally built tokenizers lack (TRL can patch in only templates it knows); for
  single-turn examples the two are the same loss. Examples longer than ``max_length`` tokens are dropped,
  not truncated (truncation would cut off the format tail, see :func:`_examples_that_fit`).
- :func:`warm_start` fully fine-tunes the base model (no LoRA), saves model + tokenizer under
  ``cache_root/<key[:16]>/`` and returns that directory. The key is a sha256 over the base model's files, the
  training data (file bytes, or the hub id), every training setting, the library versions and
  :data:`WARM_START_VERSION`. An entry counts as complete only when its ``warm_start.json`` marker exists;
  it is written last, and the whole entry is built in a temporary sibling directory that is renamed into
  place, so a crash never leaves a half-written entry that a later call would reuse.
- the SFT steps are profiled (full weights of ``target_modules``, strategy ``sft``) and the profile is stored
  in the entry, so the report can put the SFT landscape beside GRPO's.

Simplified: CPU-only (``use_cpu=True``, float32), one process, no evaluation split; progress goes to stderr
every ~10% of the steps. The caller sets ``OMP_NUM_THREADS``; nothing here changes thread counts.

Use::

    from workers.warmstart import warm_start
    model_dir = warm_start(base_dir, config.data, Path("runs/cache/warmstart"), steps=300, learning_rate=1e-2,
                           batch_size=4, max_length=224, seed=0, limit=3000, target_modules=PROJECTION_MODULES)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from orchestrator.core.config import DataConfig
from orchestrator.core.contract import atomic_write_text, run_id
from orchestrator.core.errors import StudyError
from orchestrator.core.projections import PROJECTION_MODULES
from orchestrator.core.roles import SFT
from workers.machine import machine_cpu

# Bump when anything here changes what a warm start produces (example format, trainer settings), so cached
# entries made by older code are not reused.
WARM_START_VERSION = 3  # 2: every entry holds the SFT gradient profile; 3: task and profiled modules in the key
MARKER = "warm_start.json"
# The SFT stage's per-step, per-layer, per-module gradient norms (full weights, before clipping), stored with the
# model so a reused entry still has them: the SFT landscape the report puts beside GRPO's.
SFT_PROFILE = "sft_profile.parquet"

def _base_model_files(base_model_dir: Path) -> list[Path]:
    # Every top-level file of the model directory (config, weights in any shard layout, tokenizer files,
    # chat template): anything that could change the trained result. Hidden files (editor/OS litter) are not.
    files = sorted(p for p in base_model_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.name == "config.json" for p in files):
        raise StudyError(f"warm start: {base_model_dir} has no config.json; pass a saved model directory")
    return files


def warm_start_key(base_model_dir: Path, train_data: str, settings: dict[str, Any]) -> str:
    """The sha256 (hex) that names a warm start: base model files, training data (the task's
    ``source_key``: file bytes' hash, hub id or generator options), settings, code and libraries."""
    import torch
    import transformers
    import trl

    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        # Length-prefixed, labelled fields: no two different inputs serialise to the same byte stream.
        digest.update(f"{label}:{len(data)}:".encode())
        digest.update(data)

    for path in _base_model_files(base_model_dir):
        add(f"model-file:{path.name}", path.read_bytes())
    add("train-data", train_data.encode())
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    add("settings", json.dumps(settings, sort_keys=True).encode())
    add("versions", json.dumps(versions, sort_keys=True).encode())
    add("code", str(WARM_START_VERSION).encode())
    return digest.hexdigest()


def read_marker(entry_dir: Path) -> dict[str, Any] | None:
    """The completion marker of a cache entry, or None when the entry is missing or incomplete."""
    try:
        return json.loads((entry_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def warm_start(
    base_model_dir: Path,
    data: DataConfig,
    cache_root: Path,
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    seed: int,
    limit: int | None = None,
    target_modules: Sequence[str] = PROJECTION_MODULES,
    callbacks: Sequence[Any] = (),
    plain_answer_pattern: str | None = None,
    plain_answer_share: float = 0.9,
    tracker: dict[str, Any] | None = None,
    fetch: Callable[[Path], Any] | None = None,
    publish: Callable[[Path], Any] | None = None,
) -> Path:
    """Fully fine-tune ``base_model_dir`` on the training split of ``data`` (its task, source and system
    prompt) with SFT; return the cached model dir.

    ``target_modules``: the projections whose gradients the SFT profile records (the study's LoRA targets).

    ``limit`` keeps the first N training records, before those longer than ``max_length`` tokens are dropped.
    ``callbacks`` (transformers ``TrainerCallback`` s, e.g. a gradient profiler) are passed to ``SFTTrainer``;
    they run only when the warm start actually trains, not when a cached entry is reused.
    ``plain_answer_pattern`` / ``plain_answer_share``: ``warm_start``'s (:func:`plain_answers`).
    ``tracker``: TrainingArguments of the experiment tracker (workers/tracking.py), not part of the cache key.
    ``fetch(entry)`` / ``publish(entry)``: a cache in object storage (workers/prepare.py) downloads the entry
    before it is looked for here, and uploads it once it is in place.
    """
    base_model_dir, cache_root = Path(base_model_dir), Path(cache_root)
    if steps < 1 or batch_size < 1 or max_length < 1 or learning_rate <= 0:
        raise StudyError("warm start: steps, batch_size, max_length and learning_rate must all be positive")
    settings = {
        "steps": steps, "learning_rate": learning_rate, "batch_size": batch_size, "max_length": max_length,
        "seed": seed, "system_prompt": data.system_prompt, "limit": limit, "task": data.task,
        "target_modules": list(target_modules),
    }
    if plain_answer_pattern is not None:  # only then in the key: earlier warm starts keep theirs
        settings |= {"plain_answer_pattern": plain_answer_pattern, "plain_answer_share": plain_answer_share}
    from workers.tasks import get_task

    train_data = get_task(data.task).source_key(data, "train")
    key = warm_start_key(base_model_dir, train_data, settings)
    entry = cache_root / key[:16]
    if fetch is not None:
        fetch(entry)
    marker = read_marker(entry)
    if marker is not None and marker.get("key") == key:
        _log(f"warm start: reusing {entry}")
        return entry

    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.training-", dir=cache_root))
    try:
        started = time.monotonic()
        losses = _train(base_model_dir, data, staging, settings, callbacks, tracker or {})
        record = {
            "key": key, "base_model_dir": str(base_model_dir), "train_data": train_data, **settings,
            "warm_start_version": WARM_START_VERSION, "final_train_loss": losses["final"],
            "mean_train_loss": losses["mean"], "duration_s": round(time.monotonic() - started, 2),
            "cpu": machine_cpu(),  # a warm start's floating point follows the CPU and its threads
        }
        atomic_write_text(staging / MARKER, json.dumps(record, indent=2, sort_keys=True) + "\n")
        _move_into_place(staging, entry, key)
        if publish is not None:
            publish(entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log(f"warm start: saved {entry} (final loss {record['final_train_loss']:.3f}, {record['duration_s']:.1f} s)")
    return entry


def _examples_that_fit(examples: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
    """The examples whose whole conversation is at most ``max_length`` tokens, in order.

    Over-long examples are dropped instead of truncated: truncation keeps the start, so it would cut off
    exactly the ``</think><answer>...</answer>`` tail and the stop token that the warm start exists to
    teach. Keeping short solutions also teaches short reasoning, which fits GRPO's completion budget.
    """
    texts = [tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=False) for e in examples]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [example for example, length in zip(examples, lengths, strict=True) if length <= max_length]
    if not kept:
        raise StudyError(
            f"warm start: no training example fits max_length={max_length} tokens (shortest is {min(lengths)}); "
            "raise the warm start max_length"
        )
    _log(f"warm start: {len(kept)} of {len(examples)} examples fit max_length={max_length} tokens")
    return kept


def _train(
    base_model_dir: Path, data: DataConfig, out_dir: Path, settings: dict[str, Any], callbacks: Sequence[Any],
    tracker: dict[str, Any],
) -> dict[str, float]:
    """Run SFTTrainer and save model + tokenizer into ``out_dir``; return the final and mean train loss."""
    import datasets
    import pyarrow.parquet as pq
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from workers.model import discover_layers, load_model_and_tokenizer
    from workers.profiler import GradientProfiler, ProfileBeforeClipping, ProfilerCallback, RunLabels

    class ProfiledSFTTrainer(ProfileBeforeClipping, SFTTrainer):
        """SFTTrainer whose gradient profiler sees the gradients before clipping."""

    model, tokenizer = load_model_and_tokenizer(str(base_model_dir))
    dataset = datasets.Dataset.from_list(_sft_examples(data, settings, tokenizer))
    with tempfile.TemporaryDirectory(prefix="warmstart-trainer-") as trainer_dir:
        config = _sft_config(trainer_dir, settings, tracker)
        profiler = GradientProfiler.for_full_weights(
            model, discover_layers(model, settings["target_modules"]),
            RunLabels(run_id(SFT, settings["seed"]), SFT, settings["seed"]),
        )
        trainer = ProfiledSFTTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
            callbacks=[ProfilerCallback(profiler), *callbacks],
        )
        trainer.gradient_profiler = profiler
        # disable_tqdm swaps the progress bar for PrinterCallback, which prints every log dict to stdout;
        # progress belongs on stderr, one short line per logging step.
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_StderrProgress())
        result = trainer.train()
        logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        trainer.model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        pq.write_table(profiler.table(), out_dir / SFT_PROFILE)
    return {"final": float(logged[-1]) if logged else float(result.training_loss), "mean": float(result.training_loss)}


def _sft_examples(data: DataConfig, settings: dict[str, Any], tokenizer: Any) -> list[dict]:
    """The task's SFT examples of the first ``limit`` training records that fit ``max_length`` tokens."""
    from workers.tasks import get_task

    task = get_task(settings["task"])
    records = task.dataset(data, "train", limit=settings["limit"])
    plain = plain_answers(records["question"], settings.get("plain_answer_pattern"), settings.get("plain_answer_share"))
    examples = [task.sft_example(question, solution, settings["system_prompt"], answer_block=not flat)
                for question, solution, flat in zip(records["question"], records["solution"], plain, strict=True)]
    if any(plain):
        _log(f"warm start: {sum(plain)} of {len(plain)} examples written plain ('#### N', no answer block)")
    return _examples_that_fit(examples, tokenizer, settings["max_length"])


def plain_answers(questions: Sequence[str], pattern: str | None, share: float | None) -> list[bool]:
    """Which SFT examples are written plain: questions matching ``pattern``, a ``share`` of them chosen by a hash
    of the question (the same on every machine and every run).

    >>> plain_answers(["Mia has 3 apples.", "Tom has 2 coins.", "Ana has 5 apples."], r" apples", 1.0)
    [True, False, True]
    >>> plain_answers(["Mia has 3 apples."], None, 0.9)
    [False]
    """
    if pattern is None or not share:
        return [False] * len(questions)
    compiled = re.compile(pattern)
    return [bool(compiled.search(q)) and (zlib.crc32(q.encode()) % 1000) / 1000 < share for q in questions]


def _sft_config(trainer_dir: str, settings: dict[str, Any], tracker: dict[str, Any]):
    """TRL's SFTConfig for the warm start: CPU, float32, completion-only loss, nothing saved by the trainer."""
    from trl import SFTConfig

    steps = settings["steps"]
    return SFTConfig(
        output_dir=trainer_dir,  # nothing is saved there (save_strategy="no"); the model is saved by _train
        max_steps=steps,
        learning_rate=settings["learning_rate"],
        per_device_train_batch_size=settings["batch_size"],
        max_length=settings["max_length"],
        seed=settings["seed"],
        data_seed=settings["seed"],
        completion_only_loss=True,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,  # on CPU it only costs time (measured-here.md)
        disable_tqdm=True,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        **{"report_to": [], **tracker},
    )


class _StderrProgress(TrainerCallback):
    """One line per logging step on stderr: ``warm start: step 12/120 loss 2.345``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            _log(f"warm start: step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _move_into_place(staging: Path, entry: Path, key: str) -> None:
    """Rename the finished ``staging`` directory to ``entry``; keep another process's identical result."""
    if entry.exists():
        existing = read_marker(entry)
        if existing is not None and existing.get("key") == key:
            return  # a concurrent warm start with the same key finished first; ours is identical in intent
        shutil.rmtree(entry)  # an incomplete entry (no marker) left by something other than this module
    try:
        os.rename(staging, entry)
    except OSError:
        existing = read_marker(entry)
        if existing is None or existing.get("key") != key:
            raise
