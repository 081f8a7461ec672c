"""The schema of DIR/report/summary.json, as dataclasses: what the analysis computes, the findings and the report read.

A study has cells (one without axes); each cell's results are one :class:`CellSummary`. In summary.json a study
without axes has that cell's keys at the top level::

    landscape, strategies, normalized_control, sft, training, lora_scaling, rounds, decomposition, geometry,
    adalora, study_dir, paper_comparison, findings, warnings

and a study with axes has ``axes`` (the dotted keys), ``cells`` (one :class:`CellSummary` each, with its
``axes`` values and ``run_ids``), ``study_dir``, ``findings`` and ``warnings`` (:meth:`StudySummary.to_json`).
Every part is always present; a part the study did not measure (no SFT profile, no decomposition) is null.

Numbers are ``float | None``: the analysis may produce NaN or an infinity where a statistic is undefined, and
``cleaned`` (:mod:`dashboards.analysis.jsondata`) turns those into None before anything reads them, so findings
and report see None and summary.json stays strict JSON. :meth:`StudySummary.from_json` reads summary.json back
into these types (unknown keys are errors), so the schema is checked against every file it describes
(tests/test_report.py).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from dashboards.analysis.jsondata import cleaned, load, no_unknown_keys, shallow, to_json

__all__ = ["cleaned", "load", "shallow", "to_json"]  # the conversions, re-exported beside the types they convert

Num = float | None


# -- Table 1 ---------------------------------------------------------------------------------------------------
@dataclass
class PairedDifference:
    """A strategy against a reference (uniform, or the base model).

    The verdict is made over seeds (:mod:`dashboards.analysis.verdicts`): ``delta`` with its 95% interval over
    seeds, the Holm-adjusted ``p_value`` it uses and ``significant``; ``test`` names the test, or says why none
    could be made ("not testable with 1 seed"). The item-level figures (each item's correctness averaged over
    seeds, bootstrap interval and sign-flip p over items) are descriptive: they treat the runs as fixed.
    """

    delta: Num
    ci_low: Num
    ci_high: Num
    p_value: Num
    p_unadjusted: Num
    significant: bool = False
    test: str = ""
    n_seeds: int = 0
    df: int | None = None
    item_ci_low: Num = None
    item_ci_high: Num = None
    p_permutation: Num = None
    n_items: int = 0


@dataclass
class BaseDifference(PairedDifference):
    """The difference to the base model, with the exact McNemar test against it for each seed (descriptive)."""

    p_mcnemar_per_seed: dict[str, Num] = field(default_factory=dict)


@dataclass
class StrategyResult:
    """One strategy of one cell: Table 1's row and its landscape statistics (None: not applicable or no data)."""

    accuracy: Num = None  # pooled over the strategy's runs, with a Wilson interval
    ci_low: Num = None
    ci_high: Num = None
    n_eval: int = 0
    n_correct: int | None = None
    wald_half_width: Num = None  # what the paper's Table 1 prints
    format_rate: Num = None
    p_value_vs_uniform: Num = None  # exact McNemar on (seed, item) pairs, pooled
    mcnemar_b: int | None = None
    mcnemar_c: int | None = None
    n_paired: int | None = None
    paired_seeds: list[int] | None = None
    accuracy_delta_vs_uniform: Num = None
    item_accuracy: Num = None  # each item's correctness averaged over seeds, then over items
    accuracy_per_seed: dict[str, Num] = field(default_factory=dict)  # each run's accuracy on the shared items
    item_ci_low: Num = None
    item_ci_high: Num = None
    n_items: int | None = None
    vs_uniform: PairedDifference | None = None
    vs_base: BaseDifference | None = None
    mcnemar_per_seed: dict[str, Num] | None = None
    n_runs: int = 0
    seeds: list[int] = field(default_factory=list)
    trainable_params: int | None = None
    max_min_ratio: Num = None
    rank_shift_corr: Num = None
    rank_shift_corr_per_run: dict[str, Num] = field(default_factory=dict)
    max_min_ratio_per_seed: dict[str, Num] = field(default_factory=dict)
    max_min_ratio_seed_range: list[float] = field(default_factory=list)
    layer_share: list[float] = field(default_factory=list)


# -- landscapes ------------------------------------------------------------------------------------------------
@dataclass
class Bands:
    early: Num = None
    middle: Num = None
    late: Num = None


@dataclass
class SeedLandscape:
    max_min_ratio: Num
    top30_share: Num


@dataclass
class LayerLandscape:
    """The layer shares of one notion of importance, and their spread (a single module's control)."""

    max_min_ratio: Num = None
    top30_share: Num = None
    layer_share: list[float] = field(default_factory=list)


@dataclass
class SFTLandscape(LayerLandscape):
    """The SFT warm start's landscape, beside GRPO's."""

    band_share: Bands = field(default_factory=Bands)
    n_runs: int = 0


@dataclass
class ProfileLandscape:
    """The reference strategy's landscape under one notion of importance, seed-averaged, with each seed's."""

    max_min_ratio: Num = None
    top30_share: Num = None
    band_share: Bands = field(default_factory=Bands)
    layer_share: list[float] = field(default_factory=list)
    n_runs: int = 0
    per_seed: dict[str, SeedLandscape] = field(default_factory=dict)
    max_min_ratio_seed_range: list[float] = field(default_factory=list)
    top30_share_seed_range: list[float] = field(default_factory=list)


@dataclass
class Landscape(ProfileLandscape):
    """Figure 1: the uniform landscape of Eq. 2, its temporal stability and the module shares."""

    temporal_stability: Num = None
    temporal_stability_per_run: dict[str, Num] = field(default_factory=dict)
    module_share: dict[str, Num] = field(default_factory=dict)
    attention_share: Num = None
    mlp_share: Num = None


# -- the parameter-count controls ------------------------------------------------------------------------------
@dataclass
class ControlStrategy:
    max_min_ratio: Num = None
    rank_shift_corr: Num = None


@dataclass
class PerParameterControl:
    landscape: ProfileLandscape
    strategies: dict[str, ControlStrategy]


@dataclass
class SingleModuleControl:
    landscape: LayerLandscape
    strategies: dict[str, ControlStrategy]


@dataclass
class WeightGradientControl:
    """The landscape and amplification on ||dL/dW||_F of the frozen weights (profile.weight_gradient_every): a
    norm that does not depend on the LoRA rank or scaling, so an amplification left here is not mechanical."""

    landscape: ProfileLandscape
    strategies: dict[str, ControlStrategy]
    n_runs: int = 0  # GRPO runs with measured steps


@dataclass
class NormalizedControl:
    per_parameter: PerParameterControl | None = None
    single_module: dict[str, SingleModuleControl] = field(default_factory=dict)
    weight_gradient: WeightGradientControl | None = None


@dataclass
class Detectability:
    """What a cell can detect, from its own run-to-run variance (dashboards/analysis/verdicts.py)."""

    run_sd: Num  # pooled run-to-run SD of a run's accuracy on the shared items
    df: int
    n_seeds: int  # seeds per trained strategy (the fewest)
    n_items: int
    n_pooled_strategies: int
    family_size: int  # comparisons the verdicts are corrected over
    alpha: float  # Holm's strictest threshold (0.05 / family_size): what a single real effect must pass
    minimum_detectable_difference: Num  # vs uniform, two-sided, 80% power (None: beyond any)
    paper_gap: float  # the paper's uniform - proportional gap, 0.045
    seeds_for_paper_gap: int | None  # seeds per strategy to detect it at this variance (None: over 200)


@dataclass
class Replicate:
    """Another run of the same study (another machine, kernel setting or thread count) whose verdicts a report
    was checked against (``rankstudy analyze DIR --replicate OTHER``)."""

    label: str  # its directory's name
    study_dir: str
    cpu: dict[str, Any] | None = None  # run.json's cpu: the machine its numbers come from


@dataclass
class Robustness:
    """Each verdict the findings state, here and in every replicate; ``not_robust``: those that differ."""

    replicates: list[Replicate] = field(default_factory=list)
    verdicts: dict[str, dict[str, str | None]] = field(default_factory=dict)  # verdict -> {"here"/label: verdict}
    not_robust: list[str] = field(default_factory=list)


@dataclass
class TrainingResult:
    """Mean training reward and correctness reward over the last 10% of steps, averaged over runs."""

    final_reward: Num
    final_correctness: Num
    n_steps: int
    n_runs: int


# -- beyond the paper ------------------------------------------------------------------------------------------
@dataclass
class Round:
    round: int
    strategy: str
    max_min_ratio: Num
    max_min_ratio_per_seed: dict[str, Num]
    allocation_per_seed: dict[str, list[int]]
    allocation_max_min: Num
    accuracy: Num
    weight_gradient_max_min: Num = None  # the round's landscape on the frozen weights' gradient (where measured)


@dataclass
class Rounds:
    rounds: list[Round]


@dataclass
class MeanInterval:
    """Mean with a 95% t-interval over seeds (NaN interval for one seed)."""

    mean: Num
    ci_low: Num
    ci_high: Num
    n: int


@dataclass
class SeedDifferences(MeanInterval):
    per_seed: dict[str, Num] = field(default_factory=dict)


@dataclass
class DecompositionStrategy:
    components: list[str]
    n_runs: int
    cold_share: dict[str, Num]
    layer_share: dict[str, list[float]]
    decomposed_steps: list[int]
    cold_layers_per_seed: dict[str, list[int]]
    format_minus_correctness: SeedDifferences | None = None


@dataclass
class Decomposition:
    strategies: dict[str, DecompositionStrategy]
    cold_fraction: float


@dataclass
class GeometryRun:
    step: int
    update_vs_gradient_r: Num
    update_vs_rank_rho: Num
    effective_rank_fraction: Num
    principal_overlap: Num


@dataclass
class GeometryStrategy:
    update_vs_gradient_r: Num
    update_vs_rank_rho: Num
    effective_rank_fraction: Num
    principal_overlap: Num
    n_runs: int
    per_seed: dict[str, GeometryRun]


@dataclass
class Geometry:
    strategies: dict[str, GeometryStrategy]


@dataclass
class AdaLoraSeed:
    final_layer_ranks: list[int]
    spearman_vs_proportional: Num
    total_rank_first_step: int
    total_rank_last_step: int


@dataclass
class AdaLoraSummary:
    n_runs: int
    per_seed: dict[str, AdaLoraSeed]
    compared_with: str
    spearman_vs_proportional: Num
    cross_seed_spearman: Num


# -- a cell, a study -------------------------------------------------------------------------------------------
@dataclass
class CellSummary:
    """Everything the analysis says about one cell (the whole study without axes)."""

    axes: dict[str, Any] = field(default_factory=dict)  # the cell's axis values ({} without axes)
    run_ids: list[str] = field(default_factory=list)
    landscape: Landscape | None = None
    strategies: dict[str, StrategyResult] = field(default_factory=dict)
    normalized_control: NormalizedControl | None = None
    sft: SFTLandscape | None = None
    training: dict[str, TrainingResult] | None = None
    lora_scaling: str | list[str] | None = None
    rounds: Rounds | None = None
    decomposition: Decomposition | None = None
    geometry: Geometry | None = None
    adalora: AdaLoraSummary | None = None
    detectability: Detectability | None = None
    robustness: Robustness | None = None  # only with replicates
    findings: list[str] = field(default_factory=list)
    paper_comparison: list[str] = field(default_factory=list)


CELL_ONLY = ("axes", "run_ids")  # a study without axes does not write these at its top level


@dataclass
class RankSweep:
    """Accuracy against the uniform rank (a ``lora.rank`` axis) at one combination of the other axes' values."""

    strategy: str
    other_axes: dict[str, Any]
    ranks: list[int]
    mean: list[Num]  # over seeds, per rank
    ci_low: list[Num]
    ci_high: list[Num]
    n_seeds: list[int]
    f_statistic: Num  # one-way ANOVA over seeds across the ranks
    p_value: Num
    df_between: int | None
    df_within: int | None
    flat: bool | None  # no rank differs at alpha 0.05 (None: not testable)


@dataclass
class StudySummary:
    """summary.json: the study's cells (one without axes), its findings in words and its warnings."""

    study_dir: str
    cells: list[CellSummary]
    axes: list[str] = field(default_factory=list)  # the dotted axis keys ([] without axes)
    findings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rank_sweeps: list[RankSweep] = field(default_factory=list)  # with a lora.rank axis (analysis/rank_sweep.py)

    @property
    def single(self) -> CellSummary | None:
        """The one cell of a study without axes (None with axes)."""
        return None if self.axes else self.cells[0]

    def to_json(self) -> dict:
        if not self.axes:
            cell = to_json(self.cells[0])
            body = {k: v for k, v in cell.items() if k not in (*CELL_ONLY, "findings", "paper_comparison")}
            return {**body, "study_dir": self.study_dir, "paper_comparison": cell["paper_comparison"],
                    "findings": list(self.findings), "warnings": list(self.warnings)}
        return {"axes": list(self.axes), "cells": [to_json(c) for c in self.cells], "study_dir": self.study_dir,
                "findings": list(self.findings), "warnings": list(self.warnings),
                "rank_sweeps": [to_json(r) for r in self.rank_sweeps]}

    @classmethod
    def from_json(cls, data: dict) -> StudySummary:
        """summary.json back into the schema; a key the schema does not know is a ValueError naming it."""
        if "cells" in data:
            study = {k: data[k] for k in ("study_dir", "axes", "findings", "warnings", "rank_sweeps") if k in data}
            no_unknown_keys(data, {*study, "cells"}, "summary")
            return cls(cells=[load(CellSummary, c, f"cells[{i}]") for i, c in enumerate(data["cells"])],
                       **{k: load(typing.get_type_hints(cls)[k], v, k) for k, v in study.items()})
        top = ("study_dir", "warnings")
        cell = load(CellSummary, {k: v for k, v in data.items() if k not in top}, "summary")
        return cls(study_dir=data.get("study_dir", ""), cells=[cell], findings=list(cell.findings),
                   warnings=list(data.get("warnings", [])))
