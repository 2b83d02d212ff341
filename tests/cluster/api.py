"""A small REST client for the test control plane: JSON in, JSON out, over TLS with a client certificate or a
bearer token. The tests use it to inspect objects and to play the node; what users do goes through kubectl."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:2000]}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        """The `message` of the API server's Status object."""
        try:
            return json.loads(self.body).get("message", self.body)
        except ValueError:
            return self.body


class Api:
    def __init__(
        self, server: str, ca: Path, *, cert: tuple[Path, Path] | None = None, token: str | None = None
    ) -> None:
        self.server = server
        self.ca = ca
        self.context = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            self.context.load_cert_chain(str(cert[0]), str(cert[1]))
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        missing_ok: bool = False,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def get(self, path: str, *, missing_ok: bool = False) -> Any:
        return self.request("GET", path, missing_ok=missing_ok)

    def items(self, path: str) -> list[dict[str, Any]]:
        return self.get(path).get("items", [])

    def create(self, path: str, body: dict[str, Any]) -> None:
        """POST `body` to the collection at `path`; an object of that name that exists already is fine."""
        try:
            self.request("POST", path, body)
        except ApiError as exc:
            if exc.status != 409:
                raise

    def merge_patch(self, path: str, patch: dict[str, Any], *, missing_ok: bool = False) -> Any:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json", missing_ok=missing_ok)

    def delete(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("DELETE", path, body, missing_ok=True)


def eventually(check: Callable[[], T | None], *, timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `check()` until it returns something truthy; its last exception (if any) explains a timeout."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except AssertionError:
            raise
        except Exception as exc:
            last = exc
        else:
            if result:
                return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last})" if last else ""))
