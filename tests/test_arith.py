"""The generated arithmetic task (issue 12): deterministic, disjoint, correct, difficulty as configured, and
scored exactly as GSM8K is (same prompt, rewards, format and loader columns)."""

from __future__ import annotations

import re

import pytest

from orchestrator.core.config import DataConfig
from orchestrator.core.errors import ConfigError
from orchestrator.resolve import resolve_data
from workers.rewards import correctness_reward, format_reward
from workers.tasks import get_task

ARITH = get_task("arith")
STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


def data(**options) -> DataConfig:
    return resolve_data(DataConfig(task="arith", options={"train_size": 300, "test_size": 100, **options}))


def test_generation_is_deterministic_disjoint_and_sized():
    config = data()
    train, test = ARITH.generate(config.options, "train"), ARITH.generate(config.options, "test")
    assert len(train) == 300 and len(test) == 100
    assert ARITH.generate(data().options, "train") == train  # same options, same problems
    assert ARITH.generate(data(seed=1).options, "train") != train
    questions = [p["question"] for p in train + test]
    assert len(set(questions)) == len(questions)  # disjoint splits, no repeats


@pytest.mark.parametrize("options", [{}, {"min_steps": 2, "max_steps": 2, "max_operand": 9, "operations": ["+"]},
                                     {"max_steps": 1, "operations": ["*", "-"]}])
def test_every_worked_solution_is_right_and_follows_the_difficulty(options):
    config = data(**options)
    resolved = config.options
    for problem in ARITH.generate(resolved, "train") + ARITH.generate(resolved, "test"):
        parsed = ARITH.parse_record(problem)  # the GSM8K parser: '#### <number>' and a numeric gold
        steps = STEP.findall(problem["answer"])
        assert resolved["min_steps"] <= len(steps) <= resolved["max_steps"]
        start = int(re.search(r"has (\d+) ", problem["question"]).group(1))
        assert 1 <= start <= resolved["max_operand"]
        value = start
        for a, op, b, c in steps:
            assert op in resolved["operations"] and int(a) == value
            assert int(b) <= resolved["max_operand"] and int(c) == eval(f"{a} {op} {b}") >= 0  # noqa: S307
            value = int(c)
        assert parsed["answer"] == str(value)


def test_it_is_scored_loaded_and_warm_started_like_gsm8k():
    config = data()
    dataset = ARITH.dataset(config, "test", limit=20)
    assert dataset.column_names == ["question", "answer", "solution", "item", "prompt"]
    assert len(dataset) == 20 and dataset["item"][:3] == [0, 1, 2]
    assert dataset["prompt"][0][0] == {"role": "system", "content": get_task("gsm8k").system_prompt}
    golds = dataset["answer"]
    right = [f"<think>\nwork\n</think>\n<answer>\n{gold}\n</answer>" for gold in golds]
    assert correctness_reward(right, answer=golds) == format_reward(right) == [1.0] * 20
    assert correctness_reward(right, answer=[str(int(g) + 1) for g in golds]) == [0.0] * 20
    example = ARITH.sft_example(dataset["question"][0], dataset["solution"][0], "S")
    assert example["completion"][0]["content"].endswith(f"<answer>\n{golds[0]}\n</answer>")
    assert ARITH.source_key(config, "train") != ARITH.source_key(data(seed=1), "train")


def test_options_are_checked_and_files_refused():
    assert data().options["max_steps"] == 3 and data().options["operations"] == ["+", "-", "*"]  # defaults filled
    with pytest.raises(ConfigError, match=r"^options\.max_stps: unknown key \(did you mean 'max_steps'\?\)"):
        data(max_stps=2)
    with pytest.raises(ConfigError, match=r"^options\.min_steps: must be <= max_steps \(1\), got 2"):
        data(min_steps=2, max_steps=1)
    with pytest.raises(ConfigError, match=r"^options\.operations: must be distinct values of \+, -, \*"):
        data(operations=["/"])
    with pytest.raises(ConfigError, match=r"^train: task 'arith' generates its data"):
        resolve_data(DataConfig(task="arith", train="x.jsonl"))
    with pytest.raises(ConfigError, match=r"^options: only \d+ distinct problems found"):
        data(max_operand=2, max_steps=1, operations=["+"], train_size=5000)
    with pytest.raises(ConfigError, match=r"^options: task 'gsm8k' reads data.train/data.test and takes no"):
        resolve_data(DataConfig(train="openai/gsm8k", test="openai/gsm8k", options={"seed": 1}))
