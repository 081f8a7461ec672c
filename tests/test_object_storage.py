"""A study in object storage, as Ray Train's storage_path: an S3-protocol server on localhost (moto's server mode,
started here; no network), written by `rankstudy run --output s3://...`, interrupted, resumed from the uploaded
checkpoint on a machine without the staging copy, skipped when complete, and read by `status` and `analyze`."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from orchestrator.core.contract import StudyPaths
from orchestrator.core.storage import RemoteDir, is_uri
from tests.fixtures.studies import (
    FAULT_STUDY,
    REPO,
    assert_same_tables,
    driver_env,
    rankstudy_run,
    rankstudy_status,
    wait_until,
)

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    yield f"{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _uri(endpoint: str, prefix: str) -> str:
    return f"s3://rankstudy/{prefix}?endpoint_override={endpoint}&scheme=http&allow_bucket_creation=true"


def test_files_go_to_the_store_whole_and_come_back(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSTUDY_STAGING_DIR", str(tmp_path / "staging"))
    uri = _uri(s3_endpoint, "unit")
    paths = StudyPaths(uri)
    assert is_uri(uri) and paths.remote is not None and paths.root.is_relative_to(tmp_path / "staging")
    paths.remote.check_reachable()
    (paths.root / "runs" / "r" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (paths.root / "runs" / "r" / "checkpoints" / "checkpoint-2" / "w.bin").write_bytes(b"\0" * 10)
    paths.push(paths.root / "runs")
    paths.plan.write_text("[]")
    paths.push(paths.plan)
    assert paths.exists(paths.plan) and not paths.exists(paths.root / "nothing")
    assert paths.remote.subdirs("runs/r/checkpoints") == ["checkpoint-2"]
    other = RemoteDir(uri, paths.remote.fs, paths.remote.root, tmp_path / "elsewhere")  # another machine
    assert other.pull_study() == 1  # plan.json; checkpoints are bulk, left out
    assert other.pull("runs/r/checkpoints") and (other.staging / "runs/r/checkpoints/checkpoint-2/w.bin").stat(
        ).st_size == 10
    paths.remote.delete("plan.json")
    assert not other.pull("plan.json") and not (other.staging / "plan.json").exists()  # no stale copy passes


def test_a_storage_that_refuses_writes_is_one_line(s3_endpoint, tmp_path, monkeypatch):
    from orchestrator.core.errors import StudyError

    monkeypatch.setenv("RANKSTUDY_STAGING_DIR", str(tmp_path / "staging"))
    uri = f"s3://no-such-bucket/x?endpoint_override={s3_endpoint}&scheme=http"  # and no allow_bucket_creation
    with pytest.raises(StudyError, match=r"^s3://no-such-bucket/x\?.*: cannot write to the storage \("):
        StudyPaths(uri).remote.check_reachable()


@pytest.mark.ray
@pytest.mark.slow
def test_a_study_in_object_storage_resumes_from_its_uploaded_checkpoint(s3_endpoint, write_study_config,
                                                                        fault_reference, tmp_path):
    # The fault study's seed-0 run, checkpointing every 2 steps: stopped after its first upload, resumed by a driver
    # whose machine has no staging copy, it must end with the uninterrupted reference's tables.
    config = write_study_config("faults", **{**FAULT_STUDY, "grid": {"strategies": ["uniform"], "seeds": [0]},
                                             "grpo": {**FAULT_STUDY["grpo"], "checkpoint_every": 2}})
    uri = _uri(s3_endpoint, "studies/faults")
    staging = tmp_path / "staging"
    env = driver_env(**CREDENTIALS, RANKSTUDY_STAGING_DIR=str(staging))
    fs, root = pafs.FileSystem.from_uri(uri)
    marker = f"{root}/runs/uniform-seed0/checkpoints/checkpoint-2/rankstudy_tables.done"
    proc = rankstudy_run(config, uri, wait=False, env=env)
    wait_until(lambda: fs.get_file_info(marker).type != pafs.FileType.NotFound, "its first checkpoint upload", proc,
               interval=0.2)
    during = rankstudy_status(uri)  # from the store: the running run, at its step
    assert during.returncode == 1 and "uniform-seed0  running: step " in during.stdout, during.stdout
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout[-3000:]
    shutil.rmtree(staging)  # the next driver runs where nothing of the study is on disk
    resumed = rankstudy_run(config, uri, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    local = tmp_path / "downloaded"
    RemoteDir(uri, fs, root, local).pull_study()
    record = json.loads((local / "runs" / "uniform-seed0" / "run.json").read_text())
    assert record["status"] == "completed" and record["resumed_from_step"] >= 2
    assert_same_tables(local, fault_reference, "uniform-seed0")  # every step once, as if never interrupted
    assert fs.get_file_info(f"{root}/runs/uniform-seed0/checkpoints").type == pafs.FileType.NotFound  # cleaned
    again = rankstudy_run(config, uri, env=env)
    assert again.returncode == 0 and "1/1 runs already completed" in again.stdout, again.stdout[-2000:]
    after = rankstudy_status(uri)
    assert after.returncode == 0 and "uniform-seed0  completed" in after.stdout, after.stdout + after.stderr
    analyzed = subprocess.run([sys.executable, "-m", "orchestrator", "analyze", uri], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=300)
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert analyzed.stdout.strip() == "report: s3://rankstudy/studies/faults/report/index.html"
    assert fs.get_file_info(f"{root}/report/summary.json").type == pafs.FileType.File


def test_a_prepared_model_is_cached_in_the_store_and_any_node_loads_it_from_there(s3_endpoint, tmp_path,
                                                                                   monkeypatch, capfd):
    from orchestrator.resolve import load_study
    from workers.model import load_model_and_tokenizer
    from workers.prepare import prepare_base_model

    cache = _uri(s3_endpoint, "cache")
    config = load_study(REPO / "configs" / "laptop.yaml", [
        f"cache_dir={cache}", "warm_start.steps=3", "data.options.train_size=200", "model.build.num_layers=2"]).config
    monkeypatch.setenv("RANKSTUDY_STAGING_DIR", str(tmp_path / "node-a"))
    made = prepare_base_model(config)
    assert made.model_dir.startswith("s3://rankstudy/cache/warmstart/") and made.model_dir.endswith(
        f"?endpoint_override={s3_endpoint}&scheme=http&allow_bucket_creation=true")
    fs, root = pafs.FileSystem.from_uri(cache)
    builds = fs.get_file_info(pafs.FileSelector(f"{root}/models"))
    assert len(builds) == 1 and fs.get_file_info(f"{builds[0].path}/rankstudy_build.json").type == pafs.FileType.File
    capfd.readouterr()
    monkeypatch.setenv("RANKSTUDY_STAGING_DIR", str(tmp_path / "node-b"))  # another node: found in the store
    again = prepare_base_model(config)
    assert again == made and "warm start: reusing" in capfd.readouterr().err
    monkeypatch.setenv("RANKSTUDY_STAGING_DIR", str(tmp_path / "node-c"))  # a run's node loads it from the store
    model, tokenizer = load_model_and_tokenizer(made.model_dir)
    assert model.config.num_hidden_layers == 2 and tokenizer.pad_token is not None
