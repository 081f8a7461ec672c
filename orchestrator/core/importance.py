"""Eq. 2, implemented once: the layer importance S(l) from gradient-norm profiles.

    S(l) = (1/T) sum_t sum_m || grad of module m of layer l at step t ||_2

Allocation (a profile-dependent run reading its source run's profile) and the analysis (every run of a
study, vectorised) both call :func:`layer_importance` on per (run, layer, module) sums and counts of the
profile's ``grad_norm``. One rule covers incomplete profiles:

- a step with a non-finite ``grad_norm`` in any module (kept and flagged in the profile's ``nonfinite`` column)
  is left out whole, so every module's mean is over the same steps (a module whose gradient went non-finite
  alone would otherwise be averaged over fewer steps than its neighbours, e.g. only the early, larger ones);
- each (layer, module) term is the mean over the steps where that module has a row, so a missing step
  neither inflates nor deflates the layer;
- S(l) is the sum of those means over the modules the run profiles; a layer lacking a module that the run
  has elsewhere gets NaN (its S(l) would not be comparable), and so does a run with no rows at all.

On a complete, finite profile this is exactly Eq. 2. The same rule sums the frozen weight's gradient norms
(``allocation.importance: weight_grad``: the ``weight_grad_norm`` column, over the steps that measured it) in
place of the LoRA gradient's. Callers report what was left out
(:class:`ProfileImportance` counts it; the analysis warns per run), and a profile that ends in non-finite steps
is a run that diverged (:func:`diverged_at`).

>>> sums, counts = np.array([[[2.0, 4.0], [6.0, 8.0]]]), np.array([[[2, 2], [2, 2]]])
>>> layer_importance(sums, counts).tolist()  # module means 1, 2 and 3, 4; summed over modules
[[3.0, 7.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from orchestrator.core.contract import IMPORTANCE_MEASURES, total_rows
from orchestrator.core.errors import StudyError

PROFILE_COLUMNS = ("run_id", "step", "layer", "module", "grad_norm")


def layer_importance(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """S(l) per run from (R, L, M) sums and counts of finite norms (the module doc's rule); shape (R, L)."""
    sums, counts = np.asarray(sums, dtype=float), np.asarray(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    module_present = (counts > 0).any(axis=1, keepdims=True)  # (R, 1, M)
    missing = ((counts == 0) & module_present).any(axis=2)  # (R, L)
    importance = np.where(module_present, np.nan_to_num(mean), 0.0).sum(axis=2)
    importance[missing | ~module_present.any(axis=2)] = np.nan
    return importance


def diverged_at(steps: np.ndarray, nonfinite_steps: np.ndarray) -> int | None:
    """The step from which a run's gradients stayed non-finite to its last profiled step (it diverged), or None.

    ``steps``: the run's profiled steps; ``nonfinite_steps``: whether each had a non-finite grad_norm.

    >>> diverged_at(np.array([1, 2, 3, 4]), np.array([False, True, True, True]))
    2
    >>> diverged_at(np.array([1, 2, 3, 4]), np.array([False, True, False, False])) is None  # recovered
    True
    """
    order = np.argsort(steps)
    bad = np.asarray(nonfinite_steps, dtype=bool)[order]
    if bad.size == 0 or not bad[-1]:
        return None
    good = np.flatnonzero(~bad)
    return int(np.asarray(steps)[order][good[-1] + 1 if good.size else 0])


def profile_divergence(table) -> tuple[int | None, int | None]:
    """(:func:`diverged_at`, last step) of one run's profile table (its ``total`` rows).

    >>> import pyarrow as pa
    >>> profile_divergence(pa.table({"step": [1, 1, 2, 2], "grad_norm": [1.0, 2.0, 3.0, float("nan")]}))
    (2, 2)
    """
    rows = total_rows(table)
    if rows.num_rows == 0:
        return None, None
    step = rows.column("step").to_numpy()
    norm = rows.column("grad_norm").to_numpy(zero_copy_only=False)
    steps = np.unique(step)
    return diverged_at(steps, np.isin(steps, np.unique(step[~np.isfinite(norm)]))), int(steps.max())


def sums_and_counts(layer: np.ndarray, module_codes: np.ndarray, grad_norm: np.ndarray, num_layers: int,
                    num_modules: int) -> tuple[np.ndarray, np.ndarray]:
    """(L, M) sums and counts of the finite norms of one run's rows (layer index, module code, norm)."""
    finite = np.isfinite(grad_norm)
    cell = layer[finite] * num_modules + module_codes[finite]
    size = num_layers * num_modules
    sums = np.bincount(cell, weights=grad_norm[finite], minlength=size).reshape(num_layers, num_modules)
    counts = np.bincount(cell, minlength=size).reshape(num_layers, num_modules)
    return sums, counts


@dataclass(frozen=True)
class ProfileImportance:
    """S(l) of one profiled run, and what the rule of this module left out."""

    values: list[float]
    nonfinite: int  # rows left out: those of the steps with a non-finite grad_norm in some module
    source: str  # the profile file ('' for rows given directly)
    diverged_at: int | None = None  # the step from which the gradients stayed non-finite (:func:`diverged_at`)

    def note(self) -> str | None:
        """A one-line warning when rows were left out, else None."""
        if not self.nonfinite:
            return None
        diverged = f"; the run diverged: non-finite from step {self.diverged_at} on" if self.diverged_at else ""
        return (f"{_where(self.source)}: {self.nonfinite} row(s) of steps with a non-finite grad_norm left out of "
                f"the layer importance (every module's mean is over the same, finite steps){diverged}")


def _where(source: str) -> str:
    return f"profile {source}" if source else "profile"


def importance_from_frame(frame, source: str = "", column: str = "grad_norm") -> ProfileImportance:
    """S(l) of ONE run's profile rows (a DataFrame with step, layer, module and ``column``, a norm).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"step": [1, 1, 2, 2], "layer": [0, 1, 0, 1], "module": ["q_proj"] * 4,
    ...                    "grad_norm": [1.0, 3.0, 3.0, 5.0]})
    >>> importance_from_frame(df).values
    [2.0, 4.0]
    """
    import pandas as pd

    where = _where(source)
    if frame.empty:
        raise StudyError(f"{where}: no rows, so no layer importance can be computed")
    layer = frame["layer"].to_numpy(dtype=np.int64)
    if layer.min() < 0:
        raise StudyError(f"{where}: negative layer index {int(layer.min())}")
    codes, modules = pd.factorize(frame["module"].astype(str))
    num_layers = int(layer.max()) + 1
    present = np.zeros(num_layers, dtype=bool)
    present[layer] = True
    if not present.all():
        missing = np.flatnonzero(~present).tolist()
        raise StudyError(f"{where}: layers {missing[:5]} have no rows; a profile must cover every layer")
    grad = frame[column].to_numpy(dtype=float)
    step = frame["step"].to_numpy(dtype=np.int64)
    bad_steps = np.unique(step[~np.isfinite(grad)])
    keep = ~np.isin(step, bad_steps)  # the steps where every module is finite
    all_steps = np.unique(step)
    diverged = diverged_at(all_steps, np.isin(all_steps, bad_steps))
    sums, counts = sums_and_counts(layer[keep], codes.astype(np.int64)[keep], grad[keep], num_layers, len(modules))
    values = layer_importance(sums[None], counts[None])[0]
    if not np.isfinite(values).all():
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        raise StudyError(f"{where}: layer(s) {bad[:5]} have no finite gradient norm for some module; "
                         "the importance S(l) is undefined there")
    return ProfileImportance(values=[float(v) for v in values], nonfinite=int((~keep).sum()), source=source,
                             diverged_at=diverged)


def importance_from_profile(path: str, run_id: str | None = None, measure: str = "lora_grad") -> ProfileImportance:
    """S(l) from a profile .parquet holding one run (or the rows of ``run_id``), summing the norms ``measure``
    names (:data:`orchestrator.core.contract.IMPORTANCE_MEASURES`)."""
    import pyarrow.compute as pc
    import pyarrow.lib
    import pyarrow.parquet as pq

    column = IMPORTANCE_MEASURES[measure]
    try:
        names = pq.read_schema(path).names
        optional = [c for c in ("component", column) if c in names and c not in PROFILE_COLUMNS]
        table = total_rows(pq.read_table(path, columns=[*PROFILE_COLUMNS, *optional]))
    except FileNotFoundError:
        raise StudyError(f"profile {path} does not exist") from None
    except (pyarrow.lib.ArrowInvalid, KeyError, OSError) as err:
        raise StudyError(f"profile {path}: not a profile parquet with columns {list(PROFILE_COLUMNS)} ({err})") from None
    if column != "grad_norm":  # measured on some steps only: null means not measured (a NaN is non-finite)
        if column not in table.column_names or table.column(column).null_count == table.num_rows:
            raise StudyError(f"profile {path}: no {column} values (importance {measure}): the run that wrote it did "
                             "not measure them; re-run it with profile.weight_gradient_every set, or use importance "
                             "lora_grad")
        table = table.filter(pc.is_valid(table.column(column)))
    df = table.to_pandas()
    runs = sorted(df["run_id"].unique())
    if run_id is not None:
        df = df[df["run_id"] == run_id]
        if df.empty:
            raise StudyError(f"profile {path}: no rows for run {run_id} (runs in file: {runs[:5]})")
    elif len(runs) > 1:
        raise StudyError(f"profile {path}: holds {len(runs)} runs ({runs[:5]}); pick one with --run-id")
    return importance_from_frame(df, source=str(path), column=column)
