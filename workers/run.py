"""One GRPO run of the study, executable without Ray: setup -> train -> evaluate -> write -> cleanup.

    from workers.run import execute_run
    record = execute_run(config, spec, study_dir)      # what the Ray actor calls, and what tests call

:class:`GRPORun` follows one small protocol (torchtune-style). ``setup()`` is a few steps: ``_setup_model``
loads model and tokenizer and finds the decoder layers; ``_setup_allocation`` asks the run's strategy
(:mod:`orchestrator.core.strategies`) for its ranks, with the layer importance of the profile the spec depends
on when the strategy needs one; ``_setup_data`` loads the task's train and test splits (:mod:`workers.tasks`);
``_setup_trainer`` builds TRL's GRPOTrainer with the PEFT config of the strategy's adapter
(:mod:`workers.adapters`, looked up once: ``lora`` or ``adalora``) at those ranks, and ``_setup_profiling`` has
the adapter audit the model and attaches the gradient profiler, the step recorder, the checkpointed tables and
the adapter's own training hooks. ``train()`` trains, resuming from the latest complete checkpoint;
``evaluate()`` scores greedy completions on the test split; ``write()`` publishes the run's Parquet tables (all
three; the eval table alone for a strategy that does not train, the base model) and run.json atomically;
``cleanup()`` frees the model and checkpoints.

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

from orchestrator.core import strategies
from orchestrator.core.config import StudyConfig
from orchestrator.core.contract import COMPLETED, FAILED, RunRecord, StudyPaths, atomic_write_table, run_tables
from orchestrator.core.errors import StudyError
from orchestrator.core.importance import importance_from_profile
from orchestrator.core.plan import RunSpec
from workers import compat
from workers.adapters import get_adapter
from workers.decompose import Decomposer
from workers.evaluate import evaluate, generate_greedy_hf, prompt_token_ids
from workers.geometry import GeometryRecorder
from workers.machine import machine_cpu
from workers.model import LayerLayout, discover_layers, load_model_and_tokenizer
from workers.profiler import GradientProfiler, ProfilerCallback, RunLabels, check_unsharded
from workers.tasks import get_task
from workers.trainer import CheckpointTables, ProfiledGRPOTrainer, StepRecorder, checkpoint_step, latest_checkpoint
from workers.weights import frozen_digest

Report = Callable[[dict], None]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class GRPORun:
    def __init__(self, config: StudyConfig, spec: RunSpec, study_dir: str | os.PathLike, report: Report | None = None):
        self.config, self.spec = config, spec
        self.paths = StudyPaths(study_dir)
        self.labels = RunLabels(spec.run_id, spec.strategy, spec.seed)
        self.report = report or (lambda progress: None)
        self.strategy = strategies.get_strategy(spec.strategy)
        self.adapter = get_adapter(self.strategy.adapter)
        self.task = get_task(config.data.task)
        self.record = RunRecord(spec.run_id, spec.strategy, spec.seed, axes=spec.cell,
                                spec={"depends_on": spec.depends_on, "profile_path": spec.profile_path})
        self.timings: dict[str, float] = {}
        self.model = self.tokenizer = None
        self.layout: LayerLayout | None = None
        self.ranks: list[int] = []
        self.train_set = self.test_set = None
        self.recorder: StepRecorder | None = None
        self.profiler: GradientProfiler | None = None
        self.checkpoint_tables: CheckpointTables | None = None
        self.decomposer: Decomposer | None = None
        self.geometry: GeometryRecorder | None = None
        self.trainer: ProfiledGRPOTrainer | None = None

    # -- protocol -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        start = time.perf_counter()
        compat.check_library_versions(use_vllm=self.config.grpo.use_vllm)
        check_unsharded(os.environ)
        self._start_record()
        self._setup_model()
        self._setup_allocation()
        self._setup_data()
        self._setup_trainer()
        if self.strategy.trains:
            self._setup_profiling()
        else:
            self.record.allocation, self.record.trainable_params = None, 0  # evaluated as it is (see base.py)
            self.record.frozen_base = {"before": frozen_digest(self.trainer.model)}
        self.record.tables = run_tables(self.strategy.trains, geometry=self.geometry is not None)
        self.timings["setup_s"] = time.perf_counter() - start

    def train(self) -> None:
        start = time.perf_counter()
        ckpt_root = self.paths.checkpoints(self.spec.run_id)
        resume = latest_checkpoint(ckpt_root)
        reason = self.adapter.restart_reason
        if resume is not None and reason is not None:
            shutil.rmtree(ckpt_root, ignore_errors=True)
            self.record.warnings.append(f"{self.strategy.name}: restarted from step 0, not resumed from "
                                        f"{resume.name}: {reason}")
            resume = None
        if resume is not None:
            # Checkpoints newer than the last complete one were cut off mid-save: drop them.
            resume_step = checkpoint_step(resume)
            for stale in ckpt_root.iterdir():
                if (checkpoint_step(stale) or 0) > resume_step:
                    shutil.rmtree(stale, ignore_errors=True)
            self.checkpoint_tables.restore(resume)
            self.record.resumed_from_step = resume_step
            self.paths.write_record(self.record)
        self.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        self.timings["train_s"] = time.perf_counter() - start

    def evaluate(self):
        start = time.perf_counter()
        cfg, test = self.config, self.test_set
        prompts = prompt_token_ids(self.tokenizer, test["prompt"])
        if cfg.grpo.use_vllm:
            from workers.generation import generate_greedy_vllm

            if not self.strategy.trains:  # the engine holds the loaded base weights: evaluate before any sync
                compat.set_engine_weights_step(self.trainer, self.trainer.state.global_step)

            def generate(batch):
                return generate_greedy_vllm(self.trainer, batch, cfg.grpo.max_completion_length)
        else:
            def generate(batch):
                return generate_greedy_hf(self.trainer.model, self.tokenizer, batch, cfg.grpo.max_completion_length,
                                          batch_size=len(batch))

        def progress(done, total):
            self.report({"phase": "eval", "eval_done": done, "eval_total": total})

        table = evaluate(generate, prompts, test["item"], test["answer"], self.labels,
                         batch_size=cfg.grpo.eval_batch_size, task=self.task, on_progress=progress)
        self.timings["eval_s"] = time.perf_counter() - start
        return table

    def write(self, eval_table) -> RunRecord:
        run_id = self.spec.run_id
        self._check_frozen_base()
        if self.strategy.trains:
            self.trainer.model.save_pretrained(str(self.paths.adapter(run_id)))
            atomic_write_table(self.paths.table("profiles", run_id), self.profiler.table())
            atomic_write_table(self.paths.table("metrics", run_id), self.recorder.table())
        if self.adapter.ranks_change and self.profiler is not None:
            self._record_final_ranks()
        if self.geometry is not None:
            self.geometry.capture(self.trainer.state.global_step, self.profiler.current_ranks())
            atomic_write_table(self.paths.table("geometry", run_id), self.geometry.table())
        atomic_write_table(self.paths.table("eval", run_id), eval_table)
        # The optional measurements' own cost (inside train_s): make bench reports it as a ratio.
        if self.decomposer is not None:
            self.timings["decompose_s"] = sum(self.decomposer.seconds.values())
            if self.decomposer.inexact_steps:
                self.record.warnings.append(
                    f"profile.decompose_every: the per-reward parts of steps {self.decomposer.inexact_steps[:5]} "
                    f"({len(self.decomposer.inexact_steps)} in all) did not sum to the gradient (the PPO clip was "
                    "active, e.g. dropout in the old-logprob pass); their component rows were left out")
        if self.geometry is not None:
            self.timings["geometry_s"] = self.geometry.seconds
        correct = sum(1 for verdict in eval_table.column("correct").to_pylist() if verdict)  # None: no such reward
        self.timings["total_s"] = sum(v for k, v in self.timings.items() if k.endswith("_s") and k not in
                                      ("decompose_s", "geometry_s"))
        record = self.record
        record.status, record.timings = COMPLETED, self.timings
        record.steps = len(self.profiler.steps) if self.profiler is not None else 0
        if self.profiler is not None and self.profiler.missing_rows:
            rows = len(self.profiler.steps) * len(self.profiler.keys)
            record.warnings.append(f"{self.profiler.missing_rows} of {rows} profile rows had a parameter without a "
                                   "gradient; recorded as NaN (nonfinite), not 0")
        record.eval = {"n": eval_table.num_rows, "correct": correct, "accuracy": correct / max(eval_table.num_rows, 1)}
        record.finished_at = _now()
        self.paths.write_record(record)  # last: the run is complete only once its tables are all in place
        return record

    def cleanup(self) -> None:
        shutil.rmtree(self.paths.checkpoints(self.spec.run_id), ignore_errors=True)
        self.trainer = self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def fail(self, err: BaseException) -> None:
        """Record the failure in run.json (results already written stay as they are)."""
        if self.record.started_at is None:
            return  # failed before the run started (e.g. bad library versions): nothing of this run exists yet
        self.record.status, self.record.error = FAILED, _one_line(err)
        self.record.traceback = traceback.format_exc(limit=20)
        self.paths.write_record(self.record)

    # -- setup steps ----------------------------------------------------------------------------------------
    def _start_record(self) -> None:
        previous = self.paths.read_record(self.spec.run_id)
        record = self.record
        record.host, record.pid, record.started_at = socket.gethostname(), os.getpid(), _now()
        record.cpu = machine_cpu()
        record.attempt = (previous.attempt if previous is not None else 0) + 1
        self.paths.write_record(record)

    def _setup_model(self) -> None:
        m = self.config.model
        self.model, self.tokenizer = load_model_and_tokenizer(m.name_or_path, m.dtype, m.revision)
        self.layout = discover_layers(self.model, self.config.lora.target_modules)
        self.record.num_layers = self.layout.num_layers

    def _setup_allocation(self) -> None:
        spec, record, num_layers = self.spec, self.record, self.layout.num_layers
        importance = None
        if spec.depends_on is not None:
            if not self.paths.is_complete(spec.depends_on):
                raise StudyError(f"{spec.run_id}: needs the profile of {spec.depends_on}, which has not completed")
            path = str(self.paths.table("profiles", spec.depends_on))
            importance = importance_from_profile(path, spec.depends_on)
        elif spec.profile_path is not None:
            importance = importance_from_profile(spec.profile_path)
        if importance is not None:
            if len(importance.values) != num_layers:
                raise StudyError(f"{spec.run_id}: profile has {len(importance.values)} layers but the model has "
                                 f"{num_layers}")
            record.importance, record.importance_source = importance.values, importance.source
            record.importance_nonfinite = importance.nonfinite
            if importance.note():
                print(f"[{spec.run_id}] warning: {importance.note()}", flush=True)
        request = strategies.AllocationRequest.from_config(
            self.config, num_layers, spec.seed, importance.values if importance is not None else None)
        self.ranks = self.strategy.for_config(self.config, request)
        record.allocation = self.ranks

    def _setup_data(self) -> None:
        data, task = self.config.data, self.task
        self.train_set = task.dataset(data, "train", limit=data.train_limit)
        self.test_set = task.dataset(data, "test", limit=data.eval_limit)

    def _setup_trainer(self) -> None:
        cfg, spec = self.config, self.spec
        lora_config = self.adapter.peft_config(self.layout, self.ranks, cfg)
        rewards = dict(zip(cfg.rewards, self.task.reward_functions(cfg.rewards), strict=True))
        self.recorder = StepRecorder(self.labels, rewards, report=self.report)
        reward_funcs = [self.recorder.watch_rollouts(fn) for fn in rewards.values()]
        if cfg.profile.decompose_every and self.strategy.trains:
            self.decomposer = Decomposer(cfg.profile.decompose_every, list(rewards), None, cfg.grpo.num_generations)
            reward_funcs = [self.decomposer.tap(name, fn) for name, fn in zip(rewards, reward_funcs, strict=True)]
        engine = lock = contextlib.nullcontext()
        starting: dict = {}
        if cfg.grpo.use_vllm:
            from workers.engine_lock import engine_start_lock
            from workers.generation import colocated_vllm_engine

            # TRL builds the colocated engine inside GRPOTrainer.__init__; this block gives it the run's seed.
            engine = colocated_vllm_engine(spec.seed, on_cpu=not torch.cuda.is_available(),
                                           max_num_seqs=cfg.grpo.eval_batch_size)
            # One engine start at a time on this GPU (several runs may share it): workers/engine_lock.py.
            lock = engine_start_lock(starting)
        with lock, engine:
            self.trainer = ProfiledGRPOTrainer(
                model=self.model,
                reward_funcs=reward_funcs,
                args=self._grpo_args(),
                train_dataset=self.train_set,
                processing_class=self.tokenizer,
                peft_config=lora_config,
            )
        check_unsharded(os.environ, self.trainer)
        if starting and self.record.memory_plan is not None:
            self.record.memory_plan["engine_start"] = starting
        if cfg.grpo.use_vllm:
            from workers.generation import prepare_vllm_trainer

            prepare_vllm_trainer(self.trainer, spec.seed)

    def _setup_profiling(self) -> None:
        cfg, trainer, layout = self.config, self.trainer, self.layout
        audit = self.adapter.audit(trainer.model, layout, self.ranks, cfg)
        self.record.trainable_params, self.record.lora = audit.trainable_params, audit.to_dict()
        self.record.lora_params = {m: [audit.module_params[(layer, m)] for layer in range(layout.num_layers)
                                       if (layer, m) in audit.module_params] for m in layout.modules}
        self.record.frozen_base = {"before": frozen_digest(trainer.model)}
        self.profiler = GradientProfiler.for_lora(trainer.model, layout, self.ranks, self.labels)
        trainer.gradient_profiler = self.profiler
        self.recorder.profiler = self.profiler
        if self.decomposer is not None:
            self.decomposer.profiler = self.profiler
            self.profiler.checks.append(self.decomposer.verify)
            trainer.decomposer = self.decomposer
        if cfg.profile.geometry:
            self.geometry = GeometryRecorder(trainer.model, layout, self.labels, cfg.profile.geometry_top_k)
        self.checkpoint_tables = CheckpointTables(self.profiler, self.recorder, self.geometry)
        for callback in (self.recorder, ProfilerCallback(self.profiler), self.checkpoint_tables,
                         *self.adapter.callbacks(self)):
            trainer.add_callback(callback)
        # With tqdm off, transformers prints every log dict; the driver shows progress from our recorder instead.
        trainer.remove_callback(PrinterCallback)

    def _record_final_ranks(self) -> None:
        """Ranks that changed while training: run.json keeps the start, the end per module, and per layer their mean."""
        ranks = self.profiler.current_ranks()
        layout, record = self.layout, self.record
        record.initial_allocation = list(self.ranks)
        record.module_ranks = {m: [ranks[(layer, m)] for layer in range(layout.num_layers)] for m in layout.modules}
        record.allocation = [round(sum(ranks[(layer, m)] for m in layout.modules) / len(layout.modules))
                             for layer in range(layout.num_layers)]

    def _check_frozen_base(self) -> None:
        """The base weights must be bitwise what they were before training (LoRA trains only the adapter)."""
        digests = self.record.frozen_base
        digests["after"] = frozen_digest(self.trainer.model)
        if digests["after"] != digests["before"]:
            raise StudyError(
                f"{self.spec.run_id}: the frozen base weights changed during the run (sha256 {digests['before'][:12]} "
                f"before training, {digests['after'][:12]} after evaluation): the adapter leaked into the base, e.g. "
                "by an in-place merge; the run's results are not written"
            )

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
            report_to=[],
            disable_tqdm=True,
            use_cpu=not on_gpu,
            # bf16 autocast and checkpointing pay off on GPU; on CPU they made a step 1.8x slower (measured).
            bf16=on_gpu and self.config.model.dtype == "bfloat16",
            gradient_checkpointing=on_gpu,
            dataloader_num_workers=0,
        )
        if g.use_vllm:
            from orchestrator.core.gpu_packing import vllm_share_record
            from workers.generation import vllm_grpo_args

            self.record.memory_plan = vllm_share_record(self.config)  # several runs may share one GPU
            share = self.record.memory_plan["vllm_gpu_memory_utilization"]
            kwargs.update(vllm_grpo_args(g, spec.seed, on_cpu=not on_gpu, memory_share=share))
        return GRPOConfig(**kwargs)


def execute_run(config: StudyConfig, spec: RunSpec, study_dir: str | os.PathLike,
                report: Report | None = None) -> RunRecord:
    """Run one spec to completion (or return its record if it already completed); failures are recorded."""
    paths = StudyPaths(study_dir)
    if paths.is_complete(spec.run_id):
        return paths.read_record(spec.run_id)
    run = GRPORun(config, spec, study_dir, report)
    try:
        run.setup()
        if run.strategy.trains:
            run.train()
        record = run.write(run.evaluate())
        run.cleanup()
        return record
    except BaseException as err:
        run.fail(err)
        raise


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
