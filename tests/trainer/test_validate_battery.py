"""`unlearn validate` on every document of the shared battery: the verdict, the field named, the exit code.
The same battery goes to the real API server in tests/cluster/test_resources.py."""

from __future__ import annotations

import pytest

from tests.bad_jobs import CASES, Case
from unlearning_trainer.cli import main


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_unlearn_validate_verdict(case: Case, tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(case.text())
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    if case.valid:
        assert code == 0, out.err
    else:
        assert code == 2, out.out
        assert case.field in out.err, f"the message must name {case.field}:\n{out.err}"
