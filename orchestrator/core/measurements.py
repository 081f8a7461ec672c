"""The optional measurements of a study run (config section ``profile``): gradient decomposition and geometry.

The per-step gradient profile (the paper's Eq. 2 input) is always on and costs well under 1% of a step. The two
measurements here answer the paper's open questions and cost more (``make bench`` reports each as a ratio to a
run without it), so each has an off switch:

- ``decompose_every``: on every N-th optimizer step, the LoRA gradient is split exactly into one part per
  reward and one for the KL term (workers/decompose.py), each profiled like the total; K + 1 extra
  forward/backward passes on those steps, the optimizer step unchanged.
- ``geometry``: at every checkpoint and at the end, each module's update dW = s B A is measured: norm,
  effective rank, and its share inside W0's top-``geometry_top_k`` singular subspace (workers/geometry.py),
  written to DIR/geometry.
- ``weight_gradient_every``: on every N-th step, each module's frozen-weight gradient norm ||dL/dW||_F at the
  merged point (workers/weight_gradient.py): the rank-invariant importance, a profile column.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.errors import ConfigError
from orchestrator.core.typed_yaml import documented


@dataclass(frozen=True)
class ProfileSettings:
    decompose_every: int = documented(
        "Every N optimizer steps, split the LoRA gradient into one component per reward and one for the KL term "
        "(extra backward passes on the same batch; training is unchanged); 0 = off.", default=0)
    geometry: bool = documented(
        "At each checkpoint and at the end, measure each module's update dW = s*B*A: norm, effective rank and "
        "its share in the frozen W0's top-k singular subspace (DIR/geometry).", default=False)
    geometry_top_k: int = documented("k of the principal subspace of W0 the geometry measures the update against.",
                                default=16)
    weight_gradient_every: int = documented(
        "Every N optimizer steps, record each module's frozen-weight gradient norm ||dL/dW||_F (the gradient a "
        "full fine-tune would see; independent of LoRA rank and scaling) in the profile's weight_grad_norm "
        "column; one d_out x d_in matmul per module on those steps. 0 = off.", default=0)

    def __post_init__(self):
        if self.decompose_every < 0:
            raise ConfigError(f"decompose_every: must be >= 0 (0 = off), got {self.decompose_every}")
        if self.weight_gradient_every < 0:
            raise ConfigError(f"weight_gradient_every: must be >= 0 (0 = off), got {self.weight_gradient_every}")
        if self.geometry_top_k < 1:
            raise ConfigError(f"geometry_top_k: must be a positive integer, got {self.geometry_top_k}")
