"""Every job in examples/ says on its first line whether it runs as is or is a template; the runnable ones run.

A runnable example is run exactly as written except for its output, which goes to a temporary folder instead of
examples/output/ (relative paths resolve against examples/, as `unlearn run` resolves them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearning_trainer.runner import resolve_local_uris, run_job
from unlearning_trainer.spec import load_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALL = sorted(EXAMPLES.glob("*.yaml"))
RUNNABLE = [path for path in ALL if path.read_text().startswith("# RUNNABLE")]


@pytest.mark.parametrize("path", ALL, ids=lambda path: path.name)
def test_every_example_says_whether_it_runs_as_is(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(("# RUNNABLE as-is", "# TEMPLATE")), f"{path.name}: {first}"


def test_the_shipped_scenario_has_runnable_examples():
    assert {path.name for path in RUNNABLE} == {"digits-glyph.yaml", "digits-digit.yaml"}


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda path: path.name)
def test_runnable_examples_unlearn_and_pass_their_audit(path, tmp_path):
    job = resolve_local_uris(load_job(path), EXAMPLES)
    for location in (job.spec.model, job.spec.data.forget, job.spec.data.train or job.spec.data.retain):
        assert Path(location.uri).is_dir(), f"{path.name} names {location.uri}, which does not exist"
    output = job.spec.output.model_copy(update={"uri": str(tmp_path / "out")})
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"output": output})})
    metrics = run_job(job, show_progress=False).metrics
    assert metrics["status"] == "succeeded" and metrics["data"]["warnings"] == []
    assert metrics["before"]["memorization_rate"] > 0, "the example must start from a model that memorized"
    record = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert record["verdict"]["passed"], record["verdict"]
    if job.spec.data.train is not None:
        assert record["data"]["excludedExactCopies"] == metrics["data"]["forget"] == 36
    if job.spec.data.holdout is not None:
        attacks = record["membership"]["attacks"]
        assert all(attacks[a]["forgetPercentileBefore"] < attacks[a]["forgetPercentileAfter"] for a in attacks)
        assert any(
            check["check"].startswith("forget images score like non-members") for check in record["verdict"]["checks"]
        )


def test_the_readme_shows_the_runnable_example_as_it_is():
    body = "".join(line for line in (EXAMPLES / "digits-glyph.yaml").read_text().splitlines(True) if line[0] != "#")
    assert f"```yaml\n{body}```" in (EXAMPLES.parent / "README.md").read_text()
