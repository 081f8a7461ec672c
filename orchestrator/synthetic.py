"""Write a synthetic study directory that follows the output contract, with a known, planted effect.

Used by the analysis tests and the analysis benchmark: they need study directories of any size whose true
answers are known, without training anything. ``write_synthetic_study(DIR, SyntheticSpec(...))`` writes

- ``DIR/study.yaml`` and ``DIR/runs/<run_id>/run.json`` (status, allocation, trainable_params, lora_params),
- ``DIR/profiles/<run_id>.parquet`` (one row per step x layer x module; plus ``sft-seed<first>.parquet``
  with strategy ``sft`` when ``sft_steps > 0``),
- ``DIR/metrics/<run_id>.parquet`` and ``DIR/eval/<run_id>.parquet``.

The planted effect (what the analysis must recover):

- Landscape: layer importance ``base(l)`` is a smooth bump over depth, peaking in the middle, scaled so
  that max/min is exactly ``landscape_ratio`` (2.17 by default, as in the paper); SFT profiles use
  ``sft_ratio`` (steeper, as the SFT literature reports). Module weights follow the paper's module shares.
- Amplification: a run's gradient norm scales as ``(rank(l) / rank) ** amplification``, so non-uniform
  allocations widen the spread toward their ranks (per-parameter normalised norms keep the exponent
  ``amplification - 0.5``, so the control still sees a weaker effect).
- Accuracy: each strategy's items are correct with probability ``accuracy[strategy]``, correlated across
  strategies of the same seed (shared item difficulty), so paired McNemar tests behave like real data.
- Training reward curves are the same for every strategy (the paper's "identical reward curves").

Everything is deterministic from ``spec.seed``. Simplified: gradient norms are i.i.d. log-normal around
the planted mean (no autocorrelation over steps), and module shapes are those of Qwen2.5-1.5B by default.

>>> spec = SyntheticSpec(strategies=("uniform",), seeds=(0,), steps=2, layers=3, modules=("q_proj",), eval_items=4)
>>> rows_per_profile(spec)
6
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from orchestrator.allocation import STRATEGIES, allocate
from orchestrator.results import atomic_write_table

PAPER_MODULE_SHARE = {  # paper section 3.2: attention 52.9%, up_proj 21.4%, q_proj 9.5%
    "q_proj": 0.095, "k_proj": 0.120, "v_proj": 0.150, "o_proj": 0.164,
    "gate_proj": 0.133, "up_proj": 0.214, "down_proj": 0.124,
}
PAPER_ACCURACY = {"uniform": 0.745, "proportional": 0.700, "random": 0.675, "reduced": 0.650}


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and planted effect of a synthetic study (defaults: a small, test-sized study)."""

    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 20
    layers: int = 6
    modules: tuple[str, ...] = tuple(PAPER_MODULE_SHARE)
    eval_items: int = 50
    rank: int = 32
    seed: int = 0
    landscape_ratio: float = 2.17
    sft_ratio: float = 12.0
    amplification: float = 0.8
    step_noise: float = 0.3  # sigma of the log-normal noise of each grad norm around its planted mean
    accuracy: dict[str, float] = field(default_factory=lambda: dict(PAPER_ACCURACY))
    sft_steps: int = 0
    hidden: int = 1536
    intermediate: int = 8960
    kv_dim: int = 256


def rows_per_profile(spec: SyntheticSpec) -> int:
    """Profile rows of one run: steps x layers x modules."""
    return spec.steps * spec.layers * len(spec.modules)


def module_shape(module: str, spec: SyntheticSpec) -> tuple[int, int]:
    """(in, out) features of a projection, as in a Qwen2-style decoder layer."""
    h, i, kv = spec.hidden, spec.intermediate, spec.kv_dim
    return {"k_proj": (h, kv), "v_proj": (h, kv), "gate_proj": (h, i), "up_proj": (h, i),
            "down_proj": (i, h)}.get(module, (h, h))


def planted_landscape(layers: int, ratio: float) -> np.ndarray:
    """Per-layer importance: a bump peaking at 55% depth, min 1 and max exactly ``ratio``.

    >>> w = planted_landscape(28, 2.17)
    >>> round(float(w.max() / w.min()), 2), int(w.argmax())
    (2.17, 15)
    """
    x = np.linspace(0.0, 1.0, layers)
    bump = np.exp(-(((x - 0.55) / 0.3) ** 2))
    if layers > 1:
        bump = (bump - bump.min()) / (bump.max() - bump.min())
    return 1.0 + (ratio - 1.0) * bump


def run_allocation(strategy: str, seed: int, importance: np.ndarray, spec: SyntheticSpec) -> list[int]:
    """The run's per-layer ranks via the real allocator (unknown strategies get uniform ranks)."""
    if strategy not in STRATEGIES:
        return [spec.rank] * spec.layers
    return allocate(strategy, rank=spec.rank, r_min=4, r_max=64, multiple=4, importance=importance.tolist(),
                    num_layers=spec.layers, seed=seed)


def _write_parquet(table: pa.Table, path: Path) -> None:
    atomic_write_table(path, table)  # like the run stage: a crash never leaves a truncated file


def _profile_table(run_id: str, strategy: str, seed: int, ranks: np.ndarray, layer_weight: np.ndarray,
                   steps: int, spec: SyntheticSpec, rng: np.random.Generator) -> pa.Table:
    n_layers, n_mod = len(ranks), len(spec.modules)
    mod_weight = np.array([PAPER_MODULE_SHARE.get(m, 1.0 / n_mod) for m in spec.modules])
    mean = layer_weight[:, None] * mod_weight[None, :] * (ranks[:, None] / spec.rank) ** spec.amplification
    decay = 0.5 + np.exp(-3.0 * np.arange(1, steps + 1) / steps)  # norms shrink as training settles
    noise = rng.lognormal(-0.5 * spec.step_noise**2, spec.step_noise, size=(steps, n_layers, n_mod))
    grad = (decay[:, None, None] * mean[None] * noise).ravel()
    n = grad.size
    step = np.repeat(np.arange(1, steps + 1, dtype=np.int64), n_layers * n_mod)
    layer = np.tile(np.repeat(np.arange(n_layers, dtype=np.int64), n_mod), steps)
    module_idx = np.tile(np.arange(n_mod, dtype=np.int32), steps * n_layers)

    def strings(codes: np.ndarray, values: list[str]) -> pa.Array:
        # Plain string columns, as the run stage writes them (Parquet dictionary-encodes them on disk).
        return pa.DictionaryArray.from_arrays(codes, values).cast(pa.string())

    zeros = np.zeros(n, dtype=np.int32)
    # Column types as workers/profiler.py's PROFILE_SCHEMA (not imported: that module imports torch).
    return pa.table({
        "run_id": strings(zeros, [run_id]),
        "strategy": strings(zeros, [strategy]),
        "seed": np.full(n, seed, dtype=np.int64),
        "step": step,
        "layer": layer,
        "module": strings(module_idx, list(spec.modules)),
        "rank": ranks.astype(np.int64)[layer],
        "grad_norm": grad,
        "nonfinite": np.zeros(n, dtype=bool),
    })


def _metrics_table(run_id: str, strategy: str, seed: int, spec: SyntheticSpec,
                   rng: np.random.Generator) -> pa.Table:
    t = np.arange(1, spec.steps + 1)
    progress = 1.0 - np.exp(-3.0 * t / spec.steps)
    correctness = np.clip(0.3 + 0.45 * progress + rng.normal(0, 0.1, t.size), 0, 1)
    fmt = np.clip(0.6 + 0.4 * progress + rng.normal(0, 0.05, t.size), 0, 1)
    return pa.table({
        "run_id": [run_id] * t.size, "strategy": [strategy] * t.size, "seed": np.full(t.size, seed),
        "step": t, "reward": correctness + fmt, "reward_format": fmt, "reward_correctness": correctness,
        "reward_std": 0.4 * (1 - 0.5 * progress), "kl": 0.02 * progress, "loss": rng.normal(0, 0.01, t.size),
        "step_time_s": rng.uniform(9.0, 11.0, t.size), "frac_reward_zero_std": 0.2 * progress,
    })


def _eval_table(run_id: str, strategy: str, seed: int, shared_u: np.ndarray, spec: SyntheticSpec,
                rng: np.random.Generator) -> pa.Table:
    n = spec.eval_items
    # Mostly the seed's shared item difficulty, partly independent: correlated pairs, as in real evals.
    u = np.where(rng.random(n) < 0.75, shared_u, rng.random(n))
    correct = u < spec.accuracy.get(strategy, 0.5)
    target = (np.arange(n) * 7 + 3).astype(str)
    prediction = np.where(correct, target, (np.arange(n) * 7 + 4).astype(str))
    completion = [f"<think>\nItem {i}: synthetic reasoning.\n</think>\n<answer>{p}</answer>" for i, p in
                  enumerate(prediction)]
    return pa.table({
        "run_id": [run_id] * n, "strategy": [strategy] * n, "seed": np.full(n, seed), "item": np.arange(n),
        "correct": correct, "format_ok": correct | (rng.random(n) < 0.9), "prediction": prediction,
        "target": target, "completion": completion,
    })


def write_synthetic_study(study_dir: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the study directory for ``spec`` (run by run, so memory stays at one run) and return it."""
    study_dir = Path(study_dir)
    (study_dir / "runs").mkdir(parents=True, exist_ok=True)
    spec_dict = asdict(spec)
    (study_dir / "study.yaml").write_text(
        "# synthetic study written by orchestrator.synthetic (planted effect, no training)\n"
        f"name: synthetic-{spec.layers}l-{spec.steps}s\nsynthetic: {json.dumps(spec_dict)}\n"
    )
    base = planted_landscape(spec.layers, spec.landscape_ratio)
    for seed in spec.seeds:
        rng_seed = np.random.default_rng([spec.seed, seed])
        # Per-seed layer variation (a few percent): the seed spread shown in Figure 1.
        layer_weight = base * rng_seed.lognormal(0.0, 0.03, spec.layers)
        shared_u = rng_seed.random(spec.eval_items)
        for s_idx, strategy in enumerate(spec.strategies):
            rng = np.random.default_rng([spec.seed, seed, s_idx])
            run_id = f"{strategy}-seed{seed}"
            ranks = np.array(run_allocation(strategy, seed, layer_weight, spec))
            lora_params = {m: [int(r * sum(module_shape(m, spec))) for r in ranks] for m in spec.modules}
            run = {"run_id": run_id, "strategy": strategy, "seed": seed, "status": "completed",
                   "allocation": ranks.tolist(), "trainable_params": int(sum(map(sum, lora_params.values()))),
                   "lora_params": lora_params, "spec": {"synthetic": True}, "timings": {}, "error": None}
            run_dir = study_dir / "runs" / run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "run.json").write_text(json.dumps(run, indent=1))
            _write_parquet(_profile_table(run_id, strategy, seed, ranks, layer_weight, spec.steps, spec, rng),
                           study_dir / "profiles" / f"{run_id}.parquet")
            _write_parquet(_metrics_table(run_id, strategy, seed, spec, rng),
                           study_dir / "metrics" / f"{run_id}.parquet")
            _write_parquet(_eval_table(run_id, strategy, seed, shared_u, spec, rng),
                           study_dir / "eval" / f"{run_id}.parquet")
    if spec.sft_steps > 0:
        seed = spec.seeds[0]
        rng = np.random.default_rng([spec.seed, seed, len(spec.strategies)])
        sft_weight = planted_landscape(spec.layers, spec.sft_ratio)
        _write_parquet(_profile_table(f"sft-seed{seed}", "sft", seed, np.full(spec.layers, spec.rank), sft_weight,
                                      spec.sft_steps, spec, rng), study_dir / "profiles" / f"sft-seed{seed}.parquet")
    return study_dir


def expected_layer_share(spec: SyntheticSpec) -> np.ndarray:
    """The planted uniform layer share (before per-seed variation and noise)."""
    base = planted_landscape(spec.layers, spec.landscape_ratio)
    return base / base.sum()


if __name__ == "__main__":  # python -m orchestrator.synthetic DIR: a small study to look at
    import sys

    print(write_synthetic_study(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic", SyntheticSpec(sft_steps=20)))
