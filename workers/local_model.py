"""Build a small model (Qwen2, Llama or Qwen3 layout) and a byte-level BPE tokenizer offline, deterministically.

Tests and the laptop config use such a model instead of a hub checkpoint: nothing can be downloaded at run
time on the CPU machines, and a trained ~1k-token vocabulary keeps a GRPO step cheap (the embedding matrix of
a 49k-token vocabulary dominated a tiny model's step time, see ``../shared/notes/measured-here.md``).

What it builds:

- a tokenizer trained with the ``tokenizers`` library: Qwen2's pre-tokenizer regex (single digits, so numbers
  tokenize digit by digit as in Qwen) + byte-level BPE, special tokens ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>``, and a Qwen-style chat template. eos is ``<|im_end|>`` (it ends every assistant turn, so
  TRL's GRPO/SFT trainers stop and mask completions there) and pad is ``<|endoftext|>``, as in
  Qwen2.5-Instruct.
- ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` are *added tokens that are not special*: each is
  one token, so the format reward is learnable, and ``decode(..., skip_special_tokens=True)`` keeps them in
  the text the reward functions parse (special tokens would be stripped).
- a randomly initialised model of the chosen family (:mod:`workers.families`: ``Qwen2ForCausalLM`` by
  default, ``LlamaForCausalLM`` or ``Qwen3ForCausalLM``; all seven projections q/k/v/o/gate/up/down, tied
  embeddings), its vocabulary exactly the tokenizer's size.

Simplified: the chat template has no tool calls and no default system prompt (Qwen2.5 inserts one).

Use::

    from workers.local_model import build_local_model
    texts = task.corpus(task.load("../shared/data/gsm8k/train.jsonl", "train"))   # a workers.tasks task
    build_local_model("runs/models/tiny", num_layers=4, hidden_size=64, intermediate_size=128, num_heads=4,
                      num_kv_heads=2, vocab_size=1000, train_texts=texts, seed=0, family="llama")

or ``python -m workers.local_model OUT_DIR --train-jsonl ../shared/data/gsm8k/train.jsonl``. A directory that
already holds a build with the same arguments is reused (``rankstudy_build.json`` records them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from orchestrator.core.config import LocalModelBuild
from orchestrator.core.errors import StudyError
from orchestrator.core.typed_yaml import help_of
from workers.families import FAMILIES

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
FORMAT_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
BUILD_RECORD = "rankstudy_build.json"
# Bump when the build recipe changes, so cached directories from an older recipe are rebuilt.
RECIPE_VERSION = 1

# Qwen2's pre-tokenizer split (from its tokenizer.json): contractions, words, single digits, punctuation runs,
# newlines, spaces. Single digits matter for GSM8K: every number is spelled the same way token by token.
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5's chat format without tools and without the default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` with Qwen's special tokens and chat template.

    The vocabulary holds ``vocab_size`` entries (256 byte symbols, 3 special tokens and the merges) plus the 4
    format tokens; a small corpus can end with fewer merges. Training is deterministic for the same texts.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise StudyError(f"vocab_size: must be at least {256 + len(SPECIAL_TOKENS) + 1} (256 bytes + specials), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is in the vocabulary, so any text (digits, symbols unseen in training) stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in FORMAT_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _build_record(texts: Sequence[str], **args) -> dict:
    """What identifies a build: its arguments, a hash of the corpus and the library versions that shape it."""
    corpus = hashlib.sha256()
    for text in texts:
        corpus.update(text.encode())
        corpus.update(b"\0")
    return {
        "recipe_version": RECIPE_VERSION,
        **args,
        "train_texts_sha256": corpus.hexdigest(),
        "train_texts_count": len(texts),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
    }


def _read_record(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None


def build_local_model(
    out_dir: str | os.PathLike,
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    vocab_size: int,
    train_texts: Iterable[str],
    seed: int,
    max_position_embeddings: int = 2048,
    family: str = "qwen2",
) -> Path:
    """Train a tokenizer, build a randomly initialised model of ``family`` from ``seed``, save both to ``out_dir``.

    Same arguments give byte-identical files. If ``out_dir`` already holds a build with the same arguments
    (``rankstudy_build.json``) it is reused; the build is written to a temporary sibling directory and renamed,
    so ``out_dir`` never holds a half-written model (and concurrent builders of the same dir agree).
    """
    out_dir = Path(out_dir)
    texts = list(train_texts)
    shape = dict(num_layers=num_layers, hidden_size=hidden_size, intermediate_size=intermediate_size,
                 num_heads=num_heads, num_kv_heads=num_kv_heads, vocab_size=vocab_size, seed=seed,
                 max_position_embeddings=max_position_embeddings, family=family)
    _check_arguments(texts, family, hidden_size, num_heads, num_kv_heads)
    record = _build_record(texts, **shape)
    if _read_record(out_dir) == record:
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and _read_record(out_dir) is None)):
        raise StudyError(
            f"{out_dir} exists and is not a rankstudy model build; choose an empty or new directory for the local model"
        )
    tokenizer = train_tokenizer(texts, vocab_size, model_max_length=max_position_embeddings)
    model = _random_model(tokenizer, family=family, num_layers=num_layers, hidden_size=hidden_size,
                          intermediate_size=intermediate_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
                          max_position_embeddings=max_position_embeddings, seed=seed)
    _save_into_place(out_dir, model, tokenizer, record)
    return out_dir


def _check_arguments(texts: list[str], family: str, hidden_size: int, num_heads: int, num_kv_heads: int) -> None:
    if not texts:
        raise StudyError("train_texts: the tokenizer corpus is empty; pass GSM8K question/answer texts")
    if family not in FAMILIES:
        raise StudyError(f"family: must be one of {', '.join(FAMILIES)}, got {family!r}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise StudyError(
            f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}), and num_heads by "
            f"num_kv_heads ({num_kv_heads})"
        )


def _random_model(tokenizer: PreTrainedTokenizerFast, *, family: str, num_layers: int, hidden_size: int,
                  intermediate_size: int, num_heads: int, num_kv_heads: int, max_position_embeddings: int, seed: int):
    """A randomly initialised model of ``family`` from ``seed``, its vocabulary exactly the tokenizer's size."""
    classes = FAMILIES[family]
    # Qwen3's head_dim defaults to 128 whatever the hidden size; the others derive it from hidden / heads.
    extra = {"head_dim": hidden_size // num_heads} if family == "qwen3" else {}
    config = getattr(transformers, classes.config_class)(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    # fork_rng: seeding must not change the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, classes.model_class)(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def _save_into_place(out_dir: Path, model, tokenizer: PreTrainedTokenizerFast, record: dict) -> None:
    """Save into a temporary sibling directory and rename it to ``out_dir`` (keeping an identical concurrent build)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / BUILD_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if _read_record(out_dir) == record:
            return  # another process finished the same build meanwhile
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an empty dir or an older rankstudy build (checked above)
        try:
            os.rename(staging, out_dir)
        except OSError:
            # Another process renamed the same build into place first: use theirs if it is the one we wanted.
            if _read_record(out_dir) != record:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m workers.local_model OUT_DIR --train-jsonl FILE``: build a local model (``model.build``'s defaults:
    the laptop model's shape)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train-jsonl", required=True, help="GSM8K train .jsonl: the tokenizer corpus")
    defaults = LocalModelBuild()  # model.build's defaults, one place
    parser.add_argument("--family", default=defaults.family, choices=list(FAMILIES))
    for name in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "vocab_size", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name),
                            help=help_of(LocalModelBuild, name))
    args = parser.parse_args(argv)
    try:
        from workers.tasks import get_task

        gsm8k = get_task("gsm8k")
        path = build_local_model(
            args.out_dir, num_layers=args.num_layers, hidden_size=args.hidden_size,
            intermediate_size=args.intermediate_size, num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
            vocab_size=args.vocab_size, train_texts=gsm8k.corpus(gsm8k.load(args.train_jsonl, "train")),
            seed=args.seed, family=args.family,
        )
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(path)


if __name__ == "__main__":
    main()
