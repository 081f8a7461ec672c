"""The offline tiny model: tokenizer behaviour, chat format, Qwen2 layout, determinism, caching, loading."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from orchestrator.core.errors import StudyError
from workers import local_model
from workers.local_model import build_local_model, train_tokenizer
from workers.model import load_model_and_tokenizer

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SMALL = dict(num_layers=2, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1, vocab_size=400)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_tokenizer(str(tiny_model_dir))


def test_format_and_special_tokens_are_single_tokens_and_survive_decoding(tiny):
    _, tokenizer = tiny
    for tag in ("<think>", "</think>", "<answer>", "</answer>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    text = "<think>\n3 + 4 = 7\n</think>\n<answer>\n7\n</answer>"
    ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    # Reward functions parse decoded completions: the format tags must stay, the eos must go.
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_unseen_gsm8k_text_round_trips_and_numbers_split_into_digits(tiny, gsm8k_dir):
    _, tokenizer = tiny
    with (gsm8k_dir / "test.jsonl").open() as lines:
        records = [json.loads(next(lines)) for _ in range(20)]
    tokens = text_bytes = 0
    for record in records:
        text = f"{record['question']}\n{record['answer']}"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        tokens, text_bytes = tokens + len(ids), text_bytes + len(text.encode())
    # The merges really compress GSM8K text (bytes alone would give a ratio of 1; digits stay single tokens).
    assert tokens < 0.6 * text_bytes
    assert tokenizer.convert_ids_to_tokens(tokenizer("1234", add_special_tokens=False)["input_ids"]) == list("1234")


def test_chat_template_is_qwen_style_and_eos_ends_the_assistant_turn(tiny):
    _, tokenizer = tiny
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert not without.endswith("assistant\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id != tokenizer.pad_token_id


def test_model_is_a_tied_qwen2_with_all_projections_and_generates(tiny):
    model, tokenizer = tiny
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    names = {name for name, _ in model.named_modules()}
    for layer in range(4):
        for projection in PROJECTIONS:
            part = "self_attn" if projection in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            assert f"model.layers.{layer}.{part}.{projection}" in names
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_same_arguments_give_identical_files_and_the_seed_changes_only_weights(tmp_path, gsm8k_texts):
    texts = gsm8k_texts[:300]
    first = build_local_model(tmp_path / "a", **SMALL, train_texts=texts, seed=1)
    second = build_local_model(tmp_path / "b", **SMALL, train_texts=texts, seed=1)
    other_seed = build_local_model(tmp_path / "c", **SMALL, train_texts=texts, seed=2)
    files = sorted(path.name for path in first.iterdir())
    assert {"model.safetensors", "tokenizer.json", "config.json", "rankstudy_build.json"} <= set(files)
    assert files == sorted(path.name for path in second.iterdir())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "tokenizer.json").read_bytes() == (other_seed / "tokenizer.json").read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other_seed / "model.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*building*")), "staging directories must be cleaned up"


def test_a_complete_build_is_reused_and_changed_arguments_rebuild(tmp_path, gsm8k_texts, monkeypatch):
    texts = gsm8k_texts[:300]
    out = build_local_model(tmp_path / "m", **SMALL, train_texts=texts, seed=0)
    weights = (out / "model.safetensors").read_bytes()

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached build should have been reused")

    monkeypatch.setattr(local_model, "train_tokenizer", must_not_train)
    assert build_local_model(tmp_path / "m", **SMALL, train_texts=texts, seed=0) == out
    monkeypatch.undo()

    build_local_model(tmp_path / "m", **SMALL, train_texts=texts, seed=3)
    assert (out / "model.safetensors").read_bytes() != weights
    assert json.loads((out / "rankstudy_build.json").read_text())["seed"] == 3
    build_local_model(tmp_path / "m", **SMALL, train_texts=texts[:200], seed=3)  # a different corpus rebuilds too
    assert json.loads((out / "rankstudy_build.json").read_text())["train_texts_count"] == 200


def test_refuses_to_overwrite_a_directory_that_is_not_a_build(tmp_path, gsm8k_texts):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="not a rankstudy model build"):
        build_local_model(tmp_path, **SMALL, train_texts=gsm8k_texts[:50], seed=0)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_train_tokenizer_is_deterministic_and_respects_vocab_size(gsm8k_texts):
    first = train_tokenizer(gsm8k_texts[:300], 320)
    second = train_tokenizer(gsm8k_texts[:300], 320)
    assert first.get_vocab() == second.get_vocab()
    assert len(first) == 320 + 4  # requested size + the four format tags
    with pytest.raises(StudyError, match="vocab_size"):
        train_tokenizer(gsm8k_texts[:10], 100)


def test_load_errors_and_pad_fallback(tmp_path, tiny_model_dir):
    with pytest.raises(StudyError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "missing-model"))
    # HF_HUB_OFFLINE=1 (conftest): a hub id that is not cached is a one-line StudyError, not a traceback.
    with pytest.raises(StudyError, match="cannot load 'rankstudy-tests/no-such-model'"):
        load_model_and_tokenizer("rankstudy-tests/no-such-model")
    with pytest.raises(StudyError, match="dtype"):
        load_model_and_tokenizer(str(tiny_model_dir), dtype="float64")
    # A tokenizer without a pad token (as many base models ship) gets pad = eos.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    local = tmp_path / "no-pad"
    tokenizer.save_pretrained(local)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (local / name).write_bytes((tiny_model_dir / name).read_bytes())
    model, loaded = load_model_and_tokenizer(str(local), dtype="bfloat16")
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert model.dtype == torch.bfloat16
