"""The job spec: defaults, examples, and a clear error naming the field and the fix for every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unlearning_trainer.errors import SpecError
from unlearning_trainer.spec import METHOD_SETTINGS, METHODS, MethodSpec, dump_job, load_job, parse_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_minimal_job_gets_the_documented_defaults(job_document):
    del job_document["spec"]["method"], job_document["spec"]["training"], job_document["spec"]["evaluation"]
    spec = parse_job(job_document).spec
    assert spec.method.name == "siss" and spec.method.lambda_ == 0.5 and spec.method.forget_grad_norm == 5.0
    assert spec.training.steps == 300 and spec.training.batch_size == 64 and spec.training.learning_rate == 5e-5
    assert spec.evaluation.memorization_threshold == 10.0 and spec.workers == 1
    assert spec.run_policy.backoff_limit == 3 and spec.run_policy.suspend is False


def test_resolved_spec_round_trips_with_camel_case_names(job_document):
    resolved = dump_job(parse_job(job_document))
    assert resolved["spec"]["method"]["lambda"] == 0.5
    assert "forgetGradNorm" in resolved["spec"]["method"]
    assert "checkpointEvery" in resolved["spec"]["training"]
    assert parse_job(resolved) == parse_job(job_document)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path):
    assert load_job(path).kind == "UnlearningJob"


def _error(document) -> str:
    with pytest.raises(SpecError) as caught:
        parse_job(document)
    return str(caught.value)


@pytest.mark.parametrize(
    ("section", "field", "value", "expected"),
    [
        ("method", "name", "forget-everything", ["spec.method.name", "'siss'", "Fix:"]),
        ("method", "lambda", 1.5, ["spec.method.lambda", "less than or equal to 1", "Fix:"]),
        ("method", "lambda", -0.1, ["spec.method.lambda", "greater than or equal to 0", "Fix:"]),
        ("method", "forgetGradNorm", 0, ["spec.method.forgetGradNorm", "Fix:"]),
        ("training", "steps", 0, ["spec.training.steps", "greater than 0", "Fix: use a larger value"]),
        ("training", "steps", -5, ["spec.training.steps", "Fix:"]),
        ("training", "learningRate", "fast", ["spec.training.learningRate", "Fix: use a number"]),
        ("training", "batchSzie", 8, ["spec.training.batchSzie", "Fix: remove it or check its spelling"]),
        ("training", "lrScheduler", "step", ["spec.training.lrScheduler", "'cosine'", "Fix:"]),
        ("training", "lrWarmupSteps", 10, ["spec.training.lrWarmupSteps", "constant", "Fix: use constant_with_warmup"]),
    ],
    ids=lambda v: str(v),
)
def test_bad_fields_name_the_field_and_the_fix(job_document, section, field, value, expected):
    job_document["spec"][section][field] = value
    message = _error(job_document)
    for fragment in expected:
        assert fragment in message


def test_a_warm_up_must_be_shorter_than_training(job_document):
    job_document["spec"]["training"].update({"steps": 100, "lrScheduler": "cosine", "lrWarmupSteps": 100})
    message = _error(job_document)
    assert "spec.training.lrWarmupSteps (100) must be less than spec.training.steps (100)" in message
    assert "Fix: shorten the warm-up" in message


def test_output_equal_to_the_model_is_refused(job_document):
    job_document["spec"]["output"]["uri"] = "model/"
    message = _error(job_document)
    assert "spec.output.uri equals spec.model.uri" in message and "Fix:" in message


def test_output_equal_to_the_model_is_refused_for_s3(job_document):
    job_document["spec"]["model"]["uri"] = "s3://models/base"
    job_document["spec"]["output"]["uri"] = "s3://models/base/"
    assert "spec.output.uri equals spec.model.uri" in _error(job_document)


def test_missing_required_section(job_document):
    del job_document["spec"]["data"]
    assert "spec.data: Field required. Fix: add this field." in _error(job_document)


def test_batch_must_split_over_workers_and_accumulation(job_document):
    job_document["spec"]["workers"] = 3
    message = _error(job_document)
    assert "spec.training.batchSize (8)" in message and "multiple of 3" in message


def test_wrong_kind(job_document):
    job_document["kind"] = "Job"
    assert "kind" in _error(job_document)


def test_every_problem_is_reported_at_once(job_document):
    job_document["spec"]["method"]["lambda"] = 2
    job_document["spec"]["training"]["steps"] = 0
    message = _error(job_document)
    assert "spec.method.lambda" in message and "spec.training.steps" in message


def test_unreadable_files(tmp_path: Path):
    with pytest.raises(SpecError, match="no such file"):
        load_job(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="expected a YAML mapping"):
        load_job(listing)


def test_spec_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, unlearning_trainer.spec; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("method", "warned"),
    [
        ({"name": "siss", "lambda": 0.0}, "lambda is 0"),
        ({"name": "siss", "lambda": 1.0}, "degenerates to NegGrad"),
        ({"name": "siss", "lambda": 0.5}, None),
        ({"name": "siss-no-is", "lambda": 0.0}, None),
    ],
    ids=["siss-lambda-0", "siss-lambda-1", "siss-default", "no-is-ignores-lambda"],
)
def test_degenerate_lambda_is_allowed_but_warned(method, warned, job_document, tmp_path, capsys):
    from unlearning_trainer.advice import spec_warnings
    from unlearning_trainer.cli import main

    job_document["spec"]["method"] = method
    warnings = spec_warnings(parse_job(job_document).spec)
    assert (warnings == []) == (warned is None)
    if warned is not None:
        assert warned in warnings[0] and "0.5 is the recommended value" in warnings[0]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_document))
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert ("warning: " in err) == (warned is not None)


def test_stop_when_needs_consecutive_evaluations_after_the_start():
    from unlearning_trainer.spec import StopWhen

    rule = StopWhen(maxMemorizationRate=0.0, minForgetNll=10.0, evaluations=2)
    history = [{"step": 0, "memorization_rate": 0.0, "forget_nll_bpd": 20.0}]
    assert not rule.met(history), "the untouched model never counts"
    history.append({"step": 50, "memorization_rate": 0.0, "forget_nll_bpd": 12.0})
    assert not rule.met(history), "one evaluation is not two"
    history.append({"step": 100, "memorization_rate": 0.0, "forget_nll_bpd": 9.0})
    assert not rule.met(history), "both bounds must hold"
    history.append({"step": 150, "memorization_rate": 0.0, "forget_nll_bpd": 11.0})
    assert not rule.met(history), "the streak restarts after a miss"
    history.append({"step": 200, "memorization_rate": 0.0, "forget_nll_bpd": 13.0})
    assert rule.met(history)
    assert StopWhen(maxMemorizationRate=0.0, evaluations=1).met(history[:2])


def test_each_method_names_only_fields_it_reads():
    aliases = {field.alias or name for name, field in MethodSpec.model_fields.items()}
    assert set(METHOD_SETTINGS) == set(METHODS)
    assert all(set(fields) <= aliases for fields in METHOD_SETTINGS.values())
    assert MethodSpec(name="retrack").settings() == {"k": 10, "lambda": 0.5}
    assert MethodSpec(name="naive").settings() == {}
