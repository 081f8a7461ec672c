"""What a finished run adds to its run.json besides its results: the optional measurements' costs and problems,
the ranks a strategy ended with, divergence and missing profile rows (each one function on the record)."""

from __future__ import annotations

from orchestrator.core.contract import RunRecord
from orchestrator.core.importance import profile_divergence

# Timings of the optional measurements: each is inside train_s, so none is added into total_s.
MEASUREMENT_TIMINGS = ("decompose_s", "geometry_s", "weight_gradient_s")


def note_measurements(record: RunRecord, timings: dict[str, float], decomposer=None, geometry=None,
                      weight_meter=None) -> None:
    """Each optional measurement's own seconds (make bench reports them as ratios) and what it left out."""
    if decomposer is not None:
        timings["decompose_s"] = sum(decomposer.seconds.values())
        dropped = decomposer.dropped
        if dropped:
            first = min(dropped)
            record.warnings.append(f"profile.decompose_every: the component rows of {len(dropped)} decomposed "
                                   f"step(s) {sorted(dropped)[:5]} were left out; step {first}: {dropped[first]}")
    if geometry is not None:
        timings["geometry_s"] = geometry.seconds
    if weight_meter is not None:
        timings["weight_gradient_s"] = weight_meter.seconds
        record.warnings.extend(weight_meter.notes)
    timings["total_s"] = sum(v for k, v in timings.items() if k.endswith("_s") and k != "total_s"
                             and k not in MEASUREMENT_TIMINGS)


def note_profile(record: RunRecord, profiler) -> None:
    """Steps profiled, and rows whose parameter had no gradient (NaN, flagged, never 0)."""
    record.steps = len(profiler.steps) if profiler is not None else 0
    if profiler is not None and profiler.missing_rows:
        rows = len(profiler.steps) * len(profiler.keys)
        record.warnings.append(f"{profiler.missing_rows} of {rows} profile rows had a parameter without a gradient; "
                               "recorded as NaN (nonfinite), not 0")


def note_divergence(record: RunRecord, profile) -> None:
    """A run whose gradient norms are non-finite from some step to its end diverged: run.json says from when."""
    record.diverged_at_step, last = profile_divergence(profile)
    if record.diverged_at_step is not None:
        record.warnings.append(f"diverged: the gradient norms are non-finite from step {record.diverged_at_step} "
                               f"to the last step {last}")


def note_final_ranks(record: RunRecord, initial: list[int], ranks: dict[tuple[int, str], int], layout) -> None:
    """Ranks that changed while training: the start, the end per module, and per layer their mean."""
    record.initial_allocation = list(initial)
    record.module_ranks = {m: [ranks[(layer, m)] for layer in range(layout.num_layers)] for m in layout.modules}
    record.allocation = [round(sum(ranks[(layer, m)] for m in layout.modules) / len(layout.modules))
                         for layer in range(layout.num_layers)]
