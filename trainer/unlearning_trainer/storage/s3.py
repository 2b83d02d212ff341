"""S3 and S3-compatible object storage (boto3).

- Credentials come only from the standard AWS environment variables (the operator fills them from the Secret
  named in the spec) or the AWS credential chain; never from the spec.
- Downloads go to a local cache keyed by ETag and size, several files in parallel.
- Publishing is atomic for readers: files are uploaded under `<prefix>/.staging/<id>/`, copied server-side to
  their final keys, and `_MANIFEST.json` (sizes and sha256 of every file) is written last. The old manifest is
  deleted before anything is overwritten, so a prefix with a manifest always holds a complete output.
- Transient failures (throttling, 5xx, dropped connections) are retried with backoff by botocore's "standard"
  retry mode; everything else fails at once with an error that names the field and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from unlearning_trainer.errors import AccessDeniedError, DataError, UnlearningError

MANIFEST = "_MANIFEST.json"
STAGING = ".staging"
SKIPPED_PREFIXES = (STAGING + "/",)
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidToken"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
T = TypeVar("T")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        rest = uri.removeprefix("s3://")
        bucket, _, key = rest.partition("/")
        return cls(bucket, key.strip("/"))

    def child(self, name: str) -> str:
        return f"{self.key}/{name}" if self.key else name


def default_cache_dir() -> Path:
    return Path(os.environ.get("UNLEARNING_CACHE_DIR", Path.home() / ".cache" / "unlearning")) / "s3"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class S3Storage:
    """Storage on S3; `endpoint` selects an S3-compatible server (SeaweedFS, MinIO, ...)."""

    def __init__(self, endpoint: str | None = None, *, cache_dir: Path | None = None, workers: int = 8) -> None:
        self.endpoint = endpoint
        self.cache_dir = cache_dir or default_cache_dir()
        self.workers = workers
        attempts = int(os.environ.get("UNLEARNING_S3_MAX_ATTEMPTS", "5"))
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(
                retries={"max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=max(10, workers),
            ),
        )

    @contextmanager
    def _errors(self, uri: str, field: str) -> Iterator[None]:
        """Translate boto errors into messages that name the field and the fix."""
        where = f"{field}: {uri}" if field else uri
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                bucket = S3Location.parse(uri).bucket
                raise DataError(
                    f"{where}: bucket {bucket!r} does not exist (a retry cannot help). Fix: create it or fix the URI."
                ) from None
            if code in DENIED_CODES:
                raise AccessDeniedError(
                    f"{where}: access denied ({code}; a retry cannot help). Fix: check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (on Kubernetes: the Secret named in spec.storage.credentialsSecret) and "
                    "the bucket policy."
                ) from None
            if code in MISSING_CODES:
                raise DataError(
                    f"{where}: no such object or folder (a retry cannot help). Fix: check the URI and that the "
                    "data was uploaded."
                ) from None
            raise UnlearningError(f"{where}: S3 request failed ({code}): {exc}. The job can be retried.") from None
        except NoCredentialsError:
            raise AccessDeniedError(
                f"{where}: no S3 credentials (a retry cannot help). Fix: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (on Kubernetes: name a Secret in spec.storage.credentialsSecret)."
            ) from None
        except EndpointConnectionError:
            raise UnlearningError(
                f"{where}: cannot reach the S3 endpoint {self.endpoint or 'of AWS'} (after retries). "
                "Fix: check spec.storage.endpoint and the network; the job can be retried."
            ) from None
        except BotoCoreError as exc:
            raise UnlearningError(f"{where}: S3 error: {exc}. The job can be retried.") from None

    def _list(self, location: S3Location) -> list[dict[str, Any]]:
        prefix = location.key + "/" if location.key else ""
        objects = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
            objects.extend(page.get("Contents", []))
        return objects

    def _parallel(self, function: Callable[[Any], T], items: list[Any]) -> list[T]:
        if len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(function, items))

    def _cached_download(self, bucket: str, key: str, target: Path, etag: str, size: int) -> bool:
        """Download unless the cached copy has the same ETag and size; returns True if it downloaded."""
        meta = target.with_name(target.name + ".s3meta")
        if target.is_file() and meta.is_file():
            cached = json.loads(meta.read_text())
            if cached == {"etag": etag, "size": size} and target.stat().st_size == size:
                return False
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        self.client.download_file(bucket, key, str(partial))
        partial.replace(target)
        meta.write_text(json.dumps({"etag": etag, "size": size}))
        return True

    def _cache_folder(self, uri: str) -> Path:
        return self.cache_dir / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]

    def fetch(self, uri: str, *, field: str) -> Path:
        """Download an object or every object under a prefix (a published output: only its manifest's files)."""
        location = S3Location.parse(uri)
        local = self._cache_folder(uri)
        with self._errors(uri, field):
            objects = self._list(location)
            if not objects and location.key:
                head = self.client.head_object(Bucket=location.bucket, Key=location.key)
                target = local / Path(location.key).name
                self._cached_download(location.bucket, location.key, target, head["ETag"], head["ContentLength"])
                return target
            if not objects:
                raise DataError(f"{field}: {uri} holds no objects. Fix: upload the data or fix the URI.")
            prefix = location.key + "/" if location.key else ""
            listed = {obj["Key"][len(prefix) :]: obj for obj in objects}
            if MANIFEST in listed:
                manifest = json.loads(
                    self.client.get_object(Bucket=location.bucket, Key=prefix + MANIFEST)["Body"].read()
                )
                names = [name for name in manifest["files"] if name in listed]
                missing = sorted(set(manifest["files"]) - set(names))
                if missing:
                    raise DataError(f"{field}: {uri} lacks files its manifest lists ({', '.join(missing[:3])}).")
            else:
                names = [name for name in listed if not name.startswith(SKIPPED_PREFIXES) and not name.endswith("/")]
                if not names:
                    raise DataError(
                        f"{field}: {uri} holds only an unfinished upload (no {MANIFEST}). Fix: rerun the job "
                        "that writes it, or point at a complete folder."
                    )

            def download(name: str) -> bool:
                obj = listed[name]
                return self._cached_download(location.bucket, obj["Key"], local / name, obj["ETag"], obj["Size"])

            self._parallel(download, names)
        return local

    def workdir(self, uri: str) -> Path:
        path = self._cache_folder(uri) / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, local: Path, uri: str, *, exclude: tuple[str, ...] = ("checkpoints",)) -> None:
        """Upload `local` to `uri` so that readers see either the old complete output or the new one."""
        location = S3Location.parse(uri)
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.relative_to(local).parts[0] not in exclude)
        names = [p.relative_to(local).as_posix() for p in files]
        staging = location.child(f"{STAGING}/{uuid.uuid4().hex}")
        with self._errors(uri, "spec.output.uri"):
            self._parallel(
                lambda pair: self.client.upload_file(str(pair[0]), location.bucket, f"{staging}/{pair[1]}"),
                list(zip(files, names, strict=True)),
            )
            self.client.delete_object(Bucket=location.bucket, Key=location.child(MANIFEST))
            self._parallel(
                lambda name: self.client.copy(
                    {"Bucket": location.bucket, "Key": f"{staging}/{name}"}, location.bucket, location.child(name)
                ),
                names,
            )
            manifest = {
                "files": {
                    n: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p, n in zip(files, names, strict=True)
                }
            }
            self.client.put_object(
                Bucket=location.bucket, Key=location.child(MANIFEST), Body=json.dumps(manifest, indent=1).encode()
            )
            self._parallel(
                lambda name: self.client.delete_object(Bucket=location.bucket, Key=f"{staging}/{name}"), names
            )

    def read_text(self, uri: str, *, field: str = "") -> str:
        location = S3Location.parse(uri)
        with self._errors(uri, field):
            return self.client.get_object(Bucket=location.bucket, Key=location.key)["Body"].read().decode()


class S3CheckpointMirror:
    """Checkpoints under `<output>/checkpoints/step-N/`, each published with its own manifest (complete or
    invisible); only rank 0 pushes, every rank pulls before training."""

    def __init__(self, storage: S3Storage, output_uri: str) -> None:
        self.storage = storage
        self.root = output_uri.rstrip("/") + "/checkpoints"

    def _complete_steps(self) -> list[int]:
        location = S3Location.parse(self.root)
        with self.storage._errors(self.root, "spec.output.uri"):
            objects = self.storage._list(location)
        prefix = location.key + "/"
        steps = set()
        for obj in objects:
            parts = obj["Key"][len(prefix) :].split("/")
            if len(parts) == 2 and parts[1] == MANIFEST and parts[0].startswith("step-"):
                steps.add(int(parts[0].removeprefix("step-")))
        return sorted(steps)

    def push(self, folder: Path, *, keep: int) -> None:
        self.storage.publish(folder, f"{self.root}/{folder.name}", exclude=())
        location = S3Location.parse(self.root)
        for step in self._complete_steps()[:-keep]:
            self._delete_under(S3Location(location.bucket, f"{location.key}/step-{step:06d}"))

    def clear(self) -> None:
        self._delete_under(S3Location.parse(self.root))

    def _delete_under(self, location: S3Location) -> None:
        with self.storage._errors(self.root, "spec.output.uri"):
            for obj in self.storage._list(location):
                self.storage.client.delete_object(Bucket=location.bucket, Key=obj["Key"])

    def pull(self, root: Path) -> None:
        steps = self._complete_steps()
        if not steps:
            return
        name = f"step-{steps[-1]:06d}"
        cached = self.storage.fetch(f"{self.root}/{name}", field="spec.output.uri")
        target = root / name
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cached, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.s3meta", "*.part"))
