"""Per-step, per-layer, per-module LoRA gradient norms (the paper's Eq. 2 input), at near-zero cost.

At each optimizer step, before gradient clipping, the L2 norm of each LoRA module's gradient (lora_A and
lora_B together: sqrt(|dA|^2 + |dB|^2); for AdaLoRA with its singular values lora_E too) is computed for every (layer, module) with ONE fused
``torch._foreach_norm`` over all LoRA gradients and ONE host copy per step. Rows are buffered in memory
and handed out as an Arrow table; the run writes them with its checkpoints and at the end.

Why before clipping: clipping is one uniform scale of all gradients, so shares would be unchanged, but the
norms would be capped and useless for comparing runs. transformers' Trainer clips inside
``_clip_grad_norm`` and only then calls ``on_pre_optimizer_step``; the GRPO trainer subclass therefore
calls :meth:`GradientProfiler.capture` from ``_clip_grad_norm`` (:class:`ProfileBeforeClipping`, mixed into
the GRPO and SFT trainers), and the callback captures in ``on_pre_optimizer_step`` only when clipping is off.

Non-finite norms are kept as they are and flagged (column ``nonfinite``), never dropped or averaged. A tracked
parameter without a gradient makes its row NaN (flagged), never a valid-looking 0.0, and is counted in
``missing_rows`` (the run lists it among its warnings). The profiler must see every gradient whole:
:func:`check_unsharded` refuses DeepSpeed ZeRO and FSDP, which shard them across processes.

The ``rank`` column is each module's rank at that step: fixed for an allocation made before training, and
whatever :meth:`GradientProfiler.set_ranks` last reported for a strategy whose ranks change while training.
Rows of the ordinary gradient carry ``component = "total"``. :meth:`GradientProfiler.capture_component` adds
rows for one component of the same step's gradient (workers/decompose.py: one per reward, and ``kl``), from
gradients computed beside the optimizer's, never from ``.grad``. With a :attr:`GradientProfiler.weight_meter`
(``profile.weight_gradient_every``), the total rows of its steps also carry ``weight_grad_norm``, the frozen
weight's gradient norm (workers/weight_gradient.py); it is null on every other row. The table's schema is the contract's
(:data:`orchestrator.core.contract.PROFILE_SCHEMA`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import torch
from transformers import TrainerCallback

from orchestrator.core.contract import PROFILE_SCHEMA, TOTAL
from orchestrator.core.errors import StudyError
from workers.compat import ProfileBeforeClipping, foreach_norm
from workers.model import LayerLayout

__all__ = ["GradientProfiler", "ProfileBeforeClipping", "ProfilerCallback", "RunLabels", "check_unsharded"]

_ADAPTER = "default"  # the trained PEFT adapter; TRL may add a frozen "ref" adapter beside it


@dataclass(frozen=True)
class RunLabels:
    run_id: str
    strategy: str
    seed: int


class GradientProfiler:
    """Collects one row per (step, layer, module) from the gradients of each module's parameter group.

    A group is the LoRA pair (lora_A, lora_B) of a module for GRPO runs (:meth:`for_lora`), or the module's
    full weight for the SFT warm start (:meth:`for_full_weights`, rank 0 = no LoRA).
    """

    def __init__(self, groups: list[tuple[int, str, int, list[torch.nn.Parameter]]], labels: RunLabels):
        self.labels = labels
        self._keys = [(layer, module) for layer, module, _rank, _params in groups]
        self._ranks = [rank for _layer, _module, rank, _params in groups]  # current; each step keeps its own
        self._params = [p for *_, params in groups for p in params]
        # Group index of each tensor, so one index_add folds squared tensor norms into module norms.
        self._group_list = [g for g, (*_, params) in enumerate(groups) for _ in params]
        self._group_of = torch.tensor(self._group_list)
        self.missing_rows = 0  # (step, layer, module) rows captured with a parameter that had no gradient
        self._steps: list[int] = []
        self._norms: list[list[float]] = []
        self._step_ranks: list[list[int]] = []  # the ranks at each captured step (shared lists while unchanged)
        self._components: dict[int, dict[str, list[float]]] = {}  # step -> component -> norms (decomposed steps)
        self.capture_seconds: dict[int, float] = {}
        self.checks: list = []  # fn(step, grads) called on every captured step's gradients, before the norms
        self._excluded: dict[int, dict[str, list]] = {}  # step -> loss term -> its gradient, out of the total rows
        self.excluded_ratio: dict[str, dict[int, float]] = {}  # loss term -> step -> |its grad| / |the rest|
        self.weight_meter = None  # a WeightGradientMeter (same row order), read on each capture
        self._weight_norms: dict[int, list[float]] = {}  # step -> ||dL/dW||_F per group (measured steps)

    @classmethod
    def for_lora(cls, model: torch.nn.Module, layout: LayerLayout, ranks: list[int], labels: RunLabels):
        named = dict(model.named_parameters())
        # LoRA keeps A and B as Linear weights (lora_A.default.weight); AdaLoRA as parameters (lora_A.default),
        # with its singular values lora_E.default beside them, which are profiled with the pair.
        adalora = any(".lora_E." in name for name in named)
        parts = ("lora_A", "lora_B", "lora_E") if adalora else ("lora_A", "lora_B")
        groups = [
            (layer, module, ranks[layer],
             [named[_find_param(named, layout.path(layer, module), rf"{part}\.{_ADAPTER}(\.weight)?")]
              for part in parts])
            for layer in range(layout.num_layers) for module in layout.modules
        ]
        return cls(groups, labels)

    @classmethod
    def for_full_weights(cls, model: torch.nn.Module, layout: LayerLayout, labels: RunLabels):
        named = dict(model.named_parameters())
        groups = [
            (layer, module, 0, [named[_find_param(named, layout.path(layer, module), "weight")]])
            for layer in range(layout.num_layers) for module in layout.modules
        ]
        return cls(groups, labels)

    def capture(self, step: int) -> None:
        """Record the current gradients as optimizer step ``step`` (once per step; repeats are ignored)."""
        if self._steps and self._steps[-1] == step:
            return
        started = time.perf_counter()
        grads = [p.grad for p in self._params]
        for check in self.checks:  # e.g. the decomposition's sum identity, on the gradient itself
            check(step, grads)
        grads = self._without_excluded(step, grads)
        self.missing_rows += len({self._group_list[i] for i, g in enumerate(grads) if g is None})
        values = self._group_norms(grads)
        if self.weight_meter is not None:
            weights = self.weight_meter.collect(step)
            if weights is not None:
                self._weight_norms[step] = weights
        self._steps.append(step)
        self._norms.append(values)
        self._step_ranks.append(self._ranks)
        # The profiler's own cost, including the device->host sync: the metrics table reports it per step.
        self.capture_seconds[step] = time.perf_counter() - started

    def exclude_from_total(self, step: int, name: str, grads: list[torch.Tensor | None]) -> None:
        """A loss term's gradient (e.g. AdaLoRA's orthogonality regulariser), left out of step ``step``'s total
        rows; its size against the rest is kept in :attr:`excluded_ratio` (global L2 norms)."""
        self._excluded.setdefault(step, {})[name] = grads

    def _without_excluded(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        excluded = self._excluded.pop(step, {})
        for name, term in excluded.items():
            with torch.no_grad():
                rest = [g if e is None or g is None else g - e for g, e in zip(grads, term, strict=True)]
                term_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(e) for e in term
                                                                  if e is not None] or [torch.zeros(())]))
                rest_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in rest
                                                                  if g is not None] or [torch.zeros(())]))
            self.excluded_ratio.setdefault(name, {})[step] = float(term_norm / rest_norm) if rest_norm > 0 else math.nan
            grads = rest
        return grads

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """The profiled parameters, in the order :meth:`capture_component` takes their gradients."""
        return list(self._params)

    def capture_component(self, step: int, component: str, grads: list[torch.Tensor | None]) -> None:
        """Record one component of step ``step``'s gradient (``grads`` aligned with :attr:`params`)."""
        if component == TOTAL:
            raise ValueError(f"component {TOTAL!r} is the ordinary gradient; capture() records it")
        self._components.setdefault(step, {})[component] = self._group_norms(list(grads))

    def drop_components(self, step: int) -> None:
        """Forget the component rows of ``step`` (their parts did not sum to the total, workers/decompose.py)."""
        self._components.pop(step, None)

    def _group_norms(self, grads: list[torch.Tensor | None]) -> list[float]:
        """Per (layer, module) group: sqrt of the summed squared norms of its tensors; NaN for a missing one."""
        for i, g in enumerate(grads):
            if g is None:
                # No gradient is not a zero gradient (a step without backward gave 0.0 before): NaN, flagged.
                grads[i] = torch.full((), math.nan, device=self._params[i].device)
        with torch.no_grad():
            per_tensor = torch.stack(foreach_norm(grads)).to(torch.float64)  # one fused kernel
            group_of = self._group_of.to(per_tensor.device)
            squared = torch.zeros(len(self._keys), dtype=torch.float64, device=per_tensor.device)
            return squared.index_add_(0, group_of, per_tensor.pow(2)).sqrt().cpu().tolist()  # one host copy

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    def layer_shares(self) -> dict[int, float]:
        """Each layer's share of the last captured step's total gradient norm (summed over its modules), as the
        trackers log it beside TRL's scalars; {} before the first step or when the total is not finite."""
        if not self._norms:
            return {}
        per_layer: dict[int, float] = {}
        for (layer, _module), value in zip(self._keys, self._norms[-1], strict=True):
            per_layer[layer] = per_layer.get(layer, 0.0) + value
        total = sum(per_layer.values())
        return {layer: v / total for layer, v in per_layer.items()} if math.isfinite(total) and total > 0 else {}

    @property
    def keys(self) -> list[tuple[int, str]]:
        """The profiled (layer, module) groups, in row order within a step."""
        return list(self._keys)

    def current_ranks(self) -> dict[tuple[int, str], int]:
        """Each (layer, module)'s rank now (what :meth:`set_ranks` last reported, else the allocation)."""
        return dict(zip(self._keys, self._ranks, strict=True))

    def set_ranks(self, ranks: Mapping[tuple[int, str], int]) -> None:
        """Report new ranks for some (layer, module) groups; steps captured from now on carry them."""
        unknown = [key for key in ranks if key not in self._keys]
        if unknown:
            raise KeyError(f"not profiled: {unknown[:3]}")
        self._ranks = [int(ranks.get(key, rank)) for key, rank in zip(self._keys, self._ranks, strict=True)]

    def restore(self, table: pa.Table) -> None:
        """Reload rows written at a checkpoint, so a resumed run keeps each step exactly once."""
        by_step: dict[int, tuple[list[float], list[int]]] = {}
        components: dict[int, dict[str, list[float]]] = {}
        n = len(self._keys)
        steps = table.column("step").to_pylist()
        norms = table.column("grad_norm").to_pylist()
        ranks = table.column("rank").to_pylist()
        kinds = table.column("component").to_pylist() if "component" in table.column_names else [TOTAL] * len(steps)
        weights = (table.column("weight_grad_norm").to_pylist() if "weight_grad_norm" in table.column_names
                   else [None] * len(steps))
        self._weight_norms = {}
        for i in range(0, len(steps), n):
            if kinds[i] == TOTAL:
                by_step[steps[i]] = (norms[i : i + n], ranks[i : i + n])
                if any(w is not None for w in weights[i : i + n]):
                    self._weight_norms[steps[i]] = [math.nan if w is None else w for w in weights[i : i + n]]
            else:
                components.setdefault(steps[i], {})[kinds[i]] = norms[i : i + n]
        self._steps = sorted(by_step)
        self._norms = [by_step[s][0] for s in self._steps]
        self._step_ranks = [by_step[s][1] for s in self._steps]
        self._components = components
        self.missing_rows = sum(1 for s in self._steps for v in by_step[s][0] if v is None or math.isnan(v))
        if self._steps:
            self._ranks = list(self._step_ranks[-1])

    def table(self, up_to_step: int | None = None) -> pa.Table:
        """All rows so far (optionally only steps <= ``up_to_step``): per step, the total rows in (layer, module)
        order, then each decomposed component's rows in the same order."""
        blocks = []  # (step, component, norms, ranks)
        for i, step in enumerate(self._steps):
            if up_to_step is not None and step > up_to_step:
                continue
            blocks.append((step, TOTAL, self._norms[i], self._step_ranks[i]))
            for component, norms in self._components.get(step, {}).items():
                blocks.append((step, component, norms, self._step_ranks[i]))
        n = len(self._keys)
        flat = [v for *_, norms, _ranks in blocks for v in norms]
        no_weight = [None] * n
        weight = [w for step, component, *_ in blocks
                  for w in (self._weight_norms.get(step, no_weight) if component == TOTAL else no_weight)]
        lab = self.labels
        return pa.table(
            {
                "run_id": [lab.run_id] * len(flat),
                "strategy": [lab.strategy] * len(flat),
                "seed": [lab.seed] * len(flat),
                "step": [step for step, *_ in blocks for _ in range(n)],
                "layer": [layer for _ in blocks for layer, _m in self._keys],
                "module": [m for _ in blocks for _l, m in self._keys],
                "rank": [r for *_, ranks in blocks for r in ranks],
                "grad_norm": flat,
                "nonfinite": [not math.isfinite(v) for v in flat],
                "component": [component for _s, component, *_ in blocks for _ in range(n)],
                "weight_grad_norm": weight,
            },
            schema=PROFILE_SCHEMA,
        )


SHARDING_ENV = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_FSDP": "FSDP"}


def check_unsharded(environ: Mapping[str, str], trainer=None) -> None:
    """Refuse a set-up whose gradients the profiler cannot see whole (DeepSpeed ZeRO, FSDP), naming it.

    Each process would see only its shard, so every norm would be a fragment. Checked from the environment
    (accelerate's launch flags) before the model loads, and from the trainer once it exists.

    >>> check_unsharded({"ACCELERATE_USE_FSDP": "true"})
    Traceback (most recent call last):
    ...
    orchestrator.core.errors.StudyError: ACCELERATE_USE_FSDP=true turns on FSDP, which shards gradients across processes; the gradient profiler must see every gradient whole: run each study run unsharded, on one device
    """
    for key, what in SHARDING_ENV.items():
        if environ.get(key, "").lower() in ("1", "true", "yes"):
            raise StudyError(f"{key}={environ[key]} turns on {what}, which shards gradients across processes; "
                             "the gradient profiler must see every gradient whole: run each study run unsharded, "
                             "on one device")
    for flag, what in (("is_deepspeed_enabled", "DeepSpeed"), ("is_fsdp_enabled", "FSDP")):
        if trainer is not None and getattr(trainer, flag, False):
            raise StudyError(f"the trainer runs with {what} ({flag}), which shards gradients across processes; "
                             "the gradient profiler must see every gradient whole: run each study run unsharded")


class ProfilerCallback(TrainerCallback):
    """Captures in ``on_pre_optimizer_step`` when the trainer does not clip (max_grad_norm == 0).

    With clipping on, the trainer subclass already captured the pre-clip gradients for this step, and
    :meth:`GradientProfiler.capture` ignores the repeat.
    """

    def __init__(self, profiler: GradientProfiler):
        self.profiler = profiler

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.profiler.capture(state.global_step + 1)


def _find_param(named: dict[str, torch.nn.Parameter], module_path: str, suffix: str) -> str:
    """The one parameter named ``<prefix.>module_path.<suffix>`` (``suffix`` is a regex).

    PEFT prefixes the base model's names (base_model.model.<path>) and names LoRA weights
    <path>.lora_A.<adapter>.weight; matching on the suffix makes wrappers with other prefixes work too.
    """
    pattern = re.compile(rf"(^|\.){re.escape(module_path)}\.{suffix}$")
    hits = [name for name in named if pattern.search(name)]
    if len(hits) != 1:
        raise RuntimeError(f"expected one parameter {module_path}.{suffix}, found {hits}")
    return hits[0]
