"""GRPO rewards of the study's answer format: format compliance and answer correctness, batched pure functions.

Every task in the ``<think>...</think><answer>...</answer>`` format (:mod:`workers.tasks`) scores its
completions with these; a task's module says which of them it uses and under which config names.

Each reward has TRL's ``GRPOTrainer`` reward-function signature ``fn(completions, **kwargs) -> list[float]``:
``completions`` holds one entry per generated completion, either a plain string or (for conversational
prompts) a list of message dicts such as ``[{"role": "assistant", "content": "..."}]``; TRL passes every
dataset column (here ``answer``, the gold number string) as a keyword argument, one value per completion.

Rewards are binary, as in the paper: every output of a model, however malformed, gets 0.0 or 1.0 and
never raises (a reward that raises would kill a long GRPO run on one odd sample).

TRL 1.16 names a reward's metrics after the function's ``__name__`` (``reward_func_names`` in
``GRPOTrainer.__init__``) and logs, per reward, ``rewards/<name>/mean`` and ``rewards/<name>/std``, plus
``reward`` and ``reward_std`` for the sum. So this module's rewards appear as
``rewards/format_reward/mean``, ``rewards/format_reward/std``, ``rewards/correctness_reward/mean`` and
``rewards/correctness_reward/std`` (workers/trainer.py maps them to the metrics table's columns).

Simplified: answers are compared as plain decimal numbers only (no fractions, units, percentages or
scientific notation); every GSM8K gold answer is an integer, and the system prompt asks for only the
final number inside ``<answer>``.

Use::

    task = get_task(config.data.task)
    trainer = GRPOTrainer(..., reward_funcs=task.reward_functions(config.rewards))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

RewardFunction = Callable[..., list[float]]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# Whole completion: optional whitespace, one think block, optional whitespace, one answer block,
# optional whitespace. Tag counts are checked first, so the lazy groups cannot span a second tag.
_FORMAT_RE = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
# One plain decimal number with ASCII digits only: Decimal() itself would also accept "NaN", "Infinity",
# "1e999999" and non-ASCII digits such as "١٨", none of which is a GSM8K answer.
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def completion_text(completion: Any) -> str:
    """The text of one completion, plain or conversational (the contents of its messages, joined).

    >>> completion_text("<answer>3</answer>")
    '<answer>3</answer>'
    >>> completion_text([{"role": "assistant", "content": "<answer>3</answer>"}])
    '<answer>3</answer>'
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    >>> completion_text(None)
    ''
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        return "".join(completion_text(message) for message in completion)
    return ""


def _content_text(content: Any) -> str:
    # Message content is a string, or (multimodal chat format) a list of {"type": "text", "text": ...} parts.
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return ""


def is_well_formatted(text: str) -> bool:
    """True when ``text`` is exactly one ``<think>`` block then one ``<answer>`` block, only whitespace around.

    >>> is_well_formatted("<think>\\n2+2=4\\n</think>\\n<answer>\\n4\\n</answer>\\n")
    True
    >>> is_well_formatted("<answer>4</answer>")
    False
    >>> is_well_formatted("<think>a</think><answer>4</answer> done")
    False
    >>> is_well_formatted("<think>a</think><think>b</think><answer>4</answer>")
    False
    """
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    return _FORMAT_RE.fullmatch(text) is not None


def extract_answer(text: str) -> str | None:
    """The stripped content of the single ``<answer>...</answer>`` block, or None.

    None when there is no answer block, more than one ``<answer>`` or ``</answer>`` tag, or the closing tag
    comes first. A ``<think>`` block is not required here: correctness is scored apart from format.

    >>> extract_answer("<think>x</think><answer> 42 </answer>")
    '42'
    >>> extract_answer("42") is None
    True
    >>> extract_answer("<answer>1</answer><answer>2</answer>") is None
    True
    >>> extract_answer("</answer>1<answer>") is None
    True
    """
    if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
        return None
    start = text.index(ANSWER_OPEN) + len(ANSWER_OPEN)
    end = text.index(ANSWER_CLOSE)
    if end < start:
        return None
    return text[start:end].strip()


def parse_number(text: str | None) -> Decimal | None:
    """``text`` as one decimal number after removing ``,`` and ``$`` and surrounding whitespace, else None.

    Strict on purpose: the whole text must be one number with ASCII digits, an optional sign and an
    optional decimal point, so "18 or 19", "18 eggs", "1e3", "NaN" and non-ASCII digits give None.
    Decimal keeps any number of digits exactly, so huge answers neither overflow nor round.

    >>> parse_number("$1,234.50")
    Decimal('1234.50')
    >>> parse_number(" -7 ")
    Decimal('-7')
    >>> parse_number("18 or 19") is None, parse_number("1e999999") is None, parse_number("NaN") is None
    (True, True, True)
    >>> parse_number(None) is None
    True
    """
    if text is None:
        return None
    cleaned = text.replace(",", "").replace("$", "").strip()
    if _NUMBER_RE.fullmatch(cleaned) is None:
        return None
    try:
        return Decimal(cleaned)
    except InvalidOperation:  # unreachable for strings the pattern accepts; kept so a reward never raises
        return None


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 per completion that is exactly ``<think>...</think>`` then ``<answer>...</answer>``, else 0.0.

    Whitespace is allowed around and between the blocks; anything else outside them, a missing block, or a
    repeated or nested tag gives 0.0. TRL logs it as ``rewards/format_reward/mean``.

    >>> format_reward(["<think>a</think> <answer>4</answer>", "<answer>4</answer>",
    ...                [{"role": "assistant", "content": "<think>a</think><answer>4</answer>"}]])
    [1.0, 0.0, 1.0]
    """
    return [1.0 if is_well_formatted(completion_text(c)) else 0.0 for c in completions]


def correctness_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs: Any) -> list[float]:
    """1.0 per completion whose answer block holds the gold number, else 0.0.

    Rule: the content of the single ``<answer>`` block (:func:`extract_answer`), after removing ``,``, ``$``
    and surrounding whitespace, must be exactly one number (:func:`parse_number`) that equals the gold
    number from ``answer`` (TRL's dataset column) numerically, so ``18``, ``18.0`` and ``$18.00`` are all
    credited for gold ``18`` but "18 or 19" and "x = 18" are not. The think block is not required (the
    format reward scores that). TRL logs it as ``rewards/correctness_reward/mean``.

    >>> correctness_reward(["<answer>18.00</answer>", "<answer>18 or 19</answer>", "18"], answer=["18"] * 3)
    [1.0, 0.0, 0.0]
    """
    if len(answer) != len(completions):
        raise ValueError(f"correctness_reward got {len(completions)} completions but {len(answer)} answers")
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        predicted = parse_number(extract_answer(completion_text(completion)))
        target = parse_number(str(gold))  # str(): tolerate an int gold column
        rewards.append(1.0 if predicted is not None and target is not None and predicted == target else 0.0)
    return rewards
