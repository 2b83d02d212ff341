"""Random access to the encoded images of a dataset on local disk, in one of three layouts.

- `imagefolder`: image files below the root, captions in an optional `metadata.jsonl` (`file_name`, `text`), the
  Hugging Face `imagefolder` layout.
- `webdataset`: uncompressed `.tar` shards whose members sharing a key (the path up to the first dot of the file
  name) form one sample: an image (`.png`, `.jpg`, …) and an optional caption (`.txt`, or `.json` with `text`).
- `parquet`: `.parquet` files as Hugging Face `datasets` writes them (`to_parquet`, `push_to_hub`): an image column
  (the `Image` feature's struct of `bytes` and `path`, or plain binary) and an optional `text` column.

A source keeps only an index (a name and a few offsets per image), never the pixels: reading a record touches the
disk, so a dataset of any size fits in memory.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import numpy as np

from unlearning_trainer.data.decode import CAPTION_COLUMNS, IMAGE_SUFFIXES
from unlearning_trainer.errors import DataError

Format = Literal["auto", "imagefolder", "webdataset", "parquet"]
Record = tuple[bytes, str | None]
"""An encoded image and its caption (None when the dataset has none for it)."""
OPEN_FILES = 16
"""Tar shards kept open at once."""
COMPRESSED_SHARDS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


class Source(Protocol):
    field: str
    has_captions: bool

    def __len__(self) -> int: ...

    def name(self, position: int) -> str: ...

    def read_many(self, positions: Sequence[int]) -> list[Record]: ...


class ImageFolderSource:
    def __init__(self, root: Path, *, field: str) -> None:
        self.root = root
        self.field = field
        self.names = sorted(name for name in files_below(root) if name.lower().endswith(IMAGE_SUFFIXES))
        self.captions = _read_metadata(root)
        self.has_captions = bool(self.captions)

    def __len__(self) -> int:
        return len(self.names)

    def name(self, position: int) -> str:
        return self.names[position]

    def read_many(self, positions: Sequence[int]) -> list[Record]:
        records = []
        for position in positions:
            name = self.names[position]
            caption = self.captions.get(name, "") if self.has_captions else None
            records.append(((self.root / name).read_bytes(), caption))
        return records


def _read_metadata(root: Path) -> dict[str, str]:
    metadata = root / "metadata.jsonl"
    if not metadata.is_file():
        return {}
    captions = {}
    with metadata.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "file_name" not in row:
                raise DataError(f"{metadata}:{number}: every row needs a file_name. Fix: add it to the row.")
            caption = next((row[c] for c in CAPTION_COLUMNS if c in row), None)
            if caption is not None:
                captions[row["file_name"]] = str(caption)
    return captions


def _split_key(member_name: str) -> tuple[str, str]:
    """WebDataset's convention: `dir/abc.seg.png` is sample `dir/abc`, part `seg.png`."""
    folder, _, base = member_name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


NO_CAPTION, TXT_CAPTION, JSON_CAPTION = 0, 1, 2
SHARD_INDEX = np.dtype(
    [
        ("shard", np.int32),
        ("offset", np.int64),
        ("size", np.int64),
        ("caption_offset", np.int64),
        ("caption_size", np.int64),
        ("caption_kind", np.int8),
    ]
)
"""Where a sample's image and caption bytes sit in its shard: 37 bytes per sample."""


class TarShardSource:
    """WebDataset shards: one pass over the tar headers finds each sample's image and caption offsets."""

    def __init__(self, root: Path, *, field: str) -> None:
        self.root = root
        self.field = field
        self._handles: OrderedDict[int, BinaryIO] = OrderedDict()
        self.shards = [root / name for name in sorted(files_below(root)) if name.endswith(".tar")]
        self.names: list[str] = []
        per_shard = [self._index_shard(shard_id, shard) for shard_id, shard in enumerate(self.shards)]
        self.index = np.concatenate(per_shard) if per_shard else np.zeros(0, dtype=SHARD_INDEX)
        self.has_captions = bool((self.index["caption_kind"] != NO_CAPTION).any())

    def _index_shard(self, shard_id: int, shard: Path) -> np.ndarray:
        """One row per sample of the shard that has an image; appends the samples' names."""
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(shard, mode="r:") as archive:
                for member in archive:
                    if member.isfile():
                        key, extension = _split_key(member.name)
                        samples.setdefault(key, {})[extension] = member
        except tarfile.TarError as exc:
            raise DataError(
                f"{self.field}: {shard.relative_to(self.root)} is not a readable tar shard ({exc}). Fix: rewrite the "
                "shard or remove it."
            ) from None
        rows = []
        for key, parts in samples.items():
            image = next((parts[e] for e in sorted(parts) if f".{e.rpartition('.')[2]}" in IMAGE_SUFFIXES), None)
            if image is None:
                continue
            kind = TXT_CAPTION if "txt" in parts else JSON_CAPTION if "json" in parts else NO_CAPTION
            caption = parts.get("txt") or parts.get("json")
            self.names.append(f"{shard.relative_to(self.root).as_posix()}/{key}")
            rows.append(
                (
                    shard_id,
                    image.offset_data,
                    image.size,
                    caption.offset_data if caption else 0,
                    caption.size if caption else 0,
                    kind,
                )
            )
        return np.array(rows, dtype=SHARD_INDEX)

    def __len__(self) -> int:
        return len(self.names)

    def name(self, position: int) -> str:
        return self.names[position]

    def _handle(self, shard_id: int) -> BinaryIO:
        handle = self._handles.pop(shard_id, None) or self.shards[shard_id].open("rb")
        self._handles[shard_id] = handle
        while len(self._handles) > OPEN_FILES:
            self._handles.popitem(last=False)[1].close()
        return handle

    def _read(self, shard_id: int, offset: int, size: int) -> bytes:
        handle = self._handle(shard_id)
        handle.seek(offset)
        return handle.read(size)

    def read_many(self, positions: Sequence[int]) -> list[Record]:
        records = []
        for position in positions:
            row = self.index[position]
            shard = int(row["shard"])
            caption = "" if self.has_captions else None
            if row["caption_kind"] != NO_CAPTION:
                raw = self._read(shard, int(row["caption_offset"]), int(row["caption_size"]))
                text = raw.decode("utf-8", errors="replace")
                caption = text.strip() if row["caption_kind"] == TXT_CAPTION else _json_caption(text)
            records.append((self._read(shard, int(row["offset"]), int(row["size"])), caption))
        return records

    def __del__(self) -> None:
        for handle in self._handles.values():
            handle.close()


def _json_caption(text: str) -> str:
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return ""
    return str(next((row[c] for c in CAPTION_COLUMNS if isinstance(row, dict) and c in row), ""))


class ParquetSource:
    """Parquet files: an index of row-group sizes only; a read loads the row groups it needs (a few kept)."""

    CACHED_ROW_GROUPS = 4

    def __init__(self, root: Path, *, field: str) -> None:
        import pyarrow.parquet as pq

        self.root = root
        self.field = field
        self.files = [root / name for name in sorted(files_below(root)) if name.endswith(".parquet")]
        self.groups: list[tuple[int, int]] = []
        sizes = []
        schema = None
        for file_id, path in enumerate(self.files):
            try:
                metadata = pq.ParquetFile(path).metadata
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise DataError(
                    f"{field}: {path.relative_to(root)} is not a readable parquet file ({exc}). Fix: rewrite it."
                ) from None
            schema = schema or metadata.schema.to_arrow_schema()
            for group in range(metadata.num_row_groups):
                self.groups.append((file_id, group))
                sizes.append(metadata.row_group(group).num_rows)
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.image_column, self.caption_column = _columns(schema, field) if schema is not None else ("", None)
        self.has_captions = self.caption_column is not None
        self._cache: OrderedDict[int, tuple[list[Any], list[Any] | None]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, position: int) -> tuple[int, int]:
        group = int(np.searchsorted(self.starts, position, side="right")) - 1
        return group, position - int(self.starts[group])

    def _group(self, group: int) -> tuple[list[Any], list[Any] | None]:
        """A row group's images and captions, read whole: files are opened per read, because an open reader
        keeps the buffers of its last row group (16 open files cost 70 MB on the 100k benchmark)."""
        if group not in self._cache:
            import pyarrow.parquet as pq

            file_id, row_group = self.groups[group]
            columns = [self.image_column] + ([self.caption_column] if self.caption_column else [])
            table = pq.ParquetFile(self.files[file_id]).read_row_group(row_group, columns=columns)
            images = table.column(self.image_column).to_pylist()
            captions = table.column(self.caption_column).to_pylist() if self.caption_column else None
            self._cache[group] = (images, captions)
            while len(self._cache) > self.CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(group)
        return self._cache[group]

    def name(self, position: int) -> str:
        group, row = self._locate(position)
        image = self._group(group)[0][row]
        path = image.get("path") if isinstance(image, dict) else None
        file_id, _ = self.groups[group]
        return path or f"{self.files[file_id].relative_to(self.root).as_posix()}#{position - self._file_start(file_id)}"

    def _file_start(self, file_id: int) -> int:
        first = next(i for i, (f, _) in enumerate(self.groups) if f == file_id)
        return int(self.starts[first])

    def _referenced_file(self, group: int, path: str | None) -> bytes:
        """A row that holds only a path (datasets' `to_parquet` writes local images that way): the file, if it
        was shipped inside the dataset folder next to the parquet file."""
        folder = self.files[self.groups[group][0]].parent
        candidate = (folder / path).resolve() if path else None
        if candidate is None or not candidate.is_relative_to(self.root.resolve()) or not candidate.is_file():
            raise DataError(
                f"{self.field}: a row of {folder.relative_to(self.root) / '*.parquet'} names the image {path!r} "
                "instead of holding it, and no such file is in the dataset folder. Fix: embed the images "
                "(Dataset.push_to_hub does; for to_parquet, build the Image column from arrays or bytes rather "
                "than files), or put the image files next to the parquet file at those relative paths."
            )
        return candidate.read_bytes()

    def read_many(self, positions: Sequence[int]) -> list[Record]:
        records = []
        for position in positions:
            group, row = self._locate(int(position))
            images, captions = self._group(group)
            image = images[row]
            content = image.get("bytes") if isinstance(image, dict) else image
            if content is None:
                content = self._referenced_file(group, image.get("path") if isinstance(image, dict) else None)
            records.append((content, None if captions is None else str(captions[row] or "")))
        return records


def _columns(schema: Any, field: str) -> tuple[str, str | None]:
    """The image column (HF `Image` struct or binary) and the caption column, by type and name."""
    import pyarrow as pa

    def is_image(column: pa.Field) -> bool:
        kind = column.type
        if pa.types.is_struct(kind):
            return kind.get_field_index("bytes") >= 0
        return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)

    images = [column.name for column in schema if is_image(column)]
    if not images:
        raise DataError(
            f"{field}: the parquet files have no image column (columns: {', '.join(schema.names)}). Fix: store the "
            "images in a column of the datasets Image feature (or raw encoded bytes)."
        )
    image = "image" if "image" in images else images[0]
    caption = next(
        (c for c in CAPTION_COLUMNS if c in schema.names and schema.field(c).type in (pa.string(), pa.large_string())),
        None,
    )
    return image, caption


def files_below(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the files below `root`, one folder at a time (never a set of every path)."""
    for folder, _, names in os.walk(root):
        prefix = Path(folder).relative_to(root).as_posix()
        for name in names:
            yield name if prefix == "." else f"{prefix}/{name}"


def _kinds(root: Path) -> dict[str, str]:
    """The first file of each kind that decides the layout: parquet, tar, compressed tar, arrow."""
    found: dict[str, str] = {}
    for name in files_below(root):
        lower = name.lower()
        kind = next((k for k, endings in LAYOUT_FILES.items() if lower.endswith(endings)), None)
        if kind is not None:
            found.setdefault(kind, name)
    return found


LAYOUT_FILES = {
    "parquet": (".parquet",),
    "webdataset": (".tar",),
    "compressed": COMPRESSED_SHARDS,
    "arrow": (".arrow",),
}


def detect_format(root: Path) -> Format:
    """The layout of a folder: parquet if it holds .parquet files, else webdataset if .tar shards, else images."""
    return _layout(_kinds(root))


def _layout(kinds: dict[str, str]) -> Format:
    return "parquet" if "parquet" in kinds else "webdataset" if "webdataset" in kinds else "imagefolder"


def open_source(root: Path, *, field: str, fmt: Format = "auto") -> Source:
    """Index the dataset at `root`; `field` names the spec field in error messages.

    Raises:
        DataError: when the folder is missing, empty, or in a layout that cannot be read at random.
    """
    if not root.is_dir():
        raise DataError(
            f"{field}: {root} is not a folder. Fix: point it at a folder of images, .tar shards or parquet files."
        )
    kinds = _kinds(root)
    if "compressed" in kinds:
        raise DataError(
            f"{field}: {kinds['compressed']} is a compressed tar, which cannot be read at random. Fix: "
            "decompress the shards to plain .tar (WebDataset shards usually are)."
        )
    if fmt == "auto" and "arrow" in kinds and not {"parquet", "webdataset"} & kinds.keys():
        raise DataError(
            f"{field}: {root} holds .arrow files (a datasets save_to_disk folder), which are not read. Fix: write "
            "the dataset as parquet (Dataset.to_parquet) and point the field at that folder."
        )
    chosen = _layout(kinds) if fmt == "auto" else fmt
    source: Source = {"imagefolder": ImageFolderSource, "webdataset": TarShardSource, "parquet": ParquetSource}[chosen](
        root, field=field
    )
    if not len(source):
        what = {
            "imagefolder": ", ".join(IMAGE_SUFFIXES),
            "webdataset": ".tar shards with image members",
            "parquet": "parquet rows",
        }[chosen]
        raise DataError(f"{field}: {root} holds no images ({what}). Fix: add some, or point the field at them.")
    return source
