"""The run's GRPOConfig: every GRPO setting the paper fixes, passed to TRL explicitly because TRL's defaults differ.

    args, memory_plan = grpo_args(config, spec, checkpoint_dir, on_gpu=torch.cuda.is_available())

``memory_plan`` is vLLM's share of the card and how it was derived (recorded in run.json), or None without vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.core.config import StudyConfig
from orchestrator.core.plan import RunSpec
from workers.tracking import tracker_args


def grpo_args(config: StudyConfig, spec: RunSpec, checkpoint_dir: Path, on_gpu: bool) -> tuple[Any, dict | None]:
    from trl import GRPOConfig

    g = config.grpo
    kwargs = dict(
        output_dir=str(checkpoint_dir),
        seed=spec.seed,
        data_seed=spec.seed,
        # The paper's settings, passed explicitly because TRL's defaults differ (dapo, beta 0, lr 1e-6).
        loss_type=g.loss_type,
        beta=g.beta,
        learning_rate=g.learning_rate,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        max_steps=g.max_steps,
        temperature=g.temperature,
        max_grad_norm=g.max_grad_norm,
        # Settings TRL would otherwise apply silently (orchestrator/core/config.py says what each does).
        disable_dropout=g.disable_dropout,
        top_p=g.top_p,
        top_k=g.top_k,
        mask_truncated_completions=g.mask_truncated_completions,
        lr_scheduler_type=g.lr_scheduler_type,
        warmup_steps=g.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of max_steps
        scale_rewards="group",  # Eq. 1: advantages normalised by the group's std
        # One generation batch per optimizer step, so a profiled step is one GRPO update.
        per_device_train_batch_size=g.prompts_per_step * g.num_generations,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=g.checkpoint_every,
        save_total_limit=2,
        disable_tqdm=True,
        use_cpu=not on_gpu,
        # bf16 autocast and checkpointing pay off on GPU; on CPU they made a step 1.8x slower (measured).
        bf16=on_gpu and config.model.dtype == "bfloat16",
        gradient_checkpointing=on_gpu,
        dataloader_num_workers=0,
    )
    # The experiment tracker (none by default): report_to, the run named by its id (workers/tracking.py).
    kwargs.update(tracker_args(config.tracking, spec.run_id, config.name))
    memory_plan = None
    if g.use_vllm:
        from orchestrator.core.gpu_packing import vllm_share_record
        from workers.generation import vllm_grpo_args

        memory_plan = vllm_share_record(config)  # several runs may share one GPU
        share = memory_plan["vllm_gpu_memory_utilization"]
        kwargs.update(vllm_grpo_args(g, spec.seed, on_cpu=not on_gpu, memory_share=share))
    return GRPOConfig(**kwargs), memory_plan
