"""One GRPO run of the study, executable without Ray: setup -> train -> evaluate -> write -> cleanup.

    from workers.run import execute_run
    record = execute_run(config, spec, study_dir)      # what the Ray actor calls, and what tests call

:class:`GRPORun` follows one small protocol (torchtune-style): ``setup()`` loads model, tokenizer and data,
allocates ranks (for proportional/reduced from the layer importance of the profile the spec depends on),
builds TRL's GRPOTrainer with PEFT LoRA at those ranks and audits them; ``train()`` trains, resuming from
the latest complete checkpoint; ``evaluate()`` scores greedy completions on the test split; ``write()``
publishes the three Parquet tables and run.json atomically; ``cleanup()`` frees the model and checkpoints.

The run's seed controls data order and LoRA init (TRL calls ``set_seed(args.seed)`` before
``get_peft_model``), rollout sampling (torch RNG for HF generate; vLLM's sampling seed is set explicitly in
workers/generation.py because TRL seeds it from the process index) and the random allocation.
Every GRPO setting the paper fixes is passed to GRPOConfig explicitly, because TRL's defaults differ.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable

import torch
from transformers.trainer_callback import PrinterCallback

from orchestrator.allocation import allocate, importance_from_profile
from orchestrator.config import StudyConfig
from orchestrator.errors import StudyError
from orchestrator.plan import RunSpec
from orchestrator.results import COMPLETED, StudyPaths, atomic_write_json, atomic_write_table
from workers.data import load_gsm8k, render_prompt
from workers.evaluate import evaluate, generate_greedy_hf
from workers.lora import audit_lora, build_lora_config
from workers.model import discover_layers, load_model_and_tokenizer
from workers.profiler import GradientProfiler, ProfilerCallback, RunLabels
from workers.rewards import reward_functions
from workers.trainer import CheckpointTables, ProfiledGRPOTrainer, StepRecorder, checkpoint_step, latest_checkpoint

Report = Callable[[dict], None]


class GRPORun:
    def __init__(self, config: StudyConfig, spec: RunSpec, study_dir: str | os.PathLike, report: Report | None = None):
        self.config, self.spec = config, spec
        self.paths = StudyPaths(study_dir)
        self.labels = RunLabels(spec.run_id, spec.strategy, spec.seed)
        self.report = report or (lambda progress: None)
        self.record: dict = {}
        self.timings: dict[str, float] = {}
        self.trainer: ProfiledGRPOTrainer | None = None

    # -- protocol -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        start = time.perf_counter()
        cfg, spec = self.config, self.spec
        self.record = {
            "run_id": spec.run_id, "strategy": spec.strategy, "seed": spec.seed,
            "spec": {"depends_on": spec.depends_on, "profile_path": spec.profile_path},
            "status": "running", "host": socket.gethostname(), "pid": os.getpid(), "error": None,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        previous = self.paths.read_run(spec.run_id) or {}
        self.record["attempt"] = int(previous.get("attempt", 0)) + 1
        self._write_record()

        model, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, cfg.model.dtype, cfg.model.revision)
        self.tokenizer = tokenizer
        layout = discover_layers(model, cfg.lora.target_modules)
        self.layout = layout
        ranks, importance = self._allocate(layout.num_layers)
        self.ranks = ranks
        self.record.update(allocation=ranks, importance=importance, num_layers=layout.num_layers)

        data = cfg.data
        train = load_gsm8k(data.train, "train", data.hub_config, data.train_limit, data.system_prompt)
        self.test = load_gsm8k(data.test, "test", data.hub_config, data.eval_limit, data.system_prompt)

        lora_config = build_lora_config(
            layout, ranks, alpha_per_rank=cfg.lora.alpha / cfg.lora.rank, dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
        )
        self.recorder = StepRecorder(self.labels, report=self.report)
        rewards = [self.recorder.watch_rollouts(fn) for fn in reward_functions(cfg.rewards)]
        engine = contextlib.nullcontext()
        if cfg.grpo.use_vllm:
            from workers.generation import colocated_vllm_engine

            # TRL builds the colocated engine inside GRPOTrainer.__init__; this block gives it the run's seed.
            engine = colocated_vllm_engine(spec.seed, on_cpu=not torch.cuda.is_available(),
                                           max_num_seqs=cfg.grpo.eval_batch_size)
        with engine:
            trainer = ProfiledGRPOTrainer(
                model=model,
                reward_funcs=rewards,
                args=self._grpo_args(),
                train_dataset=train,
                processing_class=tokenizer,
                peft_config=lora_config,
            )
        audit = audit_lora(trainer.model, layout, ranks, target_modules=cfg.lora.target_modules,
                           alpha_per_rank=cfg.lora.alpha / cfg.lora.rank)
        self.record.update(trainable_params=audit.trainable_params, lora=audit.to_dict(),
                           lora_params=_params_by_module(audit.module_params, layout))
        self.profiler = GradientProfiler.for_lora(trainer.model, layout, ranks, self.labels)
        trainer.gradient_profiler = self.profiler
        self.recorder.profiler = self.profiler
        self.checkpoint_tables = CheckpointTables(self.profiler, self.recorder)
        for callback in (self.recorder, ProfilerCallback(self.profiler), self.checkpoint_tables):
            trainer.add_callback(callback)
        # With tqdm off, transformers prints every log dict; the driver shows progress from our recorder instead.
        trainer.remove_callback(PrinterCallback)
        if cfg.grpo.use_vllm:
            from workers.generation import prepare_vllm_trainer

            prepare_vllm_trainer(trainer, spec.seed)
        self.trainer = trainer
        self.timings["setup_s"] = time.perf_counter() - start

    def train(self) -> None:
        start = time.perf_counter()
        ckpt_root = self.paths.checkpoints(self.spec.run_id)
        resume = latest_checkpoint(ckpt_root)
        if resume is not None:
            # Checkpoints newer than the last complete one were cut off mid-save: drop them.
            resume_step = checkpoint_step(resume)
            for stale in ckpt_root.iterdir():
                if (checkpoint_step(stale) or 0) > resume_step:
                    shutil.rmtree(stale, ignore_errors=True)
            self.checkpoint_tables.restore(resume)
            self.record["resumed_from_step"] = resume_step
            self._write_record()
        self.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        self.timings["train_s"] = time.perf_counter() - start

    def evaluate(self):
        start = time.perf_counter()
        cfg, test = self.config, self.test
        prompts = [render_prompt(self.tokenizer, messages) for messages in test["prompt"]]
        if cfg.grpo.use_vllm:
            from workers.generation import generate_greedy_vllm

            def generate(batch):
                return generate_greedy_vllm(self.trainer, batch, cfg.grpo.max_completion_length)
        else:
            def generate(batch):
                return generate_greedy_hf(self.trainer.model, self.tokenizer, batch, cfg.grpo.max_completion_length,
                                          batch_size=len(batch))

        def progress(done, total):
            self.report({"phase": "eval", "eval_done": done, "eval_total": total})

        table = evaluate(generate, prompts, test["item"], test["answer"], self.labels,
                         batch_size=cfg.grpo.eval_batch_size, on_progress=progress)
        self.timings["eval_s"] = time.perf_counter() - start
        return table

    def write(self, eval_table) -> dict:
        run_id = self.spec.run_id
        adapter_dir = self.paths.run_dir(run_id) / "adapter"
        self.trainer.model.save_pretrained(str(adapter_dir))
        atomic_write_table(self.paths.table("profiles", run_id), self.profiler.table())
        atomic_write_table(self.paths.table("metrics", run_id), self.recorder.table())
        atomic_write_table(self.paths.table("eval", run_id), eval_table)
        correct = sum(eval_table.column("correct").to_pylist())
        self.timings["total_s"] = sum(self.timings.values())
        self.record.update(
            status=COMPLETED, steps=len(self.profiler.steps), timings=self.timings,
            eval={"n": eval_table.num_rows, "correct": correct, "accuracy": correct / max(eval_table.num_rows, 1)},
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        self._write_record()  # last: the run is complete only once its tables are all in place
        return self.record

    def cleanup(self) -> None:
        shutil.rmtree(self.paths.checkpoints(self.spec.run_id), ignore_errors=True)
        self.trainer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- helpers --------------------------------------------------------------------------------------------
    def _allocate(self, num_layers: int) -> tuple[list[int], list[float] | None]:
        cfg, spec = self.config, self.spec
        importance = None
        if spec.depends_on is not None:
            path = self.paths.table("profiles", spec.depends_on)
            if not self.paths.is_complete(spec.depends_on):
                raise StudyError(f"{spec.run_id}: needs the profile of {spec.depends_on}, which has not completed")
            importance = importance_from_profile(str(path), spec.depends_on)
            self.record["importance_source"] = str(path)
        elif spec.profile_path is not None:
            importance = importance_from_profile(spec.profile_path)
            self.record["importance_source"] = spec.profile_path
        if importance is not None and len(importance) != num_layers:
            raise StudyError(f"{spec.run_id}: profile has {len(importance)} layers but the model has {num_layers}")
        a = cfg.allocation
        ranks = allocate(
            spec.strategy, importance=importance, num_layers=num_layers, rank=cfg.lora.rank, r_min=a.r_min,
            r_max=a.r_max, multiple=a.multiple, reduced_fraction=a.reduced_fraction, random_range=a.random_range,
            seed=spec.seed,
        )
        return ranks, importance

    def _grpo_args(self):
        from trl import GRPOConfig

        g, spec = self.config.grpo, self.spec
        on_gpu = torch.cuda.is_available()
        kwargs = dict(
            output_dir=str(self.paths.checkpoints(spec.run_id)),
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
            scale_rewards="group",  # Eq. 1: advantages normalised by the group's std
            # One generation batch per optimizer step, so a profiled step is one GRPO update.
            per_device_train_batch_size=g.prompts_per_step * g.num_generations,
            gradient_accumulation_steps=1,
            steps_per_generation=1,
            logging_steps=1,
            save_strategy="steps",
            save_steps=g.checkpoint_every,
            save_total_limit=2,
            report_to=[],
            disable_tqdm=True,
            use_cpu=not on_gpu,
            # bf16 autocast and checkpointing pay off on GPU; on CPU they made a step 1.8x slower (measured).
            bf16=on_gpu and self.config.model.dtype == "bfloat16",
            gradient_checkpointing=on_gpu,
            dataloader_num_workers=0,
        )
        if g.use_vllm:
            from workers.generation import vllm_grpo_args

            kwargs.update(vllm_grpo_args(g, spec.seed, on_cpu=not on_gpu))
        return GRPOConfig(**kwargs)

    def _write_record(self) -> None:
        atomic_write_json(self.paths.run_json(self.spec.run_id), self.record)


def _params_by_module(module_params: dict[tuple[int, str], int], layout) -> dict[str, list[int]]:
    return {m: [module_params[(layer, m)] for layer in range(layout.num_layers) if (layer, m) in module_params]
            for m in layout.modules}


def execute_run(config: StudyConfig, spec: RunSpec, study_dir: str | os.PathLike, report: Report | None = None) -> dict:
    """Run one spec to completion (or return its record if it already completed); failures are recorded."""
    paths = StudyPaths(study_dir)
    if paths.is_complete(spec.run_id):
        return paths.read_run(spec.run_id)
    run = GRPORun(config, spec, study_dir, report)
    try:
        run.setup()
        run.train()
        table = run.evaluate()
        record = run.write(table)
        run.cleanup()
        return record
    except BaseException as err:
        if run.record:
            run.record.update(status="failed", error=_one_line(err), traceback=traceback.format_exc(limit=20))
            run._write_record()
        raise


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
