"""The one resolve step of every invocation: a loaded config -> the resolved study that everything else reads.

``load_config`` (orchestrator/core/config.py) checks each value statically. Resolving asks what only the running
machine and the registries can answer, once per invocation, before any model or Ray starts:

- the task (``workers/tasks/``): its default system prompt and rewards filled in, ``data.options`` checked with
  every default, the data sources it needs, and every record of a local data file checked (one line naming
  file and line for a bad record);
- the model: a local directory exists, a ``model.build`` family is one the offline builder knows;
- the strategies (``orchestrator/core/strategies/``): every name is registered, each strategy's feasibility
  check, and the profile sources of profile-dependent strategies (in the grid, acyclic, writing a profile);
- local paths made absolute, so workers find them whatever their working directory;
- the cells of ``grid.axes``, each expanded once (orchestrator/core/axes.py) and resolved as above, errors
  naming the cell.

The result, a :class:`~orchestrator.core.plan.ResolvedStudy`, is what ``rankstudy plan`` prints, what
study.yaml records, what the base-model preparation builds and what each run executes. :func:`plan_study` adds
what planning reads from this machine (its GPU, the HF cache's model shapes).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

from orchestrator.core import gpu_packing, strategies
from orchestrator.core.axes import describe, expand_cells
from orchestrator.core.config import DataConfig, StudyConfig, load_config
from orchestrator.core.errors import ConfigError, StudyError
from orchestrator.core.plan import ResolvedStudy, StudyPlan, make_plan
from orchestrator.core.sources import is_local_path
from orchestrator.core.storage import is_uri
from orchestrator.core.tracking import check_installed
from orchestrator.core.typed_yaml import from_dict, to_dict
from workers.families import FAMILIES
from workers.tasks import get_task


def load_study(path, overrides: list[str] | tuple[str, ...] = ()) -> ResolvedStudy:
    """Read a study YAML with its ``--set`` overrides and resolve it (the module docstring's one step)."""
    return resolve(load_config(path, overrides))


def resolve(config: StudyConfig) -> ResolvedStudy:
    """The resolved study of a loaded config: the config itself and each of its cells, resolved once."""
    resolved = resolve_config(config)
    if not config.grid.axes:
        cells = expand_cells(resolved)
    else:
        cells = []
        for cell in expand_cells(_task_defaults_unset(config)):  # each cell resolves its own task's defaults
            try:
                cells.append(dataclasses.replace(cell, config=resolve_config(cell.config)))
            except ConfigError as err:
                raise ConfigError(f"grid.axes: cell {describe(cell.axes)}: {err}") from None
    return ResolvedStudy(resolved, tuple(cells))


def _task_defaults_unset(config: StudyConfig) -> StudyConfig:
    """With a ``data.task`` axis, a system prompt or reward list that merely restates the config's own task's
    defaults (paper.yaml writes its rewards out) is left to each cell's task: set back to null."""
    if "data.task" not in config.grid.axes:
        return config
    task = get_task(config.data.task)
    data = config.data
    if data.system_prompt == task.system_prompt:
        data = dataclasses.replace(data, system_prompt=None)
    rewards = None if config.rewards is not None and tuple(config.rewards) == tuple(task.rewards) else config.rewards
    return dataclasses.replace(config, data=data, rewards=rewards)


def resolve_config(config: StudyConfig) -> StudyConfig:
    """One config resolved: model, data, rewards, strategies and profile sources checked, paths absolute."""
    config = dataclasses.replace(config, model=_resolve_model(config), data=_resolve_data(config),
                                 rewards=_resolve_rewards(config), allocation=_resolve_allocation(config),
                                 cache_dir=config.cache_dir if is_uri(config.cache_dir) else _absolute(config.cache_dir,
                                                                                                       always=True),
                                 tracking=_resolve_tracking(config))
    chosen = [strategies.get_strategy(name, where=f"grid.strategies[{i}]")
              for i, name in enumerate(config.grid.strategies)]
    for strategy in chosen:
        strategy.check(config)
    _check_profile_sources(config, chosen)
    return config


def normalise_recorded(config_dict: dict) -> dict:
    """A config recorded in study.yaml as this version resolves it (new settings at their defaults, the task's
    defaults filled in), or as it is when it no longer resolves (a moved data file): orchestrator.core.study_yaml."""
    try:
        return to_dict(resolve_config(from_dict(StudyConfig, config_dict)))
    except StudyError:
        return config_dict


def task_descriptions(study: ResolvedStudy) -> dict[str, str]:
    """Each task the study's cells use, with its one-line description (study.yaml records them for the report)."""
    names = [study.config.data.task, *(cell.config.data.task for cell in study.cells)]
    return {name: get_task(name).description for name in dict.fromkeys(names)}


def _absolute(source: str | None, always: bool = False) -> str | None:
    if source is None or not (always or is_local_path(source)):
        return source
    return str(Path(source).expanduser().resolve())


def _resolve_tracking(config: StudyConfig):
    """The tracker's package must be importable here (one line naming the extra); a local uri made absolute."""
    tracking = config.tracking
    check_installed(tracking)
    if tracking.uri is not None and "://" not in tracking.uri and not tracking.uri.startswith("file:"):
        tracking = dataclasses.replace(tracking, uri=_absolute(tracking.uri, always=True))
    return tracking


def _resolve_model(config: StudyConfig):
    model = config.model
    if model.build is not None and model.build.family not in FAMILIES:
        raise ConfigError(f"model.build.family: must be one of {', '.join(FAMILIES)}, got {model.build.family!r}")
    if model.name_or_path is None:
        return model
    if model.name_or_path.startswith(("/", "./", "../")) and not Path(model.name_or_path).is_dir():
        raise ConfigError(f"model.name_or_path: local model directory {model.name_or_path} does not exist")
    return dataclasses.replace(model, name_or_path=_absolute(model.name_or_path))


def _resolve_data(config: StudyConfig):
    try:
        return resolve_data(config.data)
    except ConfigError as err:  # named within the section, but for the task, which the registry names in full
        raise ConfigError(str(err) if str(err).startswith("data.") else f"data.{err}") from None


def resolve_data(data: DataConfig) -> DataConfig:
    """The data section resolved by its task: options with every default, the sources the task needs (local
    files absolute), the task's system prompt when none is set, every record of a local file checked. Errors
    name the key within the section (``options.max_steps: ...``), as the section's own checks do."""
    task = get_task(data.task)
    options = task.resolve_options(data.options)
    for key in ("train", "test"):
        source = getattr(data, key)
        if task.generated and source is not None:
            raise ConfigError(f"{key}: task {task.name!r} generates its data (data.options); remove data.{key}")
        if not task.generated and source is None:
            raise ConfigError(f"{key}: required by task {task.name!r}: a hub id or a local .jsonl")
        if source is not None and is_local_path(source) and not Path(source).expanduser().is_file():
            raise ConfigError(f"{key}: data file {source} does not exist (relative paths are resolved "
                              f"against the current directory {Path.cwd()})")
    # The prompt the runs use is recorded in study.yaml, so the task's default is written into the config.
    data = dataclasses.replace(data, options=options, system_prompt=data.system_prompt or task.system_prompt,
                               train=_absolute(data.train), test=_absolute(data.test))
    for key in ("train", "test"):
        try:
            task.check(data, key)  # every record, before any model loads (cached per file version / options)
        except ConfigError:
            raise  # already names its key (options)
        except StudyError as err:
            raise ConfigError(f"{key}: {err}") from None
    return data


def _resolve_rewards(config: StudyConfig) -> tuple[str, ...]:
    task = get_task(config.data.task)
    rewards = tuple(task.rewards) if config.rewards is None else config.rewards
    task.reward_functions(rewards)  # a name the task lacks is a ConfigError naming it
    return rewards


def _resolve_allocation(config: StudyConfig):
    allocation = config.allocation
    if strategies.is_strategy(allocation.profile_from):
        return allocation
    if not Path(allocation.profile_from).expanduser().is_file():
        raise ConfigError(f"allocation.profile_from: must be a registered strategy (e.g. `uniform`) or an existing "
                          f"profile .parquet, got {allocation.profile_from!r}")
    return dataclasses.replace(allocation, profile_from=_absolute(allocation.profile_from, always=True))


def _check_profile_sources(config: StudyConfig, chosen: list) -> None:
    """Profile-dependent strategies need their source strategy in the grid, and no cycle among them."""
    sources = {s.name: s.profile_source(config) for s in chosen}
    needing = sorted(name for name, src in sources.items() if src is not None)
    for name in needing:
        source = sources[name]
        if not strategies.is_strategy(source):
            continue  # a profile file, checked with allocation.profile_from
        provider = strategies.get_strategy(source)
        if not provider.trains or not provider.per_seed:
            raise ConfigError(f"allocation.profile_from: {source} runs write no gradient profile per seed; take "
                              "the importance from a trained strategy such as uniform, or from a .parquet")
        if source not in config.grid.strategies:
            via = (f"(allocation.profile_from: {source}); add `{source}` or set profile_from to a .parquet"
                   if source == config.allocation.profile_from else
                   f"(the previous re-profiling round); add `{source}`")
            raise ConfigError(f"grid.strategies: {[n for n in needing if sources[n] == source]} need layer "
                              f"importance from the {source} run {via}")
        seen, current = [name], source
        while current is not None and current in sources:
            if current in seen:
                raise ConfigError(f"allocation.profile_from: the profile sources form a cycle "
                                  f"({' -> '.join([*seen, current])}); take the importance from a run that "
                                  "does not need a profile")
            seen.append(current)
            current = sources.get(current)


# -- what planning reads from this machine ------------------------------------------------------------------
def plan_study(study: ResolvedStudy) -> StudyPlan:
    """The study's plan, with each cell's memory plan checked against this machine's GPU (if it has one)."""
    return make_plan(study, card_gib=detected_card_gib(), model_shape=cached_model_shape)


def detected_card_gib() -> float | None:
    """Memory of the planning machine's first CUDA device, if it has one (torch only when CUDA is there)."""
    # No NVIDIA device node: no CUDA, and no need to import torch (plan stays fast on CPU machines).
    if not Path("/dev/nvidia0").exists() or importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.get_device_properties(0).total_memory / gpu_packing.GIB if torch.cuda.is_available() else None


def cached_model_shape(model) -> dict | None:
    """The model's shape as :func:`orchestrator.core.gpu_packing.model_shape` finds it, but for a hub id the
    config.json in the HF cache first (then the shapes the core knows)."""
    local = model.build is not None or (Path(model.name_or_path).expanduser() / "config.json").is_file()
    if not local:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model.name_or_path, "config.json", revision=model.revision)
            if isinstance(cached, str) and Path(cached).is_file():
                return json.loads(Path(cached).read_text())
        except Exception:  # noqa: BLE001 - not a hub id, no cache: fall back to the known shapes
            pass
    return gpu_packing.model_shape(model)
