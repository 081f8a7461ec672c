"""Where the update goes: per module, the size, effective rank and principal-subspace share of dW = scale * B A.

For each LoRA module with frozen weight ``W0`` (``out x in``) and adapter factors ``B`` (``out x r``), ``A``
(``r x in``) the update is ``dW = s B A`` (AdaLoRA: ``dW = s B diag(E) A``, PEFT's SVD form, whose ``s`` is
``scaling / ranknum``). Three figures per module, the contract's ``GEOMETRY_SCHEMA``:

- ``update_norm``: ``||dW||_F``.
- ``effective_rank``: ``exp(H(p))`` with ``p_i = sigma_i / sum(sigma)`` over dW's singular values (Roy and
  Vetterli, 2007): 1 for a rank-1 update, r for r equal singular values. NaN for dW = 0 (LoRA-B at its zero
  init: nothing has moved yet).
- ``principal_overlap``: the share of ``||dW||_F^2`` inside the span of W0's top-k singular triplets,
  ``||U_k^T dW V_k||_F^2 / ||dW||_F^2`` (``U_k``, ``V_k``: W0's top-k left/right singular vectors). 1 when the
  update only re-weights W0's principal directions, about ``k^2 / (out * in)`` for a random update (the
  chance level the report quotes), and low when the update avoids them (RLVR updates avoid the pretrained
  weights' principal directions, arXiv 2511.08567).

dW is never formed: with ``B = Q_B R_B`` and ``A^T = Q_A R_A`` (thin QR), ``dW = s Q_B (R_B R_A^T) Q_A^T``, so its
singular values are those of the ``r x r`` core and the overlap is ``||s (U_k^T B)(A V_k)||_F^2``. W0's top-k
subspace is computed once per run (it is frozen): an exact SVD for matrices up to
:data:`EXACT_SVD_MAX_DIM` on their short side, a randomised one with power iterations above
(``torch.svd_lowrank``; Halko et al., 2011): an approximation, not exact, whose error on the top-k subspace
shrinks with the gap after the k-th singular value and with each power iteration.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pyarrow as pa
import torch

from orchestrator.core.contract import GEOMETRY_SCHEMA
from workers.model import LayerLayout
from workers.profiler import RunLabels

EXACT_SVD_MAX_DIM = 2048
_LOWRANK_OVERSAMPLE, _LOWRANK_ITERATIONS = 16, 6


@dataclass(frozen=True)
class UpdateGeometry:
    update_norm: float
    effective_rank: float
    principal_overlap: float


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values; NaN when they are all zero.

    >>> effective_rank(torch.tensor([3.0, 0.0])), effective_rank(torch.tensor([2.0, 2.0, 2.0, 2.0]))
    (1.0, 4.0)
    """
    s = singular_values.to(torch.float64).clamp_min(0)
    total = s.sum()
    if not total > 0:
        return math.nan
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def principal_basis(weight: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W0's top-k left (``out x k``) and right (``in x k``) singular vectors, in float32."""
    w = weight.detach().to(torch.float32)
    k = min(k, *w.shape)
    if min(w.shape) <= EXACT_SVD_MAX_DIM:
        u, _s, vh = torch.linalg.svd(w, full_matrices=False)
        return u[:, :k], vh[:k].T
    u, _s, v = torch.svd_lowrank(w, q=min(k + _LOWRANK_OVERSAMPLE, *w.shape), niter=_LOWRANK_ITERATIONS)
    return u[:, :k], v[:, :k]


def update_geometry(left: torch.Tensor, right: torch.Tensor, scale: float,
                    basis: tuple[torch.Tensor, torch.Tensor]) -> UpdateGeometry:
    """The geometry of ``dW = scale * left @ right`` (``left``: out x r, ``right``: r x in) against W0's ``basis``."""
    b = left.detach().to(torch.float64)
    a = right.detach().to(torch.float64)
    q_b, r_b = torch.linalg.qr(b)
    q_a, r_a = torch.linalg.qr(a.T)
    core = scale * (r_b @ r_a.T)
    sigma = torch.linalg.svdvals(core)
    energy = float((sigma**2).sum())
    if not energy > 0:
        return UpdateGeometry(0.0, math.nan, math.nan)
    u_k, v_k = (t.to(torch.float64) for t in basis)
    inside = scale * (u_k.T @ b) @ (a @ v_k)
    return UpdateGeometry(math.sqrt(energy), effective_rank(sigma), float((inside**2).sum()) / energy)


def update_factors(lora_layer: torch.nn.Module, adapter: str = "default") -> tuple[torch.Tensor, torch.Tensor, float]:
    """(left, right, scale) of a PEFT LoRA or AdaLoRA layer's update, so that dW = scale * left @ right."""
    lora_a, lora_b = lora_layer.lora_A[adapter], lora_layer.lora_B[adapter]
    if hasattr(lora_layer, "lora_E"):  # AdaLoRA (peft.tuners.adalora.SVDLinear): B diag(E) A * scaling / ranknum
        ranknum = float(lora_layer.ranknum[adapter])
        return lora_b, lora_a * lora_layer.lora_E[adapter], float(lora_layer.scaling[adapter]) / (ranknum + 1e-5)
    return lora_b.weight, lora_a.weight, float(lora_layer.scaling[adapter])


class GeometryRecorder:
    """Rows of the geometry table for one run: :meth:`capture` at a step measures every (layer, module)."""

    def __init__(self, peft_model: torch.nn.Module, layout: LayerLayout, labels: RunLabels, top_k: int,
                 adapter: str = "default"):
        started = time.perf_counter()
        base = peft_model.get_base_model()
        self.labels, self.adapter = labels, adapter
        self._modules = {(layer, module): base.get_submodule(layout.path(layer, module))
                         for layer in range(layout.num_layers) for module in layout.modules}
        # W0 is frozen, so its principal subspace is computed once (the costly part, see the module docstring).
        self._bases = {key: principal_basis(lora.get_base_layer().weight, top_k)
                       for key, lora in self._modules.items()}
        self.rows: dict[int, list[dict]] = {}
        self.seconds = time.perf_counter() - started  # W0's subspaces, then every capture: run.json timings

    def capture(self, step: int, ranks: dict[tuple[int, str], int] | None = None) -> None:
        """Measure every module's update as it is after optimizer step ``step`` (repeats replace)."""
        started = time.perf_counter()
        rows = []
        with torch.no_grad():
            for key, lora in self._modules.items():
                left, right, scale = update_factors(lora, self.adapter)
                g = update_geometry(left, right, scale, self._bases[key])
                rank = ranks.get(key) if ranks else None
                rows.append({"layer": key[0], "module": key[1], "rank": int(rank if rank is not None else left.shape[1]),
                             "update_norm": g.update_norm, "effective_rank": g.effective_rank,
                             "principal_overlap": g.principal_overlap})
        self.rows[step] = rows
        self.seconds += time.perf_counter() - started

    def restore(self, table: pa.Table) -> None:
        self.rows = {}
        for row in table.to_pylist():
            self.rows.setdefault(row["step"], []).append(
                {k: row[k] for k in ("layer", "module", "rank", "update_norm", "effective_rank", "principal_overlap")})

    def table(self, up_to_step: int | None = None) -> pa.Table:
        lab = self.labels
        rows = [{"run_id": lab.run_id, "strategy": lab.strategy, "seed": lab.seed, "step": step, **row}
                for step in sorted(self.rows) if up_to_step is None or step <= up_to_step for row in self.rows[step]]
        return pa.Table.from_pylist(rows, schema=GEOMETRY_SCHEMA)
