"""GSM8K (Cobbe et al., 2021): grade-school math word problems with worked solutions ending ``#### <number>``.

Everything the study knows about GSM8K is here: loading (hub id ``openai/gsm8k``, config ``main``, or a local
.jsonl with ``question``/``answer`` fields, through :func:`workers.data.load_records`), the gold answer
(:func:`gold_number`: the number after ``####``), the system prompt asking for the ``<think>/<answer>``
format, the two rewards (format and correctness, :mod:`workers.rewards`) and the SFT warm-start example
(the solution's reasoning without calculator annotations, then the gold number alone in ``<answer>``).

Every record is checked (:meth:`GSM8K.parse_record`), when loading and, for local files, when the study is
planned: a missing or non-string field, or a gold answer that is not one number, is a one-line
:class:`StudyError` naming the file and line (or hub split and record).

Simplified: answers are compared as plain decimal numbers (every GSM8K gold answer is an integer).
"""

from __future__ import annotations

import re

from workers.data import build_prompt
from workers.rewards import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    correctness_reward,
    format_reward,
    parse_number,
)
from workers.tasks.registry import Task, register_task

SYSTEM_PROMPT = (
    "Respond in the following format:\n<think>\n...\n</think>\n<answer>\n...\n</answer>\n"
    "Put your step-by-step reasoning inside <think> and only the final number inside <answer>."
)
FIELDS = ("question", "answer")  # GSM8K's names: `answer` holds the worked solution ending "#### <gold>"
# GSM8K's calculator annotations, e.g. "48/2 = <<48/2=24>>24": the model should learn plain arithmetic text.
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")


def gold_number(solution: str) -> str:
    """The gold answer of a GSM8K solution: the text after ``####``, stripped, without ``,`` and ``$``.

    Raises ValueError when there is no ``####`` marker (the loader reports the file and line).

    >>> gold_number("48/2 = <<48/2=24>>24 clips in May.\\n#### 1,072")
    '1072'
    >>> gold_number("no marker")
    Traceback (most recent call last):
    ...
    ValueError: GSM8K answer has no '####' gold marker
    """
    if "####" not in solution:
        raise ValueError("GSM8K answer has no '####' gold marker")
    return solution.rpartition("####")[2].replace(",", "").replace("$", "").strip()


def strip_calculator_annotations(text: str) -> str:
    """``text`` without GSM8K's ``<<expression=result>>`` calculator annotations.

    >>> strip_calculator_annotations("48/2 = <<48/2=24>>24 clips")
    '48/2 = 24 clips'
    """
    return _CALCULATOR_RE.sub("", text)


@register_task
class GSM8K(Task):
    name = "gsm8k"
    description = "GSM8K grade-school math word problems, from the hub (openai/gsm8k) or a local .jsonl"
    system_prompt = SYSTEM_PROMPT
    rewards = {"format": format_reward, "correctness": correctness_reward}
    fields = FIELDS

    def parse_record(self, record) -> dict[str, str]:
        """The columns of one GSM8K record; ValueError naming the problem (the caller adds file and line).

        >>> GSM8K().parse_record({"question": "How many?", "answer": "2 + 2 = 4\\n#### 4"})["answer"]
        '4'
        """
        for name in FIELDS:
            value = record.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"field {name!r} must be a non-empty string, got {value!r}")
        solution = record["answer"]
        try:
            gold = gold_number(solution)
        except ValueError:
            raise ValueError("answer has no '#### <number>' gold line") from None
        if parse_number(gold) is None:
            raise ValueError(f"gold answer {gold[:40]!r} after '####' is not a number")
        return {"question": record["question"], "answer": gold, "solution": solution}

    def sft_example(self, question: str, solution: str, system_prompt: str = SYSTEM_PROMPT,
                    answer_block: bool = True) -> dict:
        """One conversational prompt/completion SFT example from a question and its worked solution: in the
        rewarded format, or with ``answer_block=False`` ending in GSM8K's own ``#### N`` line (plain).

        >>> example = GSM8K().sft_example("How many?", "3 + 4 = <<3+4=7>>7 apples.\\n#### 7", system_prompt="Be brief.")
        >>> [m["role"] for m in example["prompt"] + example["completion"]]
        ['system', 'user', 'assistant']
        >>> print(example["completion"][0]["content"])
        <think>
        3 + 4 = 7 apples.
        </think>
        <answer>
        7
        </answer>
        >>> plain = GSM8K().sft_example("How many?", "3 + 4 = 7 apples.\\n#### 7", answer_block=False)
        >>> print(plain["completion"][0]["content"])
        3 + 4 = 7 apples.
        #### 7
        """
        gold = gold_number(solution)
        reasoning = strip_calculator_annotations(solution.rpartition("####")[0]).strip()
        content = (f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{gold}\n{ANSWER_CLOSE}" if answer_block
                   else f"{reasoning}\n#### {gold}")
        return {"prompt": build_prompt(question, system_prompt),
                "completion": [{"role": "assistant", "content": content}]}
