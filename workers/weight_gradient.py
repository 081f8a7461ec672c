"""||dL/dW||_F of each module's frozen weight: the rank-invariant importance (``profile.weight_gradient_every``).

A LoRA gradient norm depends on its module's rank and scaling convention by construction (with constant scaling
||grad B|| grows about as sqrt(r) at init, under fixed alpha it falls about as 1/sqrt(r)), so re-profiling
rounds and the amplification finding mix that mechanical effect with any real signal. The gradient of the loss
with respect to the frozen weight W at the current merged point W + s B A does not depend on the adapter: it is
the gradient a full fine-tune would see at the same weights. For a linear layer y = x W^T (plus the LoRA path),
with X its inputs and G = dL/dy (T tokens x d_in and T x d_out), dL/dW = G^T X, so the norm costs one matmul
per module on a measured step.

How: a forward pre-hook on each PEFT LoRA wrapper keeps its input X, a hook on its output receives G during
backward; once a module has both, ||G^T X||_F is computed and both are released, so at most one d_out x d_in
product exists at a time. The meter is armed only for the ordinary loss forward of a measured step
(:class:`workers.compat.DecomposedGRPO`; never the decomposition's extra passes, and generation and evaluation
run without grad), and :class:`workers.profiler.GradientProfiler` reads it when it captures that step.

With gradient checkpointing the inputs are taken in the recomputation inside backward, not in the first
forward (keeping them would hold every layer's input alive, which checkpointing exists to free); G and X can
then arrive in either order, hence the pairing.

Simplified: TRL 1.16 computes the GRPO loss with one forward of the whole batch (one micro-batch per optimizer
step: workers/grpo_args.py). A module that ran twice in one measured step would need the cross terms of
||sum_k G_k^T X_k||; its value is NaN and :attr:`WeightGradientMeter.notes` says why, rather than a wrong number.
"""

from __future__ import annotations

import math
import time

import torch

from workers.compat import in_backward
from workers.model import LayerLayout


class WeightGradientMeter:
    """Per (layer, module), in the profiler's row order: ||dL/dW||_F of the frozen weight on every N-th step."""

    def __init__(self, peft_model: torch.nn.Module, layout: LayerLayout, every: int, checkpointing: bool = False):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        base = peft_model.get_base_model()
        self.every = every
        self.keys = [(layer, module) for layer in range(layout.num_layers) for module in layout.modules]
        self._checkpointing = checkpointing
        self._armed_step: int | None = None
        self._inputs: dict[int, torch.Tensor] = {}
        self._grads: dict[int, torch.Tensor] = {}
        self._squares: dict[int, torch.Tensor] = {}  # module index -> ||G^T X||^2 (on the device: one sync a step)
        self._repeated: set[int] = set()
        self.notes: list[str] = []  # one line per kind of problem (the run lists them among its warnings)
        self.seconds = 0.0  # time inside the meter's own computations (make bench reports the whole step's)
        self._handles = []
        for i, (layer, module) in enumerate(self.keys):
            wrapper = base.get_submodule(layout.path(layer, module))
            self._handles += [wrapper.register_forward_pre_hook(self._input_hook(i)),
                              wrapper.register_forward_hook(self._output_hook(i))]

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` is measured (every N-th)."""
        return step % self.every == 0

    def arm(self, step: int) -> None:
        """Measure the next forward and its backward as optimizer step ``step``."""
        self._clear()
        self._armed_step = step

    def collect(self, step: int) -> list[float] | None:
        """The norms of step ``step`` (NaN for a module without exactly one input/gradient pair), or None when the
        step was not measured; disarms the meter."""
        if self._armed_step != step:
            return None
        self._armed_step = None
        missing = [i for i in range(len(self.keys)) if i not in self._squares]
        values = (torch.stack([self._squares.get(i, torch.full((), math.nan, dtype=torch.float64,
                                                                   device=self._device()))
                               for i in range(len(self.keys))]).sqrt().cpu().tolist())
        for i in self._repeated:
            values[i] = math.nan
        if self._repeated:
            self._note(f"profile.weight_gradient_every: step {step}: {len(self._repeated)} module(s) ran more than "
                       "once in the loss's forward (e.g. a chunked forward); their weight_grad_norm is NaN")
        if missing:
            self._note(f"profile.weight_gradient_every: step {step}: {len(missing)} module(s) got no gradient "
                       f"(first: layer {self.keys[missing[0]][0]} {self.keys[missing[0]][1]}); their "
                       "weight_grad_norm is NaN")
        self._clear()
        return values

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _input_hook(self, index: int):
        # A pre-hook, not a forward hook: checkpointing's recomputation stops as soon as it has what backward
        # needs (torch's early stop), which can be inside this module's forward, before a forward hook would run.
        def hook(module, args):
            if self._armed_step is None or not torch.is_grad_enabled() or not args:
                return
            if not self._checkpointing or in_backward():
                self._arrive(index, inputs=args[0].detach())

        return hook

    def _output_hook(self, index: int):
        def hook(module, args, output):
            if self._armed_step is not None and isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: self._arrive(index, grad=grad.detach()))

        return hook

    def _arrive(self, index: int, inputs: torch.Tensor | None = None, grad: torch.Tensor | None = None) -> None:
        if self._armed_step is None:
            return
        slot, value = (self._inputs, inputs) if inputs is not None else (self._grads, grad)
        if index in slot or index in self._squares:
            self._repeated.add(index)
        slot[index] = value
        if index in self._inputs and index in self._grads:
            started = time.perf_counter()
            x, g = self._inputs.pop(index), self._grads.pop(index)
            with torch.no_grad():
                product = g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1]).to(g.dtype)  # d_out x d_in
                # fp32 for the norm (bf16 entries, fp32 accumulation); fp64 for the square kept until the step ends.
                self._squares[index] = torch.linalg.vector_norm(product, dtype=torch.float32).double().square()
            del product
            self.seconds += time.perf_counter() - started

    def _device(self) -> torch.device:
        return next(iter(self._squares.values())).device if self._squares else torch.device("cpu")

    def _note(self, text: str) -> None:
        kind = text.split(": ", 2)[-1]
        if not any(note.endswith(kind) for note in self.notes):
            self.notes.append(text)

    def _clear(self) -> None:
        self._inputs.clear()
        self._grads.clear()
        self._squares.clear()
        self._repeated.clear()
