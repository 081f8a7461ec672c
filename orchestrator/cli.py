"""``rankstudy``: run | plan | analyze | allocate.

Every problem that is the user's to fix is a :class:`~orchestrator.core.errors.StudyError` and comes out as one
line ``error: ...`` with exit status 2; heavy imports (torch, Ray) happen only inside the commands that need
them, so ``plan`` and ``allocate`` answer in about a second.

    rankstudy plan configs/paper.yaml [--json]
    rankstudy allocate --strategy proportional --importance 0.1,0.3,0.2 --rank 32
    rankstudy run configs/laptop.yaml --output runs/laptop --set grpo.max_steps=20
    rankstudy analyze runs/laptop
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from orchestrator.core.errors import StudyError


def _cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.core.plan import format_plan, plan_json
    from orchestrator.resolve import load_study, plan_study

    plan = plan_study(load_study(args.config, args.set))
    print(plan_json(plan) if args.json else format_plan(plan))
    return 0


def _parse_importance(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise StudyError(f"--importance: expected comma-separated numbers or a .parquet profile, got {text!r}") from None
    if not values:
        raise StudyError("--importance: no values given")
    return values


def _cmd_allocate(args: argparse.Namespace) -> int:
    from orchestrator.core.importance import importance_from_profile
    from orchestrator.core.strategies import allocate, get_strategy

    importance = None
    if args.importance is not None:
        if args.importance.endswith(".parquet") or Path(args.importance).is_file():
            found = importance_from_profile(args.importance, args.run_id, args.measure)
            if found.note():
                print(f"warning: {found.note()}", file=sys.stderr)
            importance = found.values
        else:
            importance = _parse_importance(args.importance)
    elif get_strategy(args.strategy, where="--strategy").needs_profile:
        raise StudyError(f"--strategy {args.strategy} needs --importance (values or a profile .parquet)")
    elif args.num_layers is None:
        raise StudyError(f"--strategy {args.strategy} needs --num-layers (or --importance to count layers)")
    ranks = allocate(
        args.strategy,
        importance=importance,
        num_layers=args.num_layers,
        rank=args.rank,
        r_min=args.r_min,
        r_max=args.r_max,
        multiple=args.multiple,
        reduced_fraction=args.reduced_fraction,
        random_range=(args.random_low, args.random_high),
        seed=args.seed,
    )
    print(json.dumps(ranks))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dashboards.report import write_report

    paths = _local_study(args.study_dir)
    replicates = [_local_study(r, must_exist=False).root for r in args.replicate]  # the report words a bad one
    html = write_report(paths.root, echo=lambda line: print(line, file=sys.stderr), replicates=replicates)
    paths.push(paths.report_dir)
    print(f"report: {paths.remote.uri_of('report/index.html') if paths.remote else html}")
    return 0


def _local_study(location: str, must_exist: bool = True):
    """A study directory to read: a local one as it is, one in object storage pulled into its staging copy
    (without checkpoints and adapters)."""
    from orchestrator.core.contract import StudyPaths
    from orchestrator.core.storage import is_uri

    paths = StudyPaths(location if is_uri(location) else Path(location).resolve())
    if paths.remote is not None and not paths.remote.pull_study():
        raise StudyError(f"{location}: no study there (the storage holds no file under it)")
    if must_exist and not paths.root.is_dir():
        raise StudyError(f"study directory {location} does not exist")
    return paths


def _cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.status import format_status, study_status

    status = study_status(args.study_dir, stale_after_s=args.stale_after)
    print(status.to_json() if args.json else format_status(status))
    return 0 if status.complete else 1


_terminated: list[int] = []  # the SIGTERM that reached the driver, if one did


def _raise_terminated(signum, frame) -> None:
    """SIGTERM (what Kubernetes sends a pod before killing it, and `ray stop`) unwinds like Ctrl-C: Ray passes a
    KeyboardInterrupt raised inside its calls (ray.wait) back up, and nothing else (another exception type there
    becomes a SystemError); the flag tells the two apart."""
    _terminated.append(signum)
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.study import run_study

    # By default SIGTERM ends Python at once, skipping every `finally`: the local Ray cluster and the study's
    # lease would outlive the driver. As an exception it unwinds like Ctrl-C: Ray shut down, lease released.
    signal.signal(signal.SIGTERM, _raise_terminated)
    return run_study(args.config, args.set, output=args.output, analyze=not args.no_analyze,
                     output_shared=args.output_shared)


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.core.config import AllocationConfig
    from orchestrator.core.contract import IMPORTANCE_MEASURES
    from orchestrator.core.heartbeat import STALE_AFTER_S
    from orchestrator.core.strategies import default_bounds, registered_names
    from orchestrator.core.typed_yaml import help_of

    parser = argparse.ArgumentParser(prog="rankstudy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="study YAML, e.g. configs/paper.yaml")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value by dotted key, e.g. --set grpo.max_steps=20 (repeatable)")

    p = sub.add_parser("run", help="run the strategy x seed grid on Ray and write Parquet results")
    add_config_args(p)
    p.add_argument("--output", help="study directory (default: runs/<name>): shared by all nodes, or a pyarrow.fs "
                   "URI (s3://bucket/path?endpoint_override=host:port, gs://...)")
    p.add_argument("--no-analyze", action="store_true", help="skip the report at the end")
    p.add_argument("--output-shared", action="store_true",
                   help="a local --output that every node mounts, even if a node does not see a new file at once "
                        "(skips the check that refuses a local output some node of the cluster does not see)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("plan", help="validate a config and print its run grid (loads no model)")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the grid as a JSON list, one object per run")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("analyze", help="write DIR/report/summary.json and DIR/report/index.html")
    p.add_argument("study_dir")
    p.add_argument("--replicate", action="append", default=[], metavar="DIR",
                   help="the same study run on another machine or kernel setting (repeatable): every verdict "
                        "it states otherwise is marked not robust")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("status", help="where each run of a study stands (exit 0 when every run completed)")
    p.add_argument("study_dir")
    p.add_argument("--json", action="store_true", help="print one JSON object: the runs, counts and the ETA")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                   help="a running run whose heartbeat is older than this is shown as stale (default: "
                        "%(default)s)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("allocate", help="print per-layer ranks as a JSON list")
    p.add_argument("--strategy", required=True, choices=registered_names(), help="a registered strategy")
    p.add_argument("--importance", help="comma-separated S(l) per layer, or a profile .parquet")
    p.add_argument("--run-id", help="with a profile holding several runs: the run to use")
    p.add_argument("--measure", choices=list(IMPORTANCE_MEASURES), default=AllocationConfig().importance,
                   help=f"with a profile: allocation.importance: {help_of(AllocationConfig, 'importance')}")
    p.add_argument("--num-layers", type=int, help="layer count for uniform/random without --importance")
    p.add_argument("--rank", type=int, required=True, help="uniform rank; budget = layers x rank")
    bounds = default_bounds()  # allocation.*'s defaults (orchestrator/core/config.py), one place
    for name in ("r_min", "r_max", "multiple", "reduced_fraction"):
        p.add_argument(f"--{name.replace('_', '-')}", type=type(bounds[name]), default=bounds[name],
                       help=f"allocation.{name}: {help_of(AllocationConfig, name)}")
    low, high = bounds["random_range"]
    p.add_argument("--random-low", type=int, default=low, help="allocation.random_range[0]")
    p.add_argument("--random-high", type=int, default=high, help="allocation.random_range[1]")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_allocate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the driver's own writes (study.yaml, the lease, the report) on a full disk
        from pathlib import Path

        from orchestrator.core.attempts import disk_full_error, is_disk_full

        if not is_disk_full(err):
            raise
        print(f"error: {disk_full_error(err, Path(err.filename).parent if err.filename else Path.cwd())}",
              file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `rankstudy plan ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        from orchestrator import head_watch  # no Ray import

        if head_watch.lost():
            print(f"error: {head_watch.lost()}", file=sys.stderr)
            return head_watch.EXIT_STATUS
        what, status = ("terminated (SIGTERM)", 143) if _terminated else ("interrupted", 130)
        print(f"{what}; results written so far are kept, re-run the same command to resume", file=sys.stderr)
        return status


if __name__ == "__main__":
    raise SystemExit(main())
