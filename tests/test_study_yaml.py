"""study.yaml: written once, refuses a different study, grows with the grid (no Ray, no model)."""

from pathlib import Path

import pytest
import yaml

from orchestrator.core.contract import StudyPaths
from orchestrator.core.errors import StudyError
from orchestrator.resolve import load_study
from orchestrator.study import write_study_yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def test_same_config_leaves_study_yaml_byte_identical(tmp_path):
    paths = StudyPaths(tmp_path)
    config = load_study(REPO / "configs/paper.yaml")
    write_study_yaml(paths, config)
    before = paths.study_yaml.read_bytes()
    record = yaml.safe_load(before)
    assert record["config"]["grpo"]["beta"] == 0.05 and "trl" in record["versions"] and "created_at" in record
    write_study_yaml(paths, config)
    assert paths.study_yaml.read_bytes() == before


def test_changed_settings_are_refused_but_more_seeds_grow_the_grid(tmp_path):
    paths = StudyPaths(tmp_path)
    write_study_yaml(paths, load_study(REPO / "configs/paper.yaml"))
    with pytest.raises(StudyError, match=r"grpo\.learning_rate: 1e-05 there, 0\.001 now"):
        write_study_yaml(paths, load_study(REPO / "configs/paper.yaml", ["grpo.learning_rate=1e-3"]))
    write_study_yaml(paths, load_study(REPO / "configs/paper.yaml", ["grid.seeds=[3, 4]"]))
    grid = yaml.safe_load(paths.study_yaml.read_text())["config"]["grid"]
    assert grid["seeds"] == [0, 1, 2, 3, 4]


def test_results_are_readable_by_others_as_ordinary_files_are(tmp_path):
    # Written through a temp file (mkstemp makes it 0600); shared output directories need the usual mode.
    import os
    import stat

    import pyarrow as pa

    from orchestrator.core.contract import atomic_write_table, atomic_write_text

    atomic_write_text(tmp_path / "report.html", "<html></html>")
    atomic_write_table(tmp_path / "t.parquet", pa.table({"x": [1]}))
    (tmp_path / "plain.txt").write_text("x")
    expected = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert expected & stat.S_IRUSR
    for name in ("report.html", "t.parquet"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name
