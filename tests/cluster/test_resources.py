"""The UnlearningJob resource as users meet it on a real API server: every example applies in a user namespace,
`kubectl get uj` shows the printer columns, `kubectl explain` shows the field docs, and a battery of documents
gets the same verdict from the API server (schema and CEL, `--dry-run=server`) as from `unlearn validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.bad_jobs import CASES, Case
from tests.cluster.api import eventually
from tests.cluster.jobs import status
from tests.cluster.platform import create_namespace, create_s3_secret
from unlearning_trainer.cli import main as unlearn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
NAMESPACE = "team-examples"


@pytest.fixture(scope="module")
def user_namespace(platform, admin) -> str:
    create_namespace(admin, NAMESPACE)
    create_s3_secret(admin, NAMESPACE)
    return NAMESPACE


def test_every_example_applies_and_kubectl_get_shows_the_columns(platform, admin, kubectl, node, user_namespace):
    names = []
    for example in EXAMPLES:
        kubectl.run("apply", "-f", str(example), "-n", user_namespace)
        names.append(yaml.safe_load(example.read_text())["metadata"]["name"])
    eventually(
        lambda: all(status(admin, user_namespace, name).get("phase") for name in names),
        timeout=60,
        what="the operator to give every example a phase",
    )
    table = kubectl.run("get", "uj", "-n", user_namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "METHOD", "PROGRESS", "RESTARTS", "MLFLOW", "RUN", "AGE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert set(rows) == set(names)
    assert all(row[2] == "siss" for row in rows.values())
    wide = kubectl.run("get", "unlearningjobs.unlearning.dev", "-n", user_namespace, "-o", "wide").stdout
    assert "REASON" in wide.splitlines()[0]
    kubectl.run("delete", "uj", "--all", "-n", user_namespace, "--wait=true", "--timeout=60s")


def test_kubectl_explain_shows_the_field_docs(kubectl, control_plane, platform):
    method = kubectl.run("explain", "unlearningjob.spec.method").stdout
    assert "forgetGradNorm" in method and "SISS: defensive-mixture weight" in method and "ReTrack" in method
    training = kubectl.run("explain", "uj.spec.training.batchSize").stdout
    assert "Global batch size per optimizer step" in training


@pytest.fixture(scope="module")
def validation_namespace(platform, admin) -> str:
    create_namespace(admin, "validation")
    return "validation"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_api_server_and_unlearn_validate_agree(case: Case, kubectl, validation_namespace, tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(case.text())
    server = kubectl.run("apply", "--dry-run=server", "-f", str(path), "-n", validation_namespace, check=False)
    cli_code = unlearn(["validate", str(path)])
    cli = capsys.readouterr()
    if case.valid:
        assert server.returncode == 0, f"the API server refused a valid job:\n{server.stderr}"
        assert cli_code == 0, f"unlearn validate refused a valid job:\n{cli.err}"
        return
    assert server.returncode != 0, f"the API server accepted it:\n{server.stdout}"
    assert cli_code == 2, f"unlearn validate accepted it:\n{cli.out}"
    expected = case.server_field or case.field
    assert expected in server.stderr, f"the API server's message must name {expected}:\n{server.stderr}"
    assert case.field in cli.err, f"unlearn validate's message must name {case.field}:\n{cli.err}"
