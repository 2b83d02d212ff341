"""The storage interface, the local-filesystem implementation, and the choice between implementations."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any, Protocol

from unlearning_trainer.errors import DataError, SpecError


class Storage(Protocol):
    def fetch(self, uri: str, *, field: str) -> Path:
        """A local folder with the content at `uri` (downloaded if needed)."""
        ...

    def workdir(self, uri: str) -> Path:
        """A local folder in which the output for `uri` (and its checkpoints) is prepared."""
        ...

    def publish(self, local: Path, uri: str) -> None:
        """Make the finished output in `local` visible at `uri` (checkpoints excluded)."""
        ...

    def read_text(self, uri: str, *, field: str = "") -> str:
        """The content of one file."""
        ...


def local_path(uri: str) -> Path:
    """The filesystem path of a local path or file:// URI."""
    return Path(uri.removeprefix("file://")).expanduser()


class LocalStorage:
    """Local paths and file:// URIs. The output folder is its own working folder."""

    def fetch(self, uri: str, *, field: str) -> Path:
        path = local_path(uri)
        if not path.exists():
            raise DataError(
                f"{field}: {path} does not exist. Fix: check the path (relative paths start at the job's folder)."
            )
        return path

    def workdir(self, uri: str) -> Path:
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, local: Path, uri: str) -> None:
        target = local_path(uri)
        if local.resolve() != target.resolve():
            shutil.copytree(local, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))

    def read_text(self, uri: str, *, field: str = "") -> str:
        path = local_path(uri)
        if not path.is_file():
            raise DataError(f"{field or uri}: {path} does not exist.")
        return path.read_text()


@functools.cache
def _s3(endpoint: str | None) -> Storage:
    from unlearning_trainer.storage.s3 import S3Storage

    return S3Storage(endpoint)


def checkpoint_mirror_for(uri: str, *, endpoint: str | None = None) -> Any:
    """How checkpoints of the output at `uri` reach its store: None for local outputs (already there)."""
    if not uri.startswith("s3://"):
        return None
    from unlearning_trainer.storage.s3 import S3CheckpointMirror

    return S3CheckpointMirror(_s3(endpoint), uri)


def storage_for(uri: str, *, endpoint: str | None = None) -> Storage:
    """The storage implementation for a URI scheme; `endpoint` is spec.storage.endpoint for s3:// URIs."""
    if "://" not in uri or uri.startswith("file://"):
        return LocalStorage()
    if uri.startswith("s3://"):
        return _s3(endpoint)
    scheme = uri.split("://", 1)[0]
    raise SpecError(f"{uri}: the {scheme}:// scheme is not supported. Fix: use s3://, file:// or a local path.")
