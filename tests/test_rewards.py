"""Rewards: format and correctness on examples, robustness to any model output, TRL naming."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trl.trainer.utils import get_callable_name

from orchestrator.core.errors import StudyError
from workers.rewards import correctness_reward, extract_answer, format_reward, parse_number
from workers.tasks import get_task
from workers.tasks.gsm8k import gold_number
from workers.trainer import trl_metric_columns

GSM8K = get_task("gsm8k")


def wrap(answer: str, think: str = "reasoning") -> str:
    return f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>\n"


def as_message(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    "text",
    [
        "<think>a</think><answer>1</answer>",
        "  \n<think>\nstep\n</think>\n\n<answer> 1 </answer>\n\n",
        "<think></think><answer></answer>",
        "<think>multi\nline\n</think>\t<answer>x</answer>",
    ],
)
def test_format_reward_credits_one_think_then_one_answer(text):
    assert format_reward([text]) == [1.0]
    assert format_reward([as_message(text)]) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "18",
        "<answer>1</answer>",
        "<think>a</think>",
        "<answer>1</answer><think>a</think>",
        "intro <think>a</think><answer>1</answer>",
        "<think>a</think>between<answer>1</answer>",
        "<think>a</think><answer>1</answer> trailing",
        "<think>a</think><think>b</think><answer>1</answer>",
        "<think>a</think><answer>1</answer><answer>2</answer>",
        "<think><think>a</think></think><answer>1</answer>",
        "<think>a<answer>1</answer></think><answer>1</answer>",
        "<think>a</think><answer>1",
        "<think>a<answer>1</answer>",
        "<THINK>a</THINK><ANSWER>1</ANSWER>",
    ],
)
def test_format_reward_rejects_anything_else(text):
    assert format_reward([text]) == [0.0]
    assert format_reward([as_message(text)]) == [0.0]


def test_rewards_are_batched_in_input_order():
    completions = [wrap("5"), "5", wrap("6"), as_message(wrap("5"))]
    assert format_reward(completions) == [1.0, 0.0, 1.0, 1.0]
    assert correctness_reward(completions, answer=["5"] * 4) == [1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("18", "18"),
        ("18.0", "18"),
        ("18.00", "18"),
        ("$18", "18"),
        ("18.", "18"),
        ("1,000", "1000"),
        ("$1,234,567.00", "1234567"),
        ("-5", "-5"),
        ("+7", "7"),
        ("0.5", ".5"),
        ("9" * 5000, "9" * 5000),
    ],
)
def test_correctness_credits_numerically_equal_answers(predicted, gold):
    assert correctness_reward([wrap(predicted)], answer=[gold]) == [1.0]
    # Correctness does not require the think block; the format reward scores that.
    assert correctness_reward([f"<answer>{predicted}</answer>"], answer=[gold]) == [1.0]


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("19", "18"),
        ("18 or 19", "18"),
        ("18 eggs", "18"),
        ("x = 18", "18"),
        ("18/1", "18"),
        ("1.8e1", "18"),
        ("", "18"),
        ("-18", "18"),
        ("١٨", "18"),  # Arabic-Indic digits: Decimal() would accept them
        ("１８", "18"),  # full-width digits
        ("NaN", "18"),
        ("Infinity", "18"),
        ("1e999999", "18"),
        ("9" * 5000, "9"),
        ("9" * 5000 + "8", "9" * 5000 + "9"),
    ],
)
def test_correctness_rejects_other_or_unclear_answers(predicted, gold):
    assert correctness_reward([wrap(predicted)], answer=[gold]) == [0.0]


def test_correctness_needs_exactly_one_answer_block():
    assert correctness_reward(["the answer is 18"], answer=["18"]) == [0.0]
    assert correctness_reward(["<answer>18</answer><answer>18</answer>"], answer=["18"]) == [0.0]
    assert correctness_reward(["</answer>18<answer>"], answer=["18"]) == [0.0]


def test_correctness_gives_zero_when_the_gold_is_not_a_number():
    assert correctness_reward([wrap("NaN"), wrap("")], answer=["NaN", ""]) == [0.0, 0.0]


def test_correctness_rejects_mismatched_batch_lengths():
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        correctness_reward([wrap("1"), wrap("2")], answer=["1"])


def test_helpers():
    assert extract_answer("<think>t</think>\n<answer>\n 3 \n</answer>") == "3"
    assert extract_answer("no tags") is None
    assert parse_number("$1,000.50") == Decimal("1000.5")
    assert parse_number("") is None
    assert parse_number("١٨") is None
    assert gold_number("work\n#### $1,200") == "1200"
    assert gold_number("a\n####  -3 ") == "-3"
    with pytest.raises(ValueError):
        gold_number("no gold here")


def test_task_rewards_match_config_names_and_reject_unknown():
    assert tuple(GSM8K.rewards) == ("format", "correctness")
    assert GSM8K.reward_functions(["correctness", "format"]) == [correctness_reward, format_reward]
    with pytest.raises(StudyError, match="task 'gsm8k' has no reward 'length'.*format, correctness"):
        GSM8K.reward_functions(["format", "length"])


def test_metric_names_follow_trl_naming():
    # GRPOTrainer names reward metrics rewards/<get_callable_name(func)>/mean; they become reward_<name> columns.
    columns = trl_metric_columns(GSM8K.rewards)
    for name, func in GSM8K.rewards.items():
        assert columns[f"rewards/{get_callable_name(func)}/mean"] == f"reward_{name}"
    assert columns["rewards/format_reward/mean"] == "reward_format"
    assert columns["rewards/correctness_reward/mean"] == "reward_correctness"


# Model-output-like text: fragments of tags, numbers (huge, exotic, non-ASCII), whitespace and noise.
_FRAGMENTS = st.one_of(
    st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<think", "answer>", "\n", " ", "$", ","]),
    st.sampled_from(["NaN", "nan", "-inf", "Infinity", "1e999999", "1E-999999", "0x1F", "١٨", "１８", "½", "18."]),
    st.integers().map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    st.text(max_size=30),
)
MODEL_OUTPUT = st.lists(_FRAGMENTS, max_size=12).map("".join)
GOLD = st.one_of(st.integers(min_value=-(10**6), max_value=10**9).map(str), MODEL_OUTPUT)


@settings(max_examples=400, deadline=None)
@given(outputs=st.lists(MODEL_OUTPUT, min_size=1, max_size=4), gold=GOLD, conversational=st.booleans())
def test_any_output_gets_a_binary_reward_and_never_raises(outputs, gold, conversational):
    completions = [as_message(text) for text in outputs] if conversational else outputs
    for rewards in (format_reward(completions), correctness_reward(completions, answer=[gold] * len(outputs))):
        assert len(rewards) == len(outputs)
        assert set(rewards) <= {0.0, 1.0}


_THINK_TEXT = st.text(max_size=200).filter(lambda t: not any(tag in t for tag in ("<think>", "</think>",
                                                                                  "<answer>", "</answer>")))


@settings(max_examples=200, deadline=None)
@given(think=_THINK_TEXT, gold=st.integers(min_value=-(10**12), max_value=10**12), dollars=st.booleans())
def test_well_formed_correct_answers_earn_both_rewards(think, gold, dollars):
    shown = f"{'$' if dollars and gold >= 0 else ''}{gold:,}"
    completion = wrap(shown, think=think)
    assert format_reward([completion]) == [1.0]
    assert correctness_reward([completion], answer=[str(gold)]) == [1.0]
    assert correctness_reward([completion], answer=[str(gold + 1)]) == [0.0]
