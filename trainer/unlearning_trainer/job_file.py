"""Reading a job file safely: whatever the file holds (binary data, another encoding, a folder, megabytes, a
YAML alias bomb), the reader answers within bounded time and memory with one `SpecError` line.

The YAML is read as kubectl reads it (floats such as `5e-5` are numbers), so `unlearn validate` and the API
server judge the same document.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from unlearning_trainer.errors import SpecError

MAX_FILE_BYTES = 1 << 20
"""A job file is a few kilobytes; the API server refuses objects above about 1.5 MB anyway."""
MAX_NODES = 100_000
"""Values in the document with aliases expanded: far above any job, far below what an alias bomb expands to."""
EXCERPT_CHARS = 60


class JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with floats as kubectl reads them: `5e-5` is a number, not the string PyYAML 1.1
    rules make of it."""


JobLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def excerpt(value: Any) -> str:
    """`repr(value)`, cut to a short excerpt: an error message never carries the whole input."""
    text = repr(value)
    return text if len(text) <= EXCERPT_CHARS else f"{text[:EXCERPT_CHARS]}… ({len(text)} characters)"


def expanded_size_exceeds(document: Any, limit: int) -> bool:
    """Whether the document, with every alias expanded, has more than `limit` values; stops counting at the
    limit, so an alias bomb costs `limit` steps, not its expanded size."""
    count, stack = 0, [document]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def read_document(path: Path) -> Any:
    """The parsed YAML (or JSON) document in a job file."""
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a job file. Fix: give the path of a .yaml file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    if size > MAX_FILE_BYTES:
        raise SpecError(
            f"{path}: {size} bytes, more than a job file holds (at most {MAX_FILE_BYTES}). "
            "Fix: point at the job's YAML, not at data"
        )
    raw = path.read_bytes()
    if b"\0" in raw:
        raise SpecError(f"{path}: a binary file, not YAML. Fix: give the path of a .yaml file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}). "
            "Fix: save the job file as UTF-8"
        ) from None
    try:
        document = yaml.load(text, Loader=JobLoader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SpecError(f"{path}: not valid YAML{at}: {problem}") from None
    if expanded_size_exceeds(document, MAX_NODES):
        raise SpecError(
            f"{path}: expands to more than {MAX_NODES} values through YAML aliases. Fix: write the job without "
            "anchors and aliases"
        )
    return document
