"""GSM8K loading: the real files parse completely, limits, the hub path, bad files, chat templates."""

import json
import re
from pathlib import Path

import datasets
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from trl.data_utils import is_conversational

from orchestrator.core.errors import StudyError
from workers.rewards import correctness_reward, format_reward, parse_number
from workers.tasks import get_task
from workers.tasks.gsm8k import SYSTEM_PROMPT

load_gsm8k = get_task("gsm8k").load  # the task's loader: the same one a hub id or a local file goes through

GSM8K = Path(__file__).resolve().parents[2] / "shared/data/gsm8k"
COLUMNS = ["question", "answer", "solution", "item", "prompt"]


@pytest.fixture(scope="module")
def gsm8k():
    return {split: load_gsm8k(str(GSM8K / f"{split}.jsonl"), split) for split in ("train", "test")}


def raw_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_gsm8k_record_loads_and_its_gold_is_credited(gsm8k):
    splits = gsm8k
    assert {split: len(ds) for split, ds in splits.items()} == {"train": 7473, "test": 1319}
    for split, ds in splits.items():
        assert ds.column_names == COLUMNS
        raw = raw_records(GSM8K / f"{split}.jsonl")
        rows = ds.to_dict()
        assert rows["question"] == [r["question"] for r in raw]
        assert rows["solution"] == [r["answer"] for r in raw]
        assert rows["item"] == list(range(len(raw)))
        # The gold is the last line's number, as a clean number string that matches the original text.
        for gold, solution in zip(rows["answer"], rows["solution"], strict=True):
            last_line = solution.strip().splitlines()[-1]
            assert last_line.startswith("####") and last_line[4:].replace(",", "").strip() == gold
            assert parse_number(gold) is not None
        completions = [[{"role": "assistant", "content": f"<think>\nwork\n</think>\n<answer>\n{gold}\n</answer>"}]
                       for gold in rows["answer"]]
        assert correctness_reward(completions, answer=rows["answer"]) == [1.0] * len(raw)
        assert format_reward(completions) == [1.0] * len(raw)
        # Shifting every gold by one must lose all credit: the check above is not vacuous.
        shifted = [str(int(gold) + 1) for gold in rows["answer"]]
        assert correctness_reward(completions, answer=shifted) == [0.0] * len(raw)


def test_prompt_is_conversational_with_the_system_prompt(gsm8k):
    splits = gsm8k
    row = splits["test"][3]
    assert row["prompt"] == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["question"]}]
    assert is_conversational(row)  # so GRPOTrainer applies the chat template and yields message completions


def test_limit_keeps_the_first_records(gsm8k):
    splits = gsm8k
    first = load_gsm8k(str(GSM8K / "test.jsonl"), "test", limit=5, system_prompt="Answer briefly.")
    assert len(first) == 5
    assert first["item"][:] == [0, 1, 2, 3, 4]
    assert first["question"][:] == splits["test"]["question"][:5]
    assert first["prompt"][0][0] == {"role": "system", "content": "Answer briefly."}
    assert len(load_gsm8k(str(GSM8K / "test.jsonl"), "test", limit=10**6)) == 1319
    with pytest.raises(StudyError, match="positive integer"):
        load_gsm8k(str(GSM8K / "test.jsonl"), "test", limit=0)


def test_hub_id_loads_through_datasets_with_config_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict(
            {"question": ["q0", "q1", "q2"], "answer": ["a\n#### 1,000", "b\n#### 2", "c\n#### $3"]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_gsm8k("openai/gsm8k", "test", limit=2)
    assert calls == [(("openai/gsm8k", "main"), {"split": "test"})]
    assert ds.column_names == COLUMNS
    assert ds["answer"][:] == ["1000", "2"]
    assert ds["item"][:] == [0, 1]


def test_hub_failure_is_a_study_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(StudyError, match=r"'openai/gsm8k' \(config 'main', split 'train'\) could not be loaded"):
        load_gsm8k("openai/gsm8k", "train")


def test_hub_record_errors_name_the_record(monkeypatch):
    monkeypatch.setattr(
        datasets, "load_dataset",
        lambda *a, **k: datasets.Dataset.from_dict({"question": ["q0", "q1"], "answer": ["#### 1", "#### two"]}),
    )
    with pytest.raises(StudyError, match=r"openai/gsm8k \(main, split test\) record 1: gold answer 'two'"):
        load_gsm8k("openai/gsm8k", "test")


GOOD = '{"question": "q", "answer": "w\\n#### 4"}'


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        # Line 3 lacks its answer; the blank line 2 must be counted (the JSON reader skips it).
        ([GOOD, "", '{"question": "q"}', GOOD], r"bad\.jsonl:3: field 'answer' must be a non-empty string"),
        ([GOOD, GOOD, '{"answer": "#### 5"}'], r"bad\.jsonl:3: field 'question' must be a non-empty string"),
        ([GOOD, '{"question": "q", "answer": "#### eighteen"}'], r"bad\.jsonl:2: gold answer 'eighteen'"),
        ([GOOD, '{"question": "q", "answer": "#### 1e5"}'], r"bad\.jsonl:2: gold answer '1e5'"),
        ([GOOD, GOOD, '{"question": "q", "answer": "no marker"}'], r"bad\.jsonl:3: answer has no '#### <number>'"),
        ([GOOD, '{"question": "q", "answer": 4}'], r"bad\.jsonl:2: field 'answer' must be a non-empty string"),
        (['{"question": "q", "solution": "#### 4"}'], r"bad\.jsonl:1: record has no 'answer' field"),
        ([GOOD, '{"question": "q", "answer": '], r"bad\.jsonl:2: not valid JSON"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(StudyError, match=message):
        load_gsm8k(str(path), "train")


def test_missing_file_is_a_study_error(tmp_path):
    with pytest.raises(StudyError, match=r"missing\.jsonl does not exist"):
        load_gsm8k(str(tmp_path / "missing.jsonl"), "train")


def tiny_tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "hello": 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = chat_template
    return tokenizer


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_evaluation_prompts_are_the_chat_template_tokenised_as_trl_tokenises_training_prompts():
    from workers.evaluate import prompt_token_ids

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hello"}]
    tokenizer = tiny_tokenizer(CHAT_TEMPLATE)
    (ids,) = prompt_token_ids(tokenizer, [messages])
    text = "<|system|>S<|end|><|user|>hello<|end|><|assistant|>"
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_tokenizer_without_chat_template_is_a_study_error():
    from workers.evaluate import prompt_token_ids

    with pytest.raises(StudyError, match="has no chat template"):
        prompt_token_ids(tiny_tokenizer(None), [[{"role": "user", "content": "hi"}]])


@pytest.mark.parametrize(("lines", "message"), [
    ([], r"empty\.jsonl: holds no records"),
    (["", "   "], r"empty\.jsonl: holds no records"),
    ([GOOD, '{"question": "q", "answer": "#### 7 apples"}'], r"empty\.jsonl:2: gold answer '7 apples'"),
    ([GOOD, '{"question": "q", "answer": "seven"}'], r"empty\.jsonl:2: answer has no '#### <number>'"),
])
def test_bad_data_stops_plan_and_run_before_any_model_loads(tmp_path, lines, message):
    # The config checks every record of the local data files when the study is planned: `rankstudy plan` and
    # `rankstudy run` both stop with one line naming file and line, before Ray, a model, or an output directory.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    path = tmp_path / "empty.jsonl"
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    with pytest.raises(StudyError, match=message):
        load_gsm8k(str(path), "train")  # the worker's loader says the same
    for command in (["plan"], ["run", "--output", str(tmp_path / "out")]):
        out = subprocess.run([sys.executable, "-m", "orchestrator", *command[:1], "configs/laptop-gsm8k.yaml",
                              *command[1:], "--set", f"data.train={GSM8K / 'train.jsonl'}",
                              "--set", f"data.test={path}"], cwd=repo, capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("error: data.test: ") and "Traceback" not in out.stderr
        assert re.search(message, out.stderr), out.stderr
    assert not (tmp_path / "out").exists()



def test_evaluation_adds_no_second_bos_for_tokenizers_that_add_one():
    # Llama-style: the tokenizer prepends <s> when encoding and the chat template starts with <s> too.
    from tokenizers import processors

    from workers.evaluate import prompt_token_ids

    vocab = {"[UNK]": 0, "<s>": 1, "hello": 2, "<|user|>": 3, "<|end|>": 4, "<|assistant|>": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<s>", "<|user|>", "<|end|>", "<|assistant|>"])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>")
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
                               "<|end|> {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    messages = [{"role": "user", "content": "hello"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tokenizer(text)["input_ids"].count(1) == 2  # what tokenising the rendered text used to feed vLLM
    (ids,) = prompt_token_ids(tokenizer, [messages])
    assert ids.count(1) == 1 and ids[0] == 1 and ids == [1, 3, 2, 4, 5]
