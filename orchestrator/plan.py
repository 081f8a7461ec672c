"""Pure: a validated StudyConfig -> the list of runs (strategy x seed), with dependencies and resources.

No model is loaded and Ray is not imported: ``rankstudy plan CONFIG`` prints this grid, and the scheduler
executes it. A run's id is ``<strategy>-seed<seed>``: stable across invocations, so re-running a study finds
its earlier results by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config import StudyConfig

# Runs whose allocation needs the layer importance S(l) measured by a profile.
PROFILE_DEPENDENT = ("proportional", "reduced")


@dataclass(frozen=True)
class RunSpec:
    """One GRPO run of the grid."""

    strategy: str
    seed: int
    depends_on: str | None = None  # run_id whose profile gives the importance (profile_from: uniform)
    profile_path: str | None = None  # or a fixed profile file (profile_from: path)
    num_gpus: float = 1.0
    num_cpus: float = 1.0
    custom_resources: dict[str, float] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return run_id(self.strategy, self.seed)

    @property
    def actor_name(self) -> str:
        """The name shown in the Ray dashboard."""
        return f"grpo:{self.strategy}:seed{self.seed}"


def run_id(strategy: str, seed: int) -> str:
    """Stable run id.

    >>> run_id("uniform", 3)
    'uniform-seed3'
    """
    return f"{strategy}-seed{seed}"


def plan_runs(config: StudyConfig) -> list[RunSpec]:
    """Expand the grid: for each seed, every strategy; profile-dependent runs wait for their source."""
    a, res = config.allocation, config.resources
    runs = []
    for seed in config.grid.seeds:
        for strategy in config.grid.strategies:
            depends_on = profile_path = None
            if strategy in PROFILE_DEPENDENT:
                if a.profile_from == "uniform":
                    depends_on = run_id("uniform", seed)
                else:
                    profile_path = a.profile_from
            runs.append(
                RunSpec(
                    strategy=strategy,
                    seed=seed,
                    depends_on=depends_on,
                    profile_path=profile_path,
                    num_gpus=res.gpus_per_run,
                    num_cpus=res.cpus_per_run,
                    custom_resources=dict(res.custom),
                )
            )
    return runs


def format_plan(config: StudyConfig, runs: list[RunSpec]) -> str:
    """A human-readable table of the grid for ``rankstudy plan``."""
    lines = [
        f"study {config.name}: {len(runs)} runs ({len(config.grid.strategies)} strategies x "
        f"{len(config.grid.seeds)} seeds), model {config.model.label}, "
        f"{config.grpo.max_steps} GRPO steps each"
        + (f", after a {config.warm_start.steps}-step SFT warm start" if config.warm_start else ""),
        f"{'run_id':<24} {'strategy':<13} {'seed':>4}  {'depends on':<24} {'gpus':>4} {'cpus':>4}",
    ]
    for r in runs:
        dep = r.depends_on or (f"profile {r.profile_path}" if r.profile_path else "-")
        lines.append(f"{r.run_id:<24} {r.strategy:<13} {r.seed:>4}  {dep:<24} {r.num_gpus:>4g} {r.num_cpus:>4g}")
    return "\n".join(lines)
