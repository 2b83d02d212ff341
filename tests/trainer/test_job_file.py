"""Any file given as a job file gets one clear line and exit code 2, quickly and in bounded memory."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from unlearning_trainer.job_file import EXCERPT_CHARS, excerpt

ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def _write(kind: str, path: Path) -> Path:
    target = path / "job.yaml"
    if kind == "binary":
        target.write_bytes(bytes(range(256)) * 8)
    elif kind == "latin-1":
        target.write_bytes("apiVersion: unlearning.dev/v1alpha1\nkind: Ünlearning\n".encode("latin-1"))
    elif kind == "folder":
        target.mkdir()
    elif kind == "empty":
        target.write_text("")
    elif kind == "huge":
        target.write_text("spec:\n  x: " + "y" * (2 << 20) + "\n")
    elif kind == "alias-bomb":
        target.write_text('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + ALIAS_BOMB)
    elif kind == "long-value":
        target.write_text(
            "apiVersion: unlearning.dev/v1alpha1\nkind: UnlearningJob\nmetadata: {name: " + "a" * 5000 + "}\n"
        )
    return target


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("binary", "a binary file"),
        ("latin-1", "not UTF-8 text"),
        ("folder", "is a folder"),
        ("empty", "expected a YAML mapping"),
        ("huge", "more than a job file holds"),
        ("alias-bomb", "YAML aliases"),
        ("long-value", "metadata.name"),
    ],
)
def test_a_bad_file_gets_one_line_and_exit_code_2(kind, says, tmp_path):
    path = _write(kind, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "unlearning_trainer.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limit_memory,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr) < 600, f"the message must not carry the input: {len(result.stderr)} characters"


def test_excerpts_are_short():
    assert excerpt("abc") == "'abc'"
    long = excerpt("x" * 10_000)
    assert len(long) < EXCERPT_CHARS + 30 and long.endswith("(10002 characters)")
