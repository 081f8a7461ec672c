"""The one module that imports Ray: one actor per run, dependency wiring, retries, live progress, metrics.

Each run gets its own actor named ``grpo:<strategy>:seed<seed>[:<cell>]`` (so it is recognisable in the Ray
dashboard) with ``num_gpus``/``num_cpus`` from the config, and executes its cell's config. All runs whose
dependencies are met are submitted at once and Ray starts them as resources free up; results are collected
with ``ray.wait`` in completion order, never in submission order. A profile-dependent run (proportional,
reduced) is submitted the moment its source run (the uniform run of its seed and cell) completes.

Failure handling (orchestrator/core/attempts.py): a run whose node is lost, or whose process is told to stop
(SIGTERM: it checkpoints at the next step boundary first), is *interrupted*: a new actor resumes it from its latest
checkpoint, up to ``resources.max_interruptions`` times. A run whose own process dies (OOM kill, SIGKILL) or
raises is *crashed*: retried the same way up to ``resources.max_retries`` times. A StudyError (bad input, a full
output disk) is not retried. A run that fails for good is reported with its error, its dependants are marked
failed, and every other run goes on. run.json records every attempt: node, host, start, end and why it ended.

:class:`RunActor` is a plain class; ``ray.remote`` is applied only here at the boundary, so the worker code
(``workers.run.execute_run``) never sees Ray.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from orchestrator import head_watch
from orchestrator.core import attempts
from orchestrator.core.attempts import RunControl
from orchestrator.core.config import StudyConfig
from orchestrator.core.contract import FAILED, RunRecord, StudyPaths, parse_run_id
from orchestrator.core.errors import RunStopped, StudyError
from orchestrator.core.plan import RunSpec, StudyPlan
from orchestrator.progress import RunState, progress_line
from orchestrator.worker_env import worker_env

_head_watch: head_watch.HeadWatch | None = None  # the driver's watch on its cluster's head (orchestrator/head_watch.py)
NODE_VERDICT_WAIT_S = 60.0  # the longest the driver waits for Ray to say whether an unreachable actor's node died
Runner = Callable[..., object]  # runner(config, spec, study_dir, report=..., control=...) -> the run's RunRecord


class RunActor:
    """Executes one run inside a Ray worker process; answers progress queries while it runs.

    ``runner`` defaults to :func:`workers.run.execute_run`; the scheduling benchmark passes a stub that sleeps
    (any picklable function with the same signature), so the real scheduler can be timed without training.
    """

    def __init__(self, config: StudyConfig, study_dir: str, runner: Runner | None = None,
                 env: dict[str, str] | None = None):
        """``config`` is the run's cell config (the study config with the cell's axis values set)."""
        # The worker environment is applied here, before torch/vLLM/HF are imported in this process, rather
        # than as a Ray runtime_env: an actor with its own runtime_env needs a freshly started worker process,
        # while one without it can take an idle, already started worker (with stub runs the first runs started
        # 1.3 s after submission instead of 3 s, and each later one ~1 s sooner; measured).
        os.environ.update(env or {})
        self.config, self.study_dir, self.runner = config, study_dir, runner
        context = ray.get_runtime_context()
        self.control = RunControl(node_id=context.get_node_id(), node_ip=ray.util.get_node_ip_address())
        # SIGTERM (a pod being evicted, `ray stop`): Ray's worker would exit at once; the run instead checkpoints
        # at its next step boundary and returns RunStopped. Ray runs __init__ in the process's main thread, the
        # one place a handler can be installed (measured: Ray 2.60, threaded actor).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: self.control.request_stop("SIGTERM"))
        # answered as soon as the actor process is up; the node tells the driver what a lost node took with it
        self.latest: dict = {"phase": "setup", "node_id": self.control.node_id}
        self._gauges = None
        self._tags: dict[str, str] = {}

    def run(self, spec: RunSpec):
        if not self.config.grpo.use_vllm:
            from workers.compat import keep_vllm_unimported

            keep_vllm_unimported()  # ~5 s less start-up per HF-path run; before anything imports TRL
        runner = self.runner
        if runner is None:
            from workers.run import execute_run as runner  # heavy import (torch, TRL) inside the worker only

        self._tags = {"strategy": spec.strategy, "seed": str(spec.seed), "cell": parse_run_id(spec.run_id)[2] or "-"}
        return runner(self.config, spec, self.study_dir, report=self._report, control=self.control)

    def progress(self) -> dict:
        return dict(self.latest)

    def pid(self) -> int:
        return os.getpid()

    def _report(self, progress: dict) -> None:
        self.latest = {**self.latest, **progress}
        if "step" in progress:
            self._export_metrics(progress)

    def _export_metrics(self, progress: dict) -> None:
        from ray.util.metrics import Gauge

        if self._gauges is None:
            keys = ("strategy", "seed", "cell")
            self._gauges = {
                "step": Gauge("rankstudy_step", "GRPO optimizer step of the run", tag_keys=keys),
                "reward": Gauge("rankstudy_reward", "Mean reward of the step's rollouts", tag_keys=keys),
                "step_time_s": Gauge("rankstudy_step_time_s", "Wall time of the GRPO step (s)", tag_keys=keys),
            }
        for key, gauge in self._gauges.items():
            value = progress.get(key)
            if value is not None and value == value:  # skip NaN
                gauge.set(float(value), tags=self._tags)


def connect(num_cpus: int | None = None, resources: dict[str, float] | None = None) -> None:
    """Join the cluster at RAY_ADDRESS (as under `ray job submit`), else start a local one of our own.

    ``resources`` declares custom resources on a local cluster (e.g. ``{"slot": 4}``); a cluster you join
    declares its own with ``ray start --resources``.

    Without RAY_ADDRESS, ``ray.init()`` would attach to any cluster it finds on the machine (one a crashed test
    left, another user's); ``address="local"`` always starts a new one. That cluster uses Ray's token
    authentication (Ray >= 2.59 turns it on for a new local cluster unless RAY_AUTH_MODE says otherwise, and
    generates ``~/.ray/auth_token`` if missing). Setting RAY_AUTH_MODE=token here would not do: Ray reads its
    config when imported, so this process would start the cluster's processes in token mode without a token.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        kwargs = {"address": address}
    else:
        kwargs = {"address": "local", "num_cpus": num_cpus, "resources": resources}
    # ray.init installs its own SIGTERM handler (it logs "SIGTERM received" and exits 1, skipping every
    # `finally`); the driver's own handler (orchestrator/cli.py) is put back so a stopped driver shuts down cleanly.
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    ray.init(**kwargs, log_to_driver=True, configure_logging=False)
    if main_thread and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    global _head_watch
    _head_watch = head_watch.HeadWatch(ray.get_runtime_context().gcs_address).start()


def check_resources(specs: list[RunSpec]) -> None:
    """Fail fast, before any run starts, if no node of the cluster could ever host a run."""
    total = ray.cluster_resources()
    for spec in specs:
        need = {"GPU": spec.num_gpus, "CPU": spec.num_cpus, **spec.custom_resources}
        for name, amount in need.items():
            if amount > total.get(name, 0.0):
                hint = " (set resources.gpus_per_run=0 to run on CPU)" if name == "GPU" else ""
                raise StudyError(
                    f"resources: each run needs {amount:g} {name} but the Ray cluster has {total.get(name, 0.0):g}{hint}"
                )


def check_output_shared(root) -> None:
    """On a cluster of several nodes, refuse a local output directory some node does not see (each node looks
    for a fresh marker file written here; orchestrator/core/storage.py words the refusal)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from orchestrator.core.storage import unshared_output_error, write_probe

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) < 2:
        return
    marker, token = write_probe(root)
    try:
        probe = ray.remote(_sees_marker)
        refs = {node["NodeManagerAddress"] + f" ({node['NodeID'][:8]})": probe.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            str(marker), token) for node in nodes}
        seen = dict(zip(refs, ray.get(list(refs.values()), timeout=120), strict=True))
    finally:
        marker.unlink(missing_ok=True)
    unseen = [node for node, ok in seen.items() if not ok]
    if unseen:
        raise StudyError(unshared_output_error(root, unseen, len(nodes)))


def _sees_marker(path: str, token: str) -> bool:
    try:
        with open(path) as f:
            return f.read() == token
    except OSError:
        return False


def _prepare(config: StudyConfig, study_dir: str | None = None):
    from workers.prepare import prepare_base_model  # torch/TRL only inside the task

    return prepare_base_model(config, study_dir)


def _preparation_cpus(cpus_per_run: float, preparations: int, configured: float | None = None) -> float:
    """CPUs for one base-model preparation: ``resources.preparation_cpus`` when set; else, since nothing else runs
    while the models are prepared, the node's CPUs shared among the preparations (at least a run's, at most one
    node's)."""
    if configured is not None:
        return configured
    nodes = [node.get("Resources", {}).get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    if not nodes:
        return cpus_per_run
    share = math.floor(sum(nodes) / max(1, preparations))
    return max(cpus_per_run, min(max(nodes), share))


def prepare_models(configs: list[StudyConfig], echo: Callable[[str], None] = print, poll_s: float = 30.0,
                   study_dir: str | None = None) -> list:
    """Build and/or warm-start each config's base model, one Ray task each with a run's resources, all at once
    (each is cached by content); returns their ``PreparedModel`` s in order."""
    refs = []
    for i, config in enumerate(configs):
        res = config.resources
        cpus = _preparation_cpus(res.cpus_per_run, len(configs), res.preparation_cpus)
        task = ray.remote(_prepare).options(
            name="prepare:base-model" + (f":{i}" if len(configs) > 1 else ""), num_cpus=cpus,
            num_gpus=res.gpus_per_run, resources=dict(res.custom) or None,
            # Ray retries a task whose worker or node died (not one that raised): both budgets, as Ray cannot
            # tell a lost node from a crash here. The preparation is cached by content, so a retry redoes only it.
            max_retries=res.max_retries + res.max_interruptions,
            # Alone on its CPUs, a warm start gains from threads (1 -> 2 threads: 80 SFT steps of the laptop
            # model took 12.9 s instead of 20.1 s here), unlike runs that share the cores.
            runtime_env={"env_vars": {**worker_env(config), "OMP_NUM_THREADS": str(int(cpus))}},
        )
        refs.append(task.remote(config, study_dir))
    start = time.monotonic()
    while True:
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=poll_s)
        if not pending:
            break
        echo(f"preparing {len(pending)} base model(s) (build / SFT warm start): {time.monotonic() - start:.0f} s")
    try:
        return ray.get(refs)
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, StudyError):
            raise StudyError(f"base model: {cause}") from None
        raise


def run_grid(
    plan: StudyPlan,
    study_dir: str,
    *,
    progress_interval_s: float = 5.0,
    echo: Callable[[str], None] = print,
    runner: Runner | None = None,
) -> dict[str, RunState]:
    """Run every run of ``plan`` to completion or final failure; returns the state of each run by run_id.

    ``runner`` replaces :func:`workers.run.execute_run` inside each actor (see :class:`RunActor`).
    """
    paths = StudyPaths(study_dir)
    res = plan.config.resources
    states = {s.run_id: RunState(s, budget=attempts.Budget(res.max_retries, res.max_interruptions)) for s in plan.runs}
    for state in states.values():
        if paths.is_complete(state.spec.run_id):
            state.status = "completed"
    skipped = sum(s.status == "completed" for s in states.values())
    if skipped:
        echo(f"{skipped}/{len(states)} runs already completed in {study_dir}; skipping them")
    actor_cls = ray.remote(RunActor)
    last_line, last_print = "", 0.0

    while True:
        _submit_ready(states, actor_cls, plan, study_dir, echo, runner)
        running = {s.ref: s for s in states.values() if s.status == "running"}
        if not running:
            break
        # Wake on the first completion (or after the interval), then take every run finished by now: each one
        # frees a slot and may release dependants, so none of them waits for another round.
        finished, _ = ray.wait(list(running), num_returns=1, timeout=progress_interval_s)
        if finished:
            finished, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
        for ref in finished:
            _collect(running[ref], ref, StudyPaths(study_dir), echo)
        _poll_progress(states)
        line = progress_line(states)
        if line != last_line or time.monotonic() - last_print > 60:
            echo(line)
            last_line, last_print = line, time.monotonic()
    return states


def _submit_ready(states, actor_cls, plan: StudyPlan, study_dir, echo, runner) -> None:
    for state in states.values():
        if state.status != "pending":
            continue
        dep = state.spec.depends_on
        if dep is not None and dep in states:
            if states[dep].status == "failed":
                state.status, state.error = "failed", f"dependency {dep} failed"
                echo(f"[{state.spec.run_id}] not started: dependency {dep} failed")
                continue
            if states[dep].status != "completed":
                continue
        _start(state, actor_cls, plan.config_for(state.spec), study_dir, runner)
        echo(f"[{state.spec.run_id}] submitted as actor {state.spec.actor_name} (attempt {state.attempts})")


def _start(state: RunState, actor_cls, config: StudyConfig, study_dir, runner) -> None:
    spec = state.spec
    state.attempts += 1
    state.actor = actor_cls.options(
        name=spec.actor_name,
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        resources=spec.custom_resources or None,
        max_concurrency=2,  # one thread runs the run, the other answers progress queries
        max_restarts=0,  # retries are ours: a new actor resumes from the checkpoint
    ).remote(config, study_dir, runner, worker_env(config))
    state.ref = state.actor.run.remote(spec)
    state.status = "running"


def _collect(state: RunState, ref, paths: StudyPaths, echo) -> None:
    run_id = state.spec.run_id
    try:
        record = ray.get(ref)
        state.status, state.record = "completed", record
        acc = (record.eval or {}).get("accuracy") if isinstance(record, RunRecord) else None
        echo(f"[{run_id}] completed: {record.steps} steps, eval accuracy {acc:.3f}" if acc is not None
             else f"[{run_id}] completed")
        _release(state)
        return
    except (ActorDiedError, ActorUnavailableError, RayActorError) as err:
        node = state.node_id or _recorded_node(paths, run_id)
        if _node_lost(node, err):
            ended = f"{attempts.NODE_LOST}: node {node} left the cluster ({type(err).__name__})"
        else:
            ended = f"{attempts.DIED}: the worker process died ({type(err).__name__})"
        retry = True
    except RayTaskError as err:
        cause = err.cause if hasattr(err, "cause") else None
        if isinstance(cause, RunStopped):
            ended, retry = str(cause), True  # the run recorded it in run.json itself
        else:
            line = f"{type(cause).__name__ if cause else 'error'}: {str(cause).splitlines()[0] if cause else err}"
            ended, retry = f"{attempts.FAILED}: {line}", not isinstance(cause, StudyError)  # fails the same way again
    _release(state)
    retry, used = state.budget.charge(ended, retryable=retry)
    reason = ended.split(": ", 1)[1] if attempts.ended_kind(ended) == attempts.FAILED else ended
    _close_attempt(paths, run_id, ended, final=None if retry else reason)
    if retry:
        echo(f"[{run_id}] {reason}; resuming from its latest checkpoint ({used})")
        state.status = "pending"
    else:
        state.status, state.error = "failed", reason
        echo(f"[{run_id}] FAILED: {reason}")


def _recorded_node(paths: StudyPaths, run_id: str) -> str | None:
    """The node the latest attempt wrote into run.json, for an actor that died before it answered the driver."""
    record = paths.read_record(run_id)
    if record is None or not record.attempts or record.attempts[-1].get("ended") is not None:
        return None  # the attempt died before it wrote its entry (the last one is an earlier attempt's)
    return record.attempts[-1].get("node_id")


def _node_lost(node_id: str | None, err) -> bool:
    """Whether the attempt's actor went with its node (not a crash of its own): Ray says the node was preempted,
    or the node the actor ran on is no longer alive in the cluster."""
    if getattr(err, "preempted", False):
        return True
    if node_id is None:
        return False  # nowhere recorded: we cannot tell, so it counts as a crash (the safe side)
    # "Unavailable" comes as soon as the actor's connection drops, before the GCS has declared its node dead
    # (Ray's health checks: ~15 s by default): wait for the verdict rather than call a lost node a crash.
    deadline = time.monotonic() + (NODE_VERDICT_WAIT_S if isinstance(err, ActorUnavailableError) else 0)
    while True:
        if node_id not in {node["NodeID"] for node in ray.nodes() if node.get("Alive")}:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def _close_attempt(paths: StudyPaths, run_id: str, ended: str, final: str | None) -> None:
    """Write in run.json how the attempt ended when its process could not (it died); ``final``: the run failed
    for good with this error. The actor has been killed, so nothing else writes run.json now."""
    record = paths.read_record(run_id)
    if record is None:
        return  # the attempt died before it wrote anything
    changed = attempts.end_attempt(record.attempts, ended)
    if final is not None and record.status != FAILED:
        record.status, record.error, changed = FAILED, final, True
    if changed:
        try:
            paths.write_record(record)
        except OSError:  # a full disk: the previous run.json stays, whole
            pass


def _release(state: RunState) -> None:
    if state.actor is not None:
        try:
            ray.kill(state.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - the actor may already be gone, which is what we want
            pass
    state.actor = state.ref = state.progress_ref = state.node_id = None
    state.progress = {}


def _poll_progress(states: dict[str, RunState]) -> None:
    """Refresh each running run's progress without waiting: answers arrive by the next round.

    An actor still waiting for resources cannot answer, so blocking on it would delay every completion.
    """
    asked = {s.progress_ref: s for s in states.values() if s.status == "running" and s.progress_ref is not None}
    if asked:
        answered, _ = ray.wait(list(asked), num_returns=len(asked), timeout=0)
        for ref in answered:
            state = asked[ref]
            state.progress_ref = None
            try:
                state.progress = ray.get(ref)
                state.node_id = state.progress.get("node_id", state.node_id)
            except Exception:  # noqa: BLE001 - a dying actor; its run is collected (and retried) on its own
                pass
    for state in states.values():
        if state.status == "running" and state.progress_ref is None:
            state.progress_ref = state.actor.progress.remote()


def shutdown() -> None:
    if head_watch.lost() is not None:
        sys.stdout.flush()
        return  # nothing to shut down; the watch ends the process should Ray's exit hooks hang on the lost head
    if _head_watch is not None:
        _head_watch.stop()
    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.shutdown()
    sys.stdout.flush()
