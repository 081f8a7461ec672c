"""The `rankstudy` CLI: allocate prints only JSON; plan prints the grid; bad input is one line, exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def rankstudy(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True)


def test_console_script_is_installed_and_matches_module():
    script = Path(sys.executable).parent / "rankstudy"
    out = subprocess.run([str(script), "allocate", "--strategy", "uniform", "--num-layers", "3", "--rank", "8"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and json.loads(out.stdout) == [8, 8, 8]


def test_allocate_prints_exactly_a_json_list():
    out = rankstudy("allocate", "--strategy", "proportional", "--importance", "0.1,0.3,0.2,0.4", "--rank", "32")
    assert out.returncode == 0, out.stderr
    ranks = json.loads(out.stdout)  # the whole stdout is one JSON value
    assert sum(ranks) == 128
    assert ranks[3] >= ranks[1] >= ranks[2] >= ranks[0]


def test_allocate_random_and_reduced_options():
    a = json.loads(rankstudy("allocate", "--strategy", "random", "--num-layers", "28", "--rank", "32", "--seed", "3").stdout)
    b = json.loads(rankstudy("allocate", "--strategy", "random", "--num-layers", "28", "--rank", "32", "--seed", "4").stdout)
    assert sum(a) == sum(b) == 896 and a != b
    r = json.loads(rankstudy("allocate", "--strategy", "reduced", "--importance", ",".join(["1"] * 28), "--rank", "32",
                             "--reduced-fraction", "0.7").stdout)
    assert sum(r) == 628


def test_allocate_from_profile_parquet(tmp_path):
    rows = [dict(run_id="uniform-seed0", strategy="uniform", seed=0, step=s, layer=layer, module="q_proj", rank=32,
                 grad_norm=float(layer + 1)) for s in (1, 2) for layer in range(4)]
    path = tmp_path / "profile.parquet"
    pd.DataFrame(rows).to_parquet(path)
    out = rankstudy("allocate", "--strategy", "proportional", "--importance", str(path), "--rank", "32")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [12, 24, 40, 52]  # shares 0.1..0.4 of 128 -> 12.8, 25.6, 38.4, 51.2


def test_plan_prints_grid_with_dependencies():
    out = rankstudy("plan", "configs/paper.yaml")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "13 runs" in lines[0] and "base once per cell" in lines[0]  # 4 strategies x 3 seeds + the base model
    row = next(line for line in lines if line.startswith("proportional-seed2"))
    assert "uniform-seed2" in row
    assert next(line for line in lines if line.startswith("random-seed0")).split()[3] == "-"


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "configs/paper.yaml", "--set", "grid.strategies=[uniform, greedy]"], "grid.strategies[1]"),
        (["plan", "configs/paper.yaml", "--set", "allocation.r_min=128"], "allocation.r_min"),
        (["plan", "configs/paper.yaml", "--set", "allocation.r_max=16", "--set", "allocation.random_range=[4,16]"],
         "infeasible"),
        (["plan", "configs/paper.yaml", "--set", "data.test=nope/test.jsonl"], "data.test: data file"),
        (["plan", "configs/paper.yaml", "--set", "grpo.colour=blue"], "grpo.colour: unknown key"),
        (["plan", "configs/missing.yaml"], "does not exist"),
        (["allocate", "--strategy", "proportional", "--importance", "1,2", "--rank", "32", "--r-max", "8"],
         "infeasible"),
        (["allocate", "--strategy", "proportional", "--rank", "32"], "needs --importance"),
        (["allocate", "--strategy", "uniform", "--importance", "a,b", "--rank", "32"], "comma-separated"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line_and_no_traceback(args, message):
    out = rankstudy(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and message in out.stderr
    assert "Traceback" not in out.stderr


def test_a_full_disk_under_the_driver_is_one_line_naming_the_directory(monkeypatch, capsys, tmp_path):
    # The driver's own writes (study.yaml, the lease, the report) on a full disk: the same one line as a run's.
    import errno
    import signal

    import orchestrator.study
    from orchestrator import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "study.yaml"))

    monkeypatch.setattr(orchestrator.study, "run_study", full)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # _cmd_run's SIGTERM handler: not in pytest
    assert cli.main(["run", "configs/laptop.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left in the output directory {tmp_path} (") and err.count("\n") == 1
    assert f"writing {tmp_path / 'study.yaml'}; results written so far are kept" in err
