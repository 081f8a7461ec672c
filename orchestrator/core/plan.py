"""The plan's types, and the pure step from a resolved study to the runs of its grid (cells x seeds x strategies).

:class:`ResolvedStudy` is what the driver's one resolve step produces (``orchestrator/resolve.py``): the study
config and its cells, each cell's config resolved once (paths, the task's defaults, checked data, feasible
strategies). Planning, study.yaml, the base-model preparation and the runs all read it.

No model is loaded and Ray is not imported: ``rankstudy plan CONFIG`` prints the grid (``--json``: one object
per run), and the scheduler executes it. Run ids come from :mod:`orchestrator.core.contract` and are stable
across invocations, so re-running a study finds its earlier results by name. A profile-dependent run (the
registry's ``needs_profile``) depends on its source strategy's run of the same seed and the same cell.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core import contract, gpu_packing, strategies
from orchestrator.core.axes import Cell, describe, typed_axes
from orchestrator.core.config import ModelConfig, StudyConfig
from orchestrator.core.errors import ConfigError
from orchestrator.core.roles import SEED_FREE


@dataclass(frozen=True)
class ResolvedStudy:
    """A study config and its cells, each resolved once; :meth:`cell_of` finds a run's cell."""

    config: StudyConfig
    cells: tuple[Cell, ...]

    def __post_init__(self):
        object.__setattr__(self, "_by_slug", {cell.slug: cell for cell in self.cells})

    def cell_of(self, spec: RunSpec) -> Cell:
        try:
            return self._by_slug[contract.cell_slug(spec.cell)]
        except KeyError:
            raise KeyError(f"{spec.run_id}: no cell {describe(spec.cell)} in this study") from None

    def config_for(self, spec: RunSpec) -> StudyConfig:
        """The config a run executes: its cell's."""
        return self.cell_of(spec).config

    def axes(self) -> dict[str, list]:
        """``grid.axes`` as the runs see them (each value typed as the config types it), in order."""
        return typed_axes(list(self.cells), self.config.grid.axes)

    def with_cell_configs(self, configs: dict[str, StudyConfig]) -> ResolvedStudy:
        """The same study whose cells (by slug) run other configs, e.g. the prepared base model's."""
        return dataclasses.replace(self, cells=tuple(Cell(c.axes, configs.get(c.slug, c.config)) for c in self.cells))


@dataclass(frozen=True)
class RunSpec:
    """One GRPO run of the grid."""

    strategy: str
    seed: int
    axes: tuple[tuple[str, Any], ...] = ()  # the run's cell, as (dotted key, value) pairs in axis order
    depends_on: str | None = None  # run_id whose profile gives the importance
    profile_path: str | None = None  # or a fixed profile file (allocation.profile_from: a path)
    num_gpus: float = 1.0
    num_cpus: float = 1.0
    custom_resources: dict[str, float] = field(default_factory=dict)

    @property
    def cell(self) -> dict[str, Any]:
        return dict(self.axes)

    @property
    def run_id(self) -> str:
        return contract.run_id(self.strategy, self.seed, self.cell)

    @property
    def actor_name(self) -> str:
        """The name shown in the Ray dashboard."""
        return contract.actor_name(self.strategy, self.seed, self.cell)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "strategy": self.strategy, "seed": self.seed, "axes": self.cell,
                "depends_on": self.depends_on, "profile_path": self.profile_path, "actor_name": self.actor_name,
                "resources": {"num_gpus": self.num_gpus, "num_cpus": self.num_cpus,
                              "custom": dict(self.custom_resources)}}


@dataclass(frozen=True)
class StudyPlan:
    """The resolved study and its runs; :meth:`config_for` gives the config a run executes."""

    study: ResolvedStudy
    runs: list[RunSpec]
    memory: list = field(default_factory=list)  # one gpu_packing.MemoryPlan per cell (runs on GPUs only)

    @property
    def config(self) -> StudyConfig:
        return self.study.config

    def config_for(self, spec: RunSpec) -> StudyConfig:
        return self.study.config_for(spec)


def make_plan(study: ResolvedStudy, card_gib: float | None = None,
              model_shape: Callable[[ModelConfig], dict | None] = gpu_packing.model_shape) -> StudyPlan:
    """Expand the grid: for each cell, each seed, every strategy; dependants wait for their source run.

    On GPUs each cell's memory plan is checked against the card (``card_gib``: the planning machine's, when
    known; ``resources.gpu_memory_gib`` wins) with the model's shape from ``model_shape``.
    """
    config = study.config
    res = config.resources
    runs = []
    for cell in study.cells:
        for index, grid_seed in enumerate(config.grid.seeds):
            for name in config.grid.strategies:
                spec = _run_spec(cell, name, grid_seed, index)
                if spec is not None:
                    runs.append(spec)
    ids = {run.run_id for run in runs}
    for run in runs:  # resolution makes this hold; a run must never wait for one that is not planned
        if run.depends_on is not None and run.depends_on not in ids:
            raise ConfigError(f"grid: {run.run_id} would wait for {run.depends_on}, which is not in the plan")
    memory = []
    if res.gpus_per_run > 0:
        for cell in study.cells:  # a packing that cannot fit the card stops here, before anything starts
            try:
                memory.append(gpu_packing.check_packing(cell.config, card_gib, model_shape(cell.config.model)))
            except ConfigError as err:
                raise ConfigError(f"grid.axes: cell {describe(cell.axes)}: {err}" if cell.axes else str(err)) from None
    return StudyPlan(study, runs, memory)


def _run_spec(cell: Cell, name: str, grid_seed: int, seed_index: int) -> RunSpec | None:
    """The run of strategy ``name`` for one seed of the grid in ``cell`` (None: a seed-free strategy's later seeds)."""
    strategy = strategies.get_strategy(name)
    seed = grid_seed
    if not strategy.per_seed:
        if seed_index:
            return None  # its result does not depend on the seed: once per cell
        seed = SEED_FREE
    source = strategy.profile_source(cell.config)
    depends_on = profile_path = None
    if source is not None and strategies.is_strategy(source):
        depends_on = contract.run_id(source, seed, cell.axes)
    elif source is not None:
        profile_path = source
    res = cell.config.resources
    return RunSpec(strategy=name, seed=seed, axes=tuple(cell.axes.items()), depends_on=depends_on,
                   profile_path=profile_path, num_gpus=res.gpus_per_run, num_cpus=res.cpus_per_run,
                   custom_resources=dict(res.custom))


def plan_json(plan: StudyPlan) -> str:
    """``rankstudy plan --json``: the grid as a JSON list, one object per run."""
    return json.dumps([spec.to_json() for spec in plan.runs], indent=1)


def format_plan(plan: StudyPlan) -> str:
    """A human-readable table of the grid for ``rankstudy plan``."""
    config, runs = plan.config, plan.runs
    cells = f" x {len(plan.study.cells)} cells" if config.grid.axes else ""
    once = [n for n in config.grid.strategies if not strategies.get_strategy(n).per_seed]
    cells += f"; {', '.join(once)} once per cell" if once and len(config.grid.seeds) > 1 else ""
    lines = [
        f"study {config.name}: {len(runs)} runs ({len(config.grid.strategies)} strategies x "
        f"{len(config.grid.seeds)} seeds{cells}), model {config.model.label}, "
        f"{config.grpo.max_steps} GRPO steps each"
        + (f", after a {config.warm_start.steps}-step SFT warm start" if config.warm_start else ""),
    ]
    if config.grid.axes:
        lines += [f"cell {i}: {cell.label()}" for i, cell in enumerate(plan.study.cells)]
    if plan.memory:
        shown = {gpu_packing.describe(m) for m in plan.memory}
        lines += [(f"cell {i}: " if len(shown) > 1 else "") + gpu_packing.describe(m)
                  for i, m in enumerate(plan.memory) if len(shown) > 1 or i == 0]
    width = max([24, *(len(r.run_id) + 1 for r in runs)])
    dep_width = max([24, *(len(r.depends_on) + 1 for r in runs if r.depends_on)])
    s_width = max([13, *(len(r.strategy) + 1 for r in runs)])
    lines.append(f"{'run_id':<{width}} {'strategy':<{s_width}} {'seed':>4}  {'depends on':<{dep_width}} "
                 f"{'gpus':>4} {'cpus':>4}")
    for r in runs:
        dep = r.depends_on or (f"profile {r.profile_path}" if r.profile_path else "-")
        lines.append(f"{r.run_id:<{width}} {r.strategy:<{s_width}} {r.seed:>4}  {dep:<{dep_width}} "
                     f"{r.num_gpus:>4g} {r.num_cpus:>4g}")
    return "\n".join(lines)
