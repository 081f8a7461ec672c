"""The GPU check's --tiny mode: the same code as on a CUDA machine, on CPU, printing its one table."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_the_worker_path_and_prints_its_table(tmp_path):
    out = tmp_path / "check.json"
    # Neither Ray nor vLLM may be needed: a GPU machine for this check has neither, so both are made unimportable.
    code = ("import sys; sys.modules['ray'] = None; sys.modules['vllm'] = None; "
            "from benchmarks.gpu_check import main; main(['--tiny', '--steps', '2', '--json', sys.argv[1]])")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for label in ("seconds per step", "profiler share of a step", "peak GPU memory", "evaluation",
                  "frozen base bitwise frozen  yes"):
        assert label in proc.stdout, proc.stdout
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and result["eval_items"] == 8 and result["frozen_base_unchanged"] is True
    assert 0 < result["generation_s"] < result["step_s"] and result["update_s"] > 0
    assert 0 < result["profiler_share_of_step"] < 0.5 and result["eval_tokens_per_s"] > 0
