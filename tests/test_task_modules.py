"""Tasks kept outside the package: the modules named in RANKSTUDY_TASK_MODULES register their tasks wherever a task
is looked up, and a module that cannot be imported is a one-line error before anything runs."""

import os
import subprocess
import sys
from pathlib import Path

from orchestrator.core.errors import StudyError
from workers.tasks import get_task, task_names, unregister_task
from workers.tasks.registry import TASK_MODULES_ENV

REPO = Path(__file__).resolve().parents[1]


def test_a_module_named_in_the_environment_registers_its_task(tmp_path, monkeypatch):
    (tmp_path / "my_study_tasks.py").write_text(
        "from workers.tasks import register_task\n"
        "from workers.tasks.gsm8k import GSM8K\n\n"
        "@register_task\n"
        "class Terse(GSM8K):\n"
        "    name = 'terse_outside'\n"
        "    system_prompt = 'Answer in <answer> tags.'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(TASK_MODULES_ENV, " my_study_tasks , ")
    try:
        assert "terse_outside" in task_names()
        assert get_task("terse_outside").system_prompt == "Answer in <answer> tags."
    finally:
        unregister_task("terse_outside")
        sys.modules.pop("my_study_tasks", None)


def test_an_unimportable_task_module_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(TASK_MODULES_ENV, "no_such_task_module_here")
    try:
        get_task("gsm8k")
    except StudyError as err:
        assert str(err).startswith(f"{TASK_MODULES_ENV}: cannot import task module 'no_such_task_module_here': "
                                   "ModuleNotFoundError")
    else:
        raise AssertionError("an unimportable task module was ignored")
    # The same through the CLI: exit status 2, one line, before any planning.
    env = {**os.environ, TASK_MODULES_ENV: "no_such_task_module_here"}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "plan", str(REPO / "configs" / "laptop.yaml")],
                            capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {TASK_MODULES_ENV}: cannot import task module") and \
        result.stderr.count("\n") == 1, result.stderr
