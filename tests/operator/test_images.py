"""The images: non-root, and the operator's without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dockerfile", ["operator/Dockerfile", "trainer/Dockerfile"])
def test_images_run_as_a_non_root_user(dockerfile):
    lines = [line.strip() for line in (ROOT / dockerfile).read_text().splitlines()]
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] == "USER 1000:1000"


def test_operator_image_installs_no_torch():
    text = (ROOT / "operator" / "Dockerfile").read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all('".[operator]"' in line and "torch" not in line for line in installs)


def test_operator_code_never_imports_torch():
    code = (
        "import sys, unlearning_operator.handlers, unlearning_operator.main, unlearning_trainer.cli; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
