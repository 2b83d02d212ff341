"""S3 storage and MLflow tracking against real servers, including their failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import DDPMPipeline
from mlflow import MlflowClient

from tests.conftest import write_job
from tests.servers import SECRET_KEY, MlflowServer
from unlearning_trainer.errors import DataError, UnlearningError
from unlearning_trainer.runner import run_job
from unlearning_trainer.spec import parse_job
from unlearning_trainer.storage.s3 import MANIFEST, S3Storage


def _s3_job(job_document, uris: dict[str, str], endpoint: str, tracking_uri: str | None = None) -> dict:
    spec = job_document["spec"]
    spec["model"]["uri"] = uris["model"]
    spec["data"] = {"forget": {"uri": uris["forget"]}, "retain": {"uri": uris["retain"]}}
    spec["output"]["uri"] = uris["output"]
    spec["storage"] = {"endpoint": endpoint, "credentialsSecret": "s3-credentials"}
    spec["audit"] = {"requestId": "GDPR-2026-0042"}
    if tracking_uri:
        spec["tracking"] = {
            "mlflowTrackingUri": tracking_uri,
            "experiment": "s3-e2e",
            "registeredModel": {"name": "ddpm-digits-unlearned", "alias": "gdpr-42"},
        }
    return job_document


def _unlearn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env, "UNLEARNING_CACHE_DIR": str(cwd / "cache")},
        timeout=600,
    )


def test_s3_job_end_to_end_with_mlflow(s3_scenario, s3_server, mlflow_server, job_document, tmp_path, monkeypatch):
    document = _s3_job(job_document, s3_scenario, s3_server.endpoint, mlflow_server.url)
    result = _unlearn(["run", str(write_job(tmp_path, document)), "--no-progress"], s3_server.env(), tmp_path)
    assert result.returncode == 0, result.stderr

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    storage = S3Storage(s3_server.endpoint, cache_dir=tmp_path / "reader")
    published = storage.fetch(s3_scenario["output"], field="output")
    manifest = json.loads(
        s3_server.client().get_object(Bucket="outputs", Key=_key(s3_scenario, MANIFEST))["Body"].read()
    )
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["files"] and "audit.json" in manifest["files"]
    assert not any(name.startswith("checkpoints/") for name in manifest["files"])
    DDPMPipeline.from_pretrained(published, use_safetensors=True)

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("s3-e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "siss" and run.data.params["data.forgetSize"] == "3"
    assert (
        run.data.tags["unlearning.dev/job"] == "test-job"
        and run.data.tags["unlearning.dev/request"] == "GDPR-2026-0042"
    )
    everything = json.dumps([run.data.params, run.data.tags])
    assert SECRET_KEY not in everything and "AWS_SECRET" not in everything
    history = client.get_metric_history(run.info.run_id, "eval/memorization_rate")
    assert sorted(m.step for m in history) == [0, 2, 4]
    assert len(client.get_metric_history(run.info.run_id, "train/loss_keep")) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "audit.json", "samples"} <= artifacts
    assert len(client.list_artifacts(run.info.run_id, "samples")) == 3

    version = client.get_model_version_by_alias("ddpm-digits-unlearned", "gdpr-42")
    assert version.source == s3_scenario["output"] and version.run_id == run.info.run_id

    report = _unlearn(["report", s3_scenario["output"], "--endpoint", s3_server.endpoint], s3_server.env(), tmp_path)
    assert report.returncode == 0, report.stderr
    assert "request GDPR-2026-0042" in report.stdout and "verdict:" in report.stdout
    record = json.loads((published / "audit.json").read_text())
    assert record["forgotten"]["count"] == 3 and len(record["forgotten"]["sha256"][0]["sha256"]) == 64
    assert record["model"]["sha256Before"] != record["model"]["sha256After"]
    assert record["tracking"]["runId"] == run.info.run_id


def _key(uris: dict[str, str], name: str) -> str:
    return uris["output"].removeprefix("s3://outputs/") + "/" + name


def test_wrong_credentials_are_a_clear_access_denied(s3_scenario, s3_server, job_document, tmp_path):
    document = _s3_job(job_document, s3_scenario, s3_server.endpoint)
    env = s3_server.env() | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    result = _unlearn(["run", str(write_job(tmp_path, document)), "--no-progress"], env, tmp_path)
    assert result.returncode == 4, result.stderr
    assert "access denied" in result.stderr and "spec.storage.credentialsSecret" in result.stderr
    assert "a retry cannot help" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("field", "uri", "message"),
    [
        ("model", "s3://models/no-such-model", "no such object or folder"),
        ("forget", "s3://no-such-bucket/forget", "bucket 'no-such-bucket' does not exist"),
    ],
    ids=["missing-object", "missing-bucket"],
)
def test_missing_objects_are_clear_data_errors(s3_scenario, s3_server, job_document, tmp_path, field, uri, message):
    document = _s3_job(job_document, {**s3_scenario, field: uri}, s3_server.endpoint)
    result = _unlearn(["run", str(write_job(tmp_path, document)), "--no-progress"], s3_server.env(), tmp_path)
    assert result.returncode == 3, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "a retry cannot help" in result.stderr


def test_server_stopped_during_upload_retries_then_fails_without_publishing(s3_server, scenario, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("UNLEARNING_S3_MAX_ATTEMPTS", "3")
    storage = S3Storage(s3_server.endpoint, cache_dir=tmp_path / "cache", workers=1)
    attempts: list[str] = []
    storage.client.meta.events.register("before-send.s3.PutObject", lambda **kwargs: attempts.append("put"))
    upload = storage.client.upload_file

    def upload_then_crash(*args, **kwargs):
        upload(*args, **kwargs)
        s3_server.stop()

    monkeypatch.setattr(storage.client, "upload_file", upload_then_crash)
    uri = "s3://outputs/interrupted/unlearned"
    try:
        with pytest.raises(UnlearningError, match="cannot reach the S3 endpoint"):
            storage.publish(scenario / "model", uri)
    finally:
        s3_server.start()
    assert len(attempts) >= 1 + 3, "the second upload must be retried before giving up"
    keys = [
        obj["Key"] for obj in s3_server.client().list_objects_v2(Bucket="outputs", Prefix="interrupted/")["Contents"]
    ]
    assert keys and all("/.staging/" in key for key in keys)
    with pytest.raises(DataError, match="unfinished upload"):
        S3Storage(s3_server.endpoint, cache_dir=tmp_path / "reader").fetch(uri, field="spec.model.uri")


def test_mlflow_outage_does_not_fail_training(scenario, job_document, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    server = MlflowServer(root=tmp_path / "mlflow")
    server.start()
    spec = job_document["spec"]
    for name in ("model", "forget", "retain"):
        (tmp_path / name).symlink_to(scenario / name)
    spec["model"]["uri"] = str(tmp_path / "model")
    spec["data"] = {"forget": {"uri": str(tmp_path / "forget")}, "retain": {"uri": str(tmp_path / "retain")}}
    spec["output"]["uri"] = str(tmp_path / "out")
    spec["tracking"] = {"mlflowTrackingUri": server.url, "experiment": "outage"}

    def stop_at_step_two(step: int, total: int) -> None:
        if step == 2:
            server.stop()

    try:
        metrics = run_job(parse_job(job_document), show_progress=False, on_progress=stop_at_step_two).metrics
    finally:
        server.stop()
    assert metrics["status"] == "succeeded" and metrics["steps"] == 4
    assert metrics["tracking"]["available"] is False and metrics["tracking"]["errors"] > 0
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["tracking"]["errors"] > 0
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_checkpoints_reach_the_store_and_a_new_machine_resumes_from_them(
    s3_scenario, s3_server, job_document, tmp_path
):
    document = _s3_job(job_document, s3_scenario, s3_server.endpoint)
    first = _unlearn(["run", str(write_job(tmp_path, document)), "--no-progress"], s3_server.env(), tmp_path)
    assert first.returncode == 0, first.stderr
    prefix = s3_scenario["output"].removeprefix("s3://outputs/") + "/checkpoints/"
    keys = {
        o["Key"][len(prefix) :] for o in s3_server.client().list_objects_v2(Bucket="outputs", Prefix=prefix)["Contents"]
    }
    assert {"step-000002/_MANIFEST.json", "step-000004/_MANIFEST.json", "step-000004/model.safetensors"} <= keys
    shutil.rmtree(tmp_path / "cache")
    document["spec"]["training"]["steps"] = 6
    second = _unlearn(
        ["run", str(write_job(tmp_path, document, "longer.yaml")), "--no-progress"], s3_server.env(), tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert "resuming from checkpoint at step 4 of 6" in second.stderr


def test_a_sharded_training_set_and_a_parquet_request_on_s3(
    s3_scenario, s3_server, scenario, job_document, tmp_path, monkeypatch
):
    """data.train as WebDataset shards and data.forget as datasets parquet, both read from the S3 server."""
    import datasets
    import numpy as np
    import webdataset
    from PIL import Image

    files = sorted((scenario / "retain").glob("*.png")) + sorted((scenario / "forget").glob("*.png"))
    shards = tmp_path / "shards"
    shards.mkdir()
    for number, start in enumerate(range(0, len(files), 20)):
        with webdataset.TarWriter(str(shards / f"train-{number:03d}.tar"), encoder=False) as sink:
            for path in files[start : start + 20]:
                sink.write({"__key__": f"{path.parent.name}-{path.stem}", "png": path.read_bytes()})
    request = tmp_path / "request"
    pictures = [Image.fromarray(np.asarray(Image.open(path))) for path in sorted((scenario / "forget").glob("*.png"))]
    dataset = datasets.Dataset.from_dict({"image": pictures}, features=datasets.Features({"image": datasets.Image()}))
    request.mkdir()
    dataset.to_parquet(str(request / "request.parquet"))
    prefix = s3_scenario["forget"].rsplit("/", 1)[0]
    s3_server.upload_folder(shards, f"{prefix}/shards")
    s3_server.upload_folder(request, f"{prefix}/request")

    document = _s3_job(job_document, s3_scenario, s3_server.endpoint)
    document["spec"]["data"] = {
        "forget": {"uri": f"{prefix}/request", "format": "parquet"},
        "train": {"uri": f"{prefix}/shards"},
    }
    document["spec"]["training"]["steps"] = 2
    result = _unlearn(["run", str(write_job(tmp_path, document)), "--no-progress"], s3_server.env(), tmp_path)
    assert result.returncode == 0, result.stderr
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    published = S3Storage(endpoint=s3_server.endpoint).fetch(s3_scenario["output"], field="output")
    data = json.loads((published / "metrics.json").read_text())["data"]
    assert (data["scanned"], data["excluded"], data["retain"], data["forgetFound"]) == (51, 3, 48, 1)


def test_a_new_pod_never_resumes_another_jobs_checkpoint_and_restart_clears_the_store(
    s3_scenario, s3_server, job_document, tmp_path
):
    """Each run below is a fresh pod (its own cache): checkpoints come only from the output store."""

    def pod(name: str, *flags: str) -> subprocess.CompletedProcess[str]:
        folder = tmp_path / name
        folder.mkdir()
        return _unlearn(["run", str(write_job(folder, document)), "--no-progress", *flags], s3_server.env(), folder)

    document = _s3_job(job_document, s3_scenario, s3_server.endpoint)
    document["spec"]["training"] |= {"steps": 2, "checkpointEvery": 1}
    assert pod("first").returncode == 0
    document["spec"]["training"]["learningRate"] = 1e-4
    refused = pod("second")
    assert refused.returncode == 2 and "training.learningRate: 5e-05 -> 0.0001" in refused.stderr
    restarted = pod("third", "--restart")
    assert restarted.returncode == 0, restarted.stderr
    document["spec"]["training"]["steps"] = 3
    resumed = pod("fourth")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint at step 2 of 3" in resumed.stderr
