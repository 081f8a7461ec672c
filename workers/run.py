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
Every GRPO setting the paper fixes is passed to GRPOConfig explicitly (workers/grpo_args.py), because TRL's defaults
differ.
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

from orchestrator.core import attempts, strategies
from orchestrator.core.attempts import RunControl
from orchestrator.core.config import StudyConfig
from orchestrator.core.contract import (
    COMPLETED,
    FAILED,
    RunRecord,
    StudyPaths,
    run_tables,
)
from orchestrator.core.errors import RunStopped, StudyError
from orchestrator.core.importance import importance_from_profile
from orchestrator.core.plan import RunSpec
from workers import compat, run_notes
from workers.adapters import get_adapter
from workers.decompose import Decomposer
from workers.evaluate import evaluate, generate_greedy_hf, prompt_token_ids
from workers.geometry import GeometryRecorder
from workers.grpo_args import grpo_args
from workers.machine import machine_cpu
from workers.model import LayerLayout, discover_layers, load_model_and_tokenizer
from workers.profiler import GradientProfiler, ProfilerCallback, RunLabels, check_unsharded
from workers.progress_file import ProgressFile
from workers.tasks import get_task
from workers.tracking import tracking_environment
from workers.trainer import (
    CheckpointTables,
    ProfiledGRPOTrainer,
    StepRecorder,
    StopAtStepBoundary,
    checkpoint_step,
    publish_checkpoint,
    resume_checkpoint,
)
from workers.weight_gradient import WeightGradientMeter
from workers.weights import frozen_digest

Report = Callable[[dict], None]


class GRPORun:
    def __init__(self, config: StudyConfig, spec: RunSpec, study_dir: str | os.PathLike, report: Report | None = None,
                 control: RunControl | None = None):
        self.config, self.spec = config, spec
        self.control = control or RunControl()  # where this attempt runs; its stop request (SIGTERM)
        self.paths = StudyPaths(study_dir)
        self.labels = RunLabels(spec.run_id, spec.strategy, spec.seed)
        self._report_to = report or (lambda progress: None)
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
        self.progress_file: ProgressFile | None = None
        self.trainer: ProfiledGRPOTrainer | None = None

    def report(self, progress: dict) -> None:
        """Progress to progress.json (the run's heartbeat, for anyone watching the directory: `rankstudy status`,
        a test waiting for a step) and, with its pace, to the caller (the actor, then the driver's line)."""
        if self.progress_file is not None:
            progress = self.progress_file.update(progress)
        self._report_to(progress)

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
        resume, restarted = resume_checkpoint(self.paths, self.paths.checkpoints(self.spec.run_id),
                                              self.adapter.restart_reason)
        if restarted is not None:
            self.record.warnings.append(f"{self.strategy.name}: {restarted}")
        if resume is not None:
            resume_step = checkpoint_step(resume)
            self.checkpoint_tables.restore(resume)
            self.record.resumed_from_step = resume_step
            self.paths.write_record(self.record)
        self._stop_if_requested("before training")
        stopper = StopAtStepBoundary(self.control.stop)
        self.trainer.add_callback(stopper)
        self.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        self.timings["train_s"] = time.perf_counter() - start
        if stopper.stopped_at is not None:
            # The trainer saved checkpoint-<step> (tables and marker included) before it returned.
            self._stop_if_requested(f"at step {stopper.stopped_at}; checkpoint-{stopper.stopped_at} saved")

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

        self.report({"phase": "eval", "eval_done": 0, "eval_total": len(prompts)})

        def progress(done, total):
            self._stop_if_requested(f"during evaluation ({done}/{total} items); resumes from the latest checkpoint")
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
            self.paths.push(self.paths.adapter(run_id))
            profile = self.profiler.table()
            self.paths.write_table("profiles", run_id, profile)
            run_notes.note_divergence(self.record, profile)
            self.paths.write_table("metrics", run_id, self.recorder.table())
        if self.adapter.ranks_change and self.profiler is not None:
            run_notes.note_final_ranks(self.record, self.ranks, self.profiler.current_ranks(), self.layout)
        if self.geometry is not None:
            self.geometry.capture(self.trainer.state.global_step, self.profiler.current_ranks())
            self.paths.write_table("geometry", run_id, self.geometry.table())
        self.paths.write_table("eval", run_id, eval_table)
        record = self.record
        run_notes.note_measurements(record, self.timings, self.decomposer, self.geometry,
                                    self.profiler.weight_meter if self.profiler is not None else None)
        run_notes.note_profile(record, self.profiler)
        record.status, record.timings = COMPLETED, self.timings
        attempts.end_attempt(record.attempts, attempts.COMPLETED)
        correct = sum(1 for verdict in eval_table.column("correct").to_pylist() if verdict)  # None: no such reward
        record.eval = {"n": eval_table.num_rows, "correct": correct, "accuracy": correct / max(eval_table.num_rows, 1)}
        record.finished_at = attempts.now()
        self.paths.write_record(record)  # last: the run is complete only once its tables are all in place
        return record

    def cleanup(self) -> None:
        shutil.rmtree(self.paths.checkpoints(self.spec.run_id), ignore_errors=True)
        if self.paths.remote is not None:
            self.paths.remote.delete(self.paths.checkpoints(self.spec.run_id).relative_to(self.paths.root))
        self.trainer = self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def fail(self, err: BaseException) -> None:
        """Record the failure in run.json (results already written stay as they are)."""
        if self.record.started_at is None:
            return  # failed before the run started (e.g. bad library versions): nothing of this run exists yet
        if not isinstance(err, RunStopped):  # a stopped run already recorded why, and is not failed
            self.record.status, self.record.error = FAILED, _one_line(err)
            self.record.traceback = traceback.format_exc(limit=20)
            attempts.end_attempt(self.record.attempts, f"{attempts.FAILED}: {_one_line(err)}")
        try:
            self.paths.write_record(self.record)
        except OSError as write_err:  # e.g. the disk is full: the previous run.json stays, whole (atomic writes)
            print(f"[{self.spec.run_id}] run.json not updated: {_one_line(write_err)}", flush=True)

    def _stop_if_requested(self, where: str) -> None:
        """Told to stop (SIGTERM): record why in run.json and end this attempt (the scheduler resumes the run)."""
        control = self.control
        if not control.stop.is_set():
            return
        took = time.monotonic() - control.stop_time if control.stop_time is not None else float("nan")
        reason = f"{attempts.STOPPED}: {control.stop_reason or 'stop requested'} {where} ({took:.1f} s after the request)"
        attempts.end_attempt(self.record.attempts, reason)
        self.paths.write_record(self.record)
        raise RunStopped(reason)

    # -- setup steps ----------------------------------------------------------------------------------------
    def _start_record(self) -> None:
        previous = self.paths.read_record(self.spec.run_id)
        record = self.record
        record.host, record.pid, record.started_at = socket.gethostname(), os.getpid(), attempts.now()
        record.cpu = machine_cpu()
        record.attempt = (previous.attempt if previous is not None else 0) + 1
        record.attempts = attempts.start_attempt(previous.attempts if previous is not None else [], record.attempt,
                                                 self.control, record.host, record.pid)
        self.paths.write_record(record)
        progress = self.paths.progress(self.spec.run_id)
        self.progress_file = ProgressFile(progress, record.attempt, publish=lambda: self.paths.push(progress))
        self.progress_file.start()

    def _setup_model(self) -> None:
        m = self.config.model
        self.model, self.tokenizer = load_model_and_tokenizer(m.name_or_path, m.dtype, m.revision)
        self.layout = discover_layers(self.model, self.config.lora.target_modules)
        self.record.num_layers = self.layout.num_layers

    def _setup_allocation(self) -> None:
        spec, record, num_layers = self.spec, self.record, self.layout.num_layers
        importance, measure = None, self.config.allocation.importance
        if spec.depends_on is not None:
            if not self.paths.is_complete(spec.depends_on):
                raise StudyError(f"{spec.run_id}: needs the profile of {spec.depends_on}, which has not completed")
            self.paths.pull(self.paths.table("profiles", spec.depends_on))
            path = str(self.paths.table("profiles", spec.depends_on))
            importance = importance_from_profile(path, spec.depends_on, measure)
        elif spec.profile_path is not None:
            importance = importance_from_profile(spec.profile_path, measure=measure)
        if importance is not None:
            record.importance_measure = measure
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
            self.decomposer = Decomposer(cfg.profile.decompose_every, list(rewards), None, cfg.grpo.num_generations,
                                         compute_dtype=self.model.dtype)
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
        if cfg.profile.weight_gradient_every:
            trainer.weight_gradient_meter = self.profiler.weight_meter = WeightGradientMeter(
                trainer.model, layout, cfg.profile.weight_gradient_every, checkpointing=trainer.args.gradient_checkpointing)
        if cfg.profile.geometry:
            self.geometry = GeometryRecorder(trainer.model, layout, self.labels, cfg.profile.geometry_top_k)
        self.checkpoint_tables = CheckpointTables(self.profiler, self.recorder, self.geometry,
                                                  publish=lambda ckpt: publish_checkpoint(self.paths, ckpt))
        for callback in (self.recorder, ProfilerCallback(self.profiler), self.checkpoint_tables,
                         *self.adapter.callbacks(self)):
            trainer.add_callback(callback)
        # With tqdm off, transformers prints every log dict; the driver shows progress from our recorder instead.
        trainer.remove_callback(PrinterCallback)

    def _grpo_args(self):
        args, memory_plan = grpo_args(self.config, self.spec, self.paths.checkpoints(self.spec.run_id),
                                      on_gpu=torch.cuda.is_available())
        self.record.memory_plan = memory_plan
        return args

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


def execute_run(config: StudyConfig, spec: RunSpec, study_dir: str | os.PathLike,
                report: Report | None = None, control: RunControl | None = None) -> RunRecord:
    """Run one spec to completion (or return its record if it already completed); failures are recorded.

    ``control`` (from the scheduler) says where the attempt runs and carries its stop request: a stopped run
    raises :class:`RunStopped` after saving a checkpoint. A full output disk raises one
    :class:`OutputSpaceError` line naming the directory and the space left.
    """
    paths = StudyPaths(study_dir)
    if paths.is_complete(spec.run_id):
        return paths.read_record(spec.run_id)
    tags = {"strategy": spec.strategy, "seed": spec.seed, **spec.cell}
    with tracking_environment(config.tracking, paths.root, config.name, spec.run_id, tags):
        try:
            return _execute(GRPORun(config, spec, study_dir, report, control), paths)
        finally:
            if paths.remote is not None and config.tracking.backend == "tensorboard" and config.tracking.uri is None:
                paths.push(paths.root / "tracking" / "tensorboard" / spec.run_id)  # the event files, as they are


def _execute(run: GRPORun, paths: StudyPaths) -> RunRecord:
    try:
        run.setup()
        if run.strategy.trains:
            run.train()
        record = run.write(run.evaluate())
        run.cleanup()
        return record
    except BaseException as err:
        if attempts.is_disk_full(err):
            err = attempts.disk_full_error(err, paths.root)
            run.fail(err)
            raise err from None
        run.fail(err)
        raise
    finally:
        if run.progress_file is not None:
            run.progress_file.close()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
