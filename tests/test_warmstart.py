"""The SFT warm start: it teaches the tiny model the format well enough for GRPO groups to have unequal
rewards, and its content-addressed cache is reused, keyed by every input, and never reused half-written."""

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from tests.fixtures.tiny import TINY_TEST_SETTINGS, gsm8k_data
from workers.data import build_prompt
from workers.evaluate import prompt_token_ids
from workers.rewards import extract_answer, format_reward, is_well_formatted
from workers.tasks import get_task
from workers.tasks.gsm8k import gold_number
from workers.warmstart import MARKER, read_marker, warm_start, warm_start_key

GSM8K = get_task("gsm8k")

GROUP_SIZE = 16
MAX_NEW_TOKENS = 96


@pytest.fixture(scope="module")
def train_jsonl(gsm8k_dir: Path) -> str:
    return str(gsm8k_dir / "train.jsonl")


@pytest.fixture(scope="module")
def warm_run(warm_model_dir: Path) -> dict:
    """The session's warm start of the tiny model (conftest's ``warm_model_dir``, TINY_TEST_SETTINGS)."""
    marker = read_marker(warm_model_dir)
    print(f"\nwarm start of the 4-layer model: {marker['duration_s']:.1f} s, final train loss "
          f"{marker['final_train_loss']:.3f}")
    return {"path": warm_model_dir, "cache_root": warm_model_dir.parent}


def _format_reward_per_group(model_dir: Path, prompts: list[list[dict[str, str]]]) -> list[float]:
    """Mean format reward of GROUP_SIZE completions sampled at temperature 1.0, per prompt (a GRPO group)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(0)
    means = []
    for messages in prompts:
        encoded = {"input_ids": torch.tensor(prompt_token_ids(tokenizer, [messages]))}
        with torch.no_grad():
            output = model.generate(
                **encoded, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=MAX_NEW_TOKENS, num_return_sequences=GROUP_SIZE,
            )
        texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        means.append(sum(format_reward(texts)) / GROUP_SIZE)
    return means


def test_sft_example_strips_calculator_annotations_and_puts_the_gold_in_answer(train_jsonl: str):
    record = json.loads(Path(train_jsonl).read_text().splitlines()[0])
    example = GSM8K.sft_example(record["question"], record["answer"], system_prompt="Be brief.")

    assert example["prompt"] == build_prompt(record["question"], "Be brief.")
    (assistant,) = example["completion"]
    content = assistant["content"]
    assert assistant["role"] == "assistant"
    assert "<<" in record["answer"] and "<<" not in content and ">>" not in content
    assert "####" not in content
    assert is_well_formatted(content)
    assert extract_answer(content) == gold_number(record["answer"])
    # The reasoning keeps the solution's words and results, only the annotations go.
    first_line = record["answer"].splitlines()[0]
    assert first_line.split("<<")[0] in content


def test_warm_start_gives_groups_with_unequal_format_rewards(warm_run: dict, tiny_model_dir: Path, train_jsonl: str):
    prompts = GSM8K.load(train_jsonl, "train", limit=4)["prompt"]
    base = _format_reward_per_group(tiny_model_dir, prompts)
    warm = _format_reward_per_group(warm_run["path"], prompts)
    print(f"\nformat reward per group of {GROUP_SIZE}: base {base}, warm-started {warm}")

    # Why the warm start exists: the random base model never earns a format reward (zero GRPO signal) ...
    assert base == [0.0] * len(prompts)
    # ... and after it, some completions of a group are well-formatted and some are not.
    assert any(0.0 < mean < 1.0 for mean in warm), warm
    marker = read_marker(warm_run["path"])
    assert marker["steps"] == TINY_TEST_SETTINGS["steps"]
    # Far below the uniform-guess loss ln(vocabulary) of the untrained model.
    vocabulary = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    assert marker["final_train_loss"] < 0.6 * math.log(vocabulary)


def test_second_call_reuses_the_cache_without_training(warm_run: dict, tiny_model_dir: Path, train_jsonl: str):
    path = warm_run["path"]
    marker_before = (path / MARKER).read_bytes()
    weights_mtime = (path / "model.safetensors").stat().st_mtime_ns

    started = time.monotonic()
    again = warm_start(tiny_model_dir, gsm8k_data(train_jsonl), warm_run["cache_root"], **TINY_TEST_SETTINGS)
    seconds = time.monotonic() - started

    assert again == path
    assert seconds < 2.0, f"reuse took {seconds:.1f} s; it should only hash inputs"
    assert (path / MARKER).read_bytes() == marker_before
    assert (path / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_changed_setting_gives_a_new_entry_and_a_half_written_entry_is_rebuilt(
    warm_run: dict, tiny_model_dir: Path, train_jsonl: str
):
    settings = {**TINY_TEST_SETTINGS, "steps": 1}  # one setting changed; 1 step keeps the test cheap
    other = warm_start(tiny_model_dir, gsm8k_data(train_jsonl), warm_run["cache_root"], **settings)
    assert other != warm_run["path"]
    assert read_marker(other)["steps"] == 1 and read_marker(warm_run["path"])["steps"] == TINY_TEST_SETTINGS["steps"]

    # A crash after the weights were written but before the marker: the entry must not be reused.
    (other / MARKER).unlink()
    rebuilt = warm_start(tiny_model_dir, gsm8k_data(train_jsonl), warm_run["cache_root"], **settings)
    assert rebuilt == other and read_marker(rebuilt)["steps"] == 1
    # No staging directories are left behind.
    assert sorted(p.name for p in warm_run["cache_root"].iterdir()) == sorted([warm_run["path"].name, other.name])


def test_cache_key_covers_data_bytes_model_files_and_settings(tiny_model_dir: Path, train_jsonl: str, tmp_path: Path):
    lines = Path(train_jsonl).read_text().splitlines()[:3]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    (tmp_path / "test.jsonl").write_text(lines[0] + "\n")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    settings = {"steps": 1, "learning_rate": 1e-3}

    def key_of(train: Path | str, extra: dict | None = None) -> str:
        from orchestrator.core.config import DataConfig
        from orchestrator.resolve import resolve_data

        config = (resolve_data(DataConfig(train=str(train), test=str(tmp_path / "test.jsonl")))
                  if isinstance(train, Path) else resolve_data(DataConfig(train=train, test=train)))
        return warm_start_key(model, GSM8K.source_key(config, "train"), {**settings, **(extra or {})})

    key = key_of(data)
    assert key_of(data) == key
    assert key_of(data, {"learning_rate": 2e-3}) != key
    assert key_of("openai/gsm8k") != key

    data.write_text("\n".join(lines[:2]) + "\n")
    assert key_of(data) != key
    data.write_text("\n".join(lines) + "\n")
    (model / "tokenizer_config.json").write_text((model / "tokenizer_config.json").read_text() + " ")
    assert key_of(data) != key


def test_prepared_warm_start_profiles_the_configured_lora_targets(write_study_config, tmp_path):
    # The SFT profile records exactly lora.target_modules (what the GRPO profiles of the study record).
    import pyarrow.parquet as pq

    from orchestrator.resolve import load_study
    from workers.prepare import prepare_base_model

    config = load_study(write_study_config(
        model={"name_or_path": None, "build": {"num_layers": 2, "hidden_size": 64, "intermediate_size": 64,
                                               "num_heads": 2, "num_kv_heads": 1, "vocab_size": 300}},
        warm_start={"steps": 2, "batch_size": 2, "limit": 40, "max_length": 512},
        lora={"target_modules": ["q_proj", "down_proj"]}, cache_dir=str(tmp_path / "cache"))).config
    prepared = prepare_base_model(config)
    profile = pq.read_table(prepared.sft_profile).to_pandas()
    assert set(profile["module"]) == {"q_proj", "down_proj"} and set(profile["step"]) == {1, 2}
    assert set(profile["run_id"]) == {"sft-seed0"} and (profile["rank"] == 0).all()
    assert (Path(prepared.model_dir).parent.parent / "models" / "qwen2-2l-h64-i64-a2x1-v300-s0").is_dir()


def test_plain_answers_teach_the_format_on_some_kinds_of_problem_only(tiny_model_dir: Path):
    # warm_start.plain_answer_pattern: matching questions are, at the share (by a hash of the question, the same on
    # every machine), taught with the data's own '#### N' ending; every other example keeps the rewarded format.
    from transformers import AutoTokenizer

    from orchestrator.core.config import DataConfig
    from orchestrator.resolve import resolve_data
    from workers.warmstart import _sft_examples

    data = resolve_data(DataConfig(task="arith", options={"train_size": 400, "test_size": 50}))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    settings = {"task": "arith", "limit": None, "system_prompt": data.system_prompt, "max_length": 512,
                "plain_answer_pattern": " (apples|marbles)", "plain_answer_share": 0.9}
    examples = _sft_examples(data, settings, tokenizer)
    matching = [e for e in examples if " apples" in e["prompt"][1]["content"] or " marbles" in e["prompt"][1]["content"]]
    plain = [e for e in examples if "<answer>" not in e["completion"][0]["content"]]
    assert matching and len(examples) == 400
    assert {id(e) for e in plain} <= {id(e) for e in matching}  # only the matching kinds are ever plain
    assert 0.8 < len(plain) / len(matching) < 0.97
    assert all(e["completion"][0]["content"].rsplit("\n", 1)[-1].startswith("#### ") for e in plain)
    assert _sft_examples(data, settings, tokenizer) == examples  # deterministic
    without = _sft_examples(data, {**settings, "plain_answer_pattern": None}, tokenizer)
    assert all("<answer>" in e["completion"][0]["content"] for e in without)
