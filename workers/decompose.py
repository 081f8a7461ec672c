r"""Per-reward gradient decomposition: the LoRA gradient of a GRPO step, split exactly into one part per reward
and one for the KL term (the paper's untested hypothesis that cold layers carry formatting).

Derivation, for TRL 1.16's ``grpo`` loss as the worker runs it (``scale_rewards="group"``,
``multi_objective_aggregation="sum_then_normalize"``, one optimizer step per generation batch and
``num_iterations=1``). For completion i of a group G, the total reward is ``r_i = sum_k w_k r_ik`` and the
advantage is

    A_i = (r_i - mean_G r) / (std_G r + 1e-4).

Hold the denominator at its value (the std of the *total* reward, a number per group) and the numerator is
linear in the rewards, so ``A_i = sum_k A_ik`` with ``A_ik = w_k (r_ik - mean_G r_k) / (std_G r + 1e-4)``.
The per-token loss is ``-min(c A_i, clip(c) A_i) + beta KL_t`` with ``c = exp(logp_t - logp_old,t)``. While
``c`` is inside the clip range both branches are equal and the gradient is ``-A_i grad(c)`` whichever branch
autograd takes, linear in ``A_i``; vLLM's importance-sampling weight multiplies the policy term by a constant.
Without a separate old-logprob pass TRL uses the current log-probabilities, detached, so ``c = 1`` exactly. With
one (vLLM rollouts, ``num_iterations > 1``) ``c`` is near 1 but not 1 (dropout, kernels), and a token outside
the clip range makes the loss depend on the sign of its advantage, which the parts do not share: such a step is
detected directly (:func:`clipped_tokens` on the step's own ratios) and its component rows are dropped. The loss, an average over tokens and
sequences, is therefore ``L = sum_k L_k + L_kl`` with ``L_k`` the loss at advantages ``A_ik`` and ``beta = 0``,
and ``L_kl`` the loss at advantages 0 and the run's beta, and so is its gradient:

    grad L = sum_k grad L_k + grad L_kl.

On every ``profile.decompose_every``-th step the worker computes each ``grad L_k`` and ``grad L_kl`` on the
step's own batch with extra forward/backward passes (``torch.autograd.grad``, which never touches ``.grad``),
profiles each like the total (component = reward name, or ``kl``) and leaves the optimizer step as it was.
:func:`component_advantages` reproduces TRL's advantages from the per-reward rewards and
:meth:`Decomposer.attach` checks that they sum to TRL's, so a TRL change that breaks the identity stops the run
instead of writing wrong components. Each extra forward pass starts from the RNG state the ordinary one will
use, which then gets it back (workers/compat.py), so with LoRA dropout on the components see the same masks as
the total and the run draws exactly the random numbers it would have without decomposition. Loss terms the
trainer adds to TRL's (AdaLoRA's orthogonality regulariser) are components of their own. Simplified: TRL's
entropy bonus and auxiliary (MoE) losses must be off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from orchestrator.core.contract import KL_COMPONENT
from orchestrator.core.errors import StudyError

GROUP_STD_EPS = 1e-4  # TRL 1.16's denominator offset (grpo_trainer.py, _generate_and_score_completions)
COMPONENTS_KEY = "rankstudy_component_advantages"  # the batch key that carries A_ik through TRL's shuffle


def sum_bound(part_scale: float, dtype: torch.dtype) -> float:
    """The largest gap allowed between the parts' sum and the gradient: ``SUM_EPSILONS`` epsilons of the dtype the
    passes compute in (at least :data:`FP32_ACCUMULATION_EPSILON`), times ``part_scale`` (the sum over parts of each
    part's largest entry).

    >>> f"{sum_bound(1.0, torch.float32):.2e}", sum_bound(1.0, torch.bfloat16)
    ('6.10e-05', 0.0625)
    """
    return SUM_EPSILONS * max(torch.finfo(dtype).eps, FP32_ACCUMULATION_EPSILON) * part_scale


def clipped_tokens(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, epsilon_low: float,
                   epsilon_high: float, level: str = "token") -> tuple[int, int]:
    """(tokens whose importance ratio is outside ``[1 - epsilon_low, 1 + epsilon_high]``, tokens in the loss mask):
    where the PPO clip can act, whichever the sign of the advantage. ``level="sequence"`` counts sequences, as
    TRL's sequence-level ratio.

    >>> logps, mask = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[1, 1, 0]])
    >>> clipped_tokens(logps, logps, mask, 0.2, 0.2)
    (0, 2)
    >>> clipped_tokens(logps, logps - torch.tensor([[0.0, 0.5, 0.5]]), mask, 0.2, 0.2)  # the third is masked
    (1, 2)
    """
    mask = mask.bool()
    log_ratio = (logps - old_logps).float()
    if level == "sequence":
        log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        mask = mask.any(-1, keepdim=True)
    ratio = log_ratio.exp()
    outside = ((ratio < 1 - epsilon_low) | (ratio > 1 + epsilon_high)) & mask
    return int(outside.sum()), int(mask.sum())
# Each part is its own backward pass, rounded on its own: the parts' sum may differ from the gradient by about an
# epsilon of the compute dtype (bf16 activations) or by many fp32 epsilons (the gradient is accumulated in fp32 over
# the batch's tokens), times the parts' size. Measured: 8.4e-7 of the gradient's largest entry in fp32 and 1.1e-2
# in bf16 on the laptop model (issue 21: a fixed 1e-3 dropped every bf16 step), 3.5e-3 in bf16 on the tests' tiny
# model. The bound allows SUM_EPSILONS of the larger of the two epsilons; a wrong decomposition misses by O(1).
SUM_EPSILONS = 8
FP32_ACCUMULATION_EPSILON = 64 * torch.finfo(torch.float32).eps  # an fp32 sum over ~a batch of tokens


def component_advantages(rewards: torch.Tensor, weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """A_ik (shape B x K) from per-reward rewards ``r_ik`` (B x K, NaN = not scored), in groups of completions.

    >>> r = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> a = component_advantages(r, torch.ones(2), num_generations=4)
    >>> a.sum(dim=1)  # the advantages of the total reward [1, 0, 2, 1]: (r - 1) / std
    tensor([ 0.0000, -1.2246,  1.2246,  0.0000])
    >>> component_advantages(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2), num_generations=2)
    tensor([[0., 0.],
            [0., 0.]])
    """
    weighted = rewards * weights.to(rewards.device, rewards.dtype).unsqueeze(0)
    total = weighted.nansum(dim=1)
    unscorable = torch.isnan(rewards).all(dim=1)
    total[unscorable] = torch.nan
    grouped_total = total.view(-1, num_generations)
    mean = torch.nanmean(grouped_total, dim=1, keepdim=True)
    count = (~torch.isnan(grouped_total)).sum(dim=1, keepdim=True)
    variance = torch.nanmean((grouped_total - mean) ** 2, dim=1, keepdim=True) * count / (count - 1)
    std = variance.sqrt().repeat_interleave(num_generations, dim=0)  # (B, 1), Bessel-corrected as TRL's nanstd
    grouped = weighted.view(-1, num_generations, weighted.shape[1])
    component_mean = torch.nanmean(torch.where(unscorable.view(-1, num_generations, 1), torch.nan, grouped), dim=1,
                                   keepdim=True)
    centred = (grouped - component_mean).view_as(weighted)
    parts = torch.nan_to_num(centred / (std + GROUP_STD_EPS), nan=0.0)
    # A group whose total reward is constant has advantage 0 (TRL: std 0, numerator 0). Its rewards may still
    # differ one against the other ((1, 0) and (0, 1) both total 1): dividing those by the 1e-4 offset would give
    # parts of +-1e4 that cancel. They carry no gradient in the total, so none in any part either.
    return torch.where(torch.isclose(std, torch.zeros_like(std)), torch.zeros_like(parts), parts)


class Decomposer:
    """Taps each reward's values, attaches A_ik to the batch, and profiles each component's LoRA gradient.

    ``every``: decompose steps ``every, 2*every, ...``; ``rewards``: config name -> reward function, in the
    trainer's order. The trainer mixin (:class:`workers.compat.DecomposedGRPO`) calls :meth:`attach` on every
    scored batch and :meth:`decompose` from ``compute_loss``.
    """

    def __init__(self, every: int, reward_names: Sequence[str], profiler, num_generations: int,
                 compute_dtype: torch.dtype = torch.float32):
        self.every, self.names = every, list(reward_names)
        self.compute_dtype = compute_dtype  # the dtype the forward/backward passes round in (the base weights')
        self.profiler = profiler
        self.num_generations = num_generations
        self._last: dict[str, list[float]] = {}
        self.keep_vectors = False  # tests: keep the last step's component gradients (before norms)
        self.last_vectors: dict[str, list[torch.Tensor]] = {}
        self.seconds: dict[int, float] = {}
        self._pending: tuple[int, list[torch.Tensor], float] | None = None
        self._clipped: dict[int, tuple[int, int]] = {}  # step -> (tokens outside the clip range, tokens)
        self.dropped: dict[int, str] = {}  # decomposed steps whose component rows were dropped, and why
        self.max_gap = 0.0  # largest gap between the summed parts and the gradient, relative to the gradient's max
        self.max_gap_to_bound = 0.0  # the same gap over its bound (sum_bound): <= 1 for every kept step

    @property
    def inexact_steps(self) -> list[int]:
        return sorted(self.dropped)

    @property
    def components(self) -> list[str]:
        return [*self.names, KL_COMPONENT]

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def tap(self, name: str, reward_fn: Callable) -> Callable:
        """Wrap a reward function so its values for the latest batch are kept (behaviour unchanged)."""

        def tapped(completions, **kwargs):
            values = reward_fn(completions, **kwargs)
            self._last[name] = [float("nan") if v is None else float(v) for v in values]
            return values

        tapped.__name__ = reward_fn.__name__
        return tapped

    def attach(self, batch: dict, weights: torch.Tensor) -> dict:
        """Add A_ik to a scored batch (TRL's output dict), after checking they sum to TRL's advantages."""
        advantages = batch["advantages"]
        missing = [name for name in self.names if len(self._last.get(name, ())) != advantages.shape[0]]
        if missing:
            raise StudyError(f"profile.decompose_every: the rewards {missing} were not seen for this batch of "
                             f"{advantages.shape[0]} completions; the decomposition needs every reward's values")
        rewards = torch.tensor([self._last[name] for name in self.names], dtype=torch.float32).T
        parts = component_advantages(rewards, weights, self.num_generations).to(advantages.device)
        gap = float((parts.sum(dim=1) - advantages.float()).abs().max()) if advantages.numel() else 0.0
        if gap > 1e-3 * max(1.0, float(advantages.abs().max())):
            raise StudyError(f"profile.decompose_every: the per-reward advantages do not sum to TRL's (max gap "
                             f"{gap:.2e}); this TRL version computes advantages differently: set "
                             "profile.decompose_every: 0")
        return {**batch, COMPONENTS_KEY: parts}

    def decompose(self, step: int, loss_at: Callable[[torch.Tensor, bool], torch.Tensor], parts: torch.Tensor,
                  has_kl: bool, terms: dict[str, Callable[[], torch.Tensor]] | None = None) -> None:
        """Profile each component's gradient; ``loss_at(advantages, with_kl)`` is the step's loss on its batch,
        ``terms`` the loss terms the trainer adds to it (e.g. AdaLoRA's regulariser), each its own component."""
        started = time.perf_counter()
        params = self.profiler.params
        vectors = {}
        for k, name in enumerate(self.names):
            vectors[name] = self._grad(loss_at(parts[:, k], False), params)
        vectors[KL_COMPONENT] = (self._grad(loss_at(torch.zeros_like(parts[:, 0]), True), params) if has_kl
                                 else [torch.zeros_like(p) for p in params])
        for name, term in (terms or {}).items():
            vectors[name] = self._grad(term(), params)
        for name, grads in vectors.items():
            self.profiler.capture_component(step, name, list(grads))
        self.last_vectors = vectors if self.keep_vectors else {}
        part_scale = sum(max((float(g.abs().max()) for g in grads if g.numel()), default=0.0)
                         for grads in vectors.values())
        self._pending = (step, [sum(parts) for parts in zip(*vectors.values(), strict=True)], part_scale)
        self.seconds[step] = time.perf_counter() - started

    def note_clip(self, step: int, clipped: int, tokens: int) -> None:
        """The step's count of tokens outside the clip range (:func:`clipped_tokens`), from the trainer."""
        self._clipped[step] = (clipped, tokens)

    def verify(self, step: int, grads: list[torch.Tensor | None]) -> None:
        """Called with the gradient the optimizer uses (before clipping): a decomposed step loses its component rows
        (:attr:`dropped`, with the reason) when a token was outside the clip range, or when its parts do not sum to
        the gradient within :func:`sum_bound` (which no rounding explains: a trainer whose loss the derivation
        does not describe). Such a step is left out rather than written with parts that do not add up."""
        if self._pending is None or self._pending[0] != step:
            return
        _, summed, part_scale = self._pending
        self._pending = None
        clipped, tokens = self._clipped.pop(step, (0, 0))
        with torch.no_grad():
            total = [torch.zeros_like(s) if g is None else g for s, g in zip(summed, grads, strict=True)]
            gap = max(float((s - t).abs().max()) for s, t in zip(summed, total, strict=True))
            scale = max(max(float(t.abs().max()) for t in total), 1e-30)
        bound = max(sum_bound(part_scale, self.compute_dtype), 1e-30)
        if clipped:
            reason = f"the PPO clip was active on {clipped} of {tokens} tokens (the loss is not linear there)"
        elif gap > bound:
            reason = (f"the parts sum to the gradient within {gap:.2e}, above the {bound:.2e} that rounding in "
                      f"{str(self.compute_dtype).removeprefix('torch.')} explains")
        else:
            self.max_gap, self.max_gap_to_bound = max(self.max_gap, gap / scale), max(self.max_gap_to_bound, gap / bound)
            return
        self.dropped[step] = reason
        self.profiler.drop_components(step)

    @staticmethod
    def _grad(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params, strict=True)]
