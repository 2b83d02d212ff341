"""Dataset layouts (image folder, WebDataset shards, Hugging Face parquet), streaming, and training-set exclusion.

The shards and parquet files are written by the libraries users write them with (webdataset, datasets).
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unlearning_trainer.data import exclusion
from unlearning_trainer.data.exclusion import l2_distances, scan
from unlearning_trainer.data.images import StreamedImages, load_images
from unlearning_trainer.data.sources import detect_format, open_source
from unlearning_trainer.errors import DataError
from unlearning_trainer.scenarios import builders

SHAPE = (1, 8, 8)


def _images(count: int, seed: int = 0, size: int = 8) -> np.ndarray:
    """Distinct smooth grayscale images (count, size, size) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for _ in range(count):
        cy, cx, width = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.5, 3)
        images.append((255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))).round())
    return np.stack(images).astype(np.uint8)


def _encode(image: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


IMAGES = _images(40)
CAPTIONS = [f"blob number {i}" for i in range(len(IMAGES))]


def _write_folder(root: Path) -> Path:
    builders.write_image_folder(IMAGES, root)
    return builders.write_captions(root, {f"img-{i:05d}.png": c for i, c in enumerate(CAPTIONS)})


def _write_shards(root: Path, per_shard: int = 16) -> Path:
    import webdataset

    root.mkdir(parents=True)
    for shard, start in enumerate(range(0, len(IMAGES), per_shard)):
        with webdataset.TarWriter(str(root / f"train-{shard:04d}.tar"), encoder=False) as sink:
            for i in range(start, min(start + per_shard, len(IMAGES))):
                sink.write({"__key__": f"img-{i:05d}", "png": _encode(IMAGES[i]), "txt": CAPTIONS[i].encode()})
    return root


def _write_parquet(root: Path) -> Path:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    pictures = [Image.fromarray(image) for image in IMAGES]
    (root / "data").mkdir(parents=True)
    halves = ((0, 24), (24, len(IMAGES)))
    for index, (start, stop) in enumerate(halves):
        rows = {"image": pictures[start:stop], "text": CAPTIONS[start:stop]}
        dataset = datasets.Dataset.from_dict(rows, features=features)
        dataset.to_parquet(str(root / "data" / f"train-{index:05d}-of-00002.parquet"), batch_size=10)
    return root


WRITERS = {"imagefolder": _write_folder, "webdataset": _write_shards, "parquet": _write_parquet}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_every_layout_reads_the_same_images_and_captions(tmp_path, layout):
    root = WRITERS[layout](tmp_path / layout)
    assert detect_format(root) == layout
    source = open_source(root, field="spec.data.train.uri")
    whole = load_images(source, SHAPE)
    assert np.array_equal(whole.pixels[:, 0].numpy(), IMAGES)
    assert whole.captions == CAPTIONS
    streamed = StreamedImages(open_source(root, field="f"), np.arange(len(IMAGES)), SHAPE)
    order = torch.tensor([39, 0, 17, 23, 24, 5, 39])
    images, captions = streamed.take(order)
    assert torch.equal(images, whole.take(order)[0])
    assert captions == [CAPTIONS[i] for i in order.tolist()]


def test_webdataset_reads_json_captions_and_skips_samples_without_an_image(tmp_path):
    import webdataset

    tmp_path.mkdir(exist_ok=True)
    with webdataset.TarWriter(str(tmp_path / "shard.tar"), encoder=False) as sink:
        sink.write({"__key__": "a/one", "jpg": _encode(IMAGES[0], "JPEG"), "json": b'{"caption": "first"}'})
        sink.write({"__key__": "a/two", "txt": b"caption without an image"})
        sink.write({"__key__": "a/three", "seg.png": _encode(IMAGES[1])})
    source = open_source(tmp_path, field="f")
    assert [source.name(i) for i in range(len(source))] == ["shard.tar/a/one", "shard.tar/a/three"]
    assert [caption for _, caption in source.read_many([0, 1])] == ["first", ""]


def test_a_corrupt_image_in_a_shard_is_named_with_its_shard_and_key(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as archive:
        for name, content in (("ok.png", _encode(IMAGES[0])), ("bad.png", b"not a png")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    source = open_source(tmp_path, field="spec.data.train.uri")
    with pytest.raises(DataError, match=r"spec.data.train.uri: s.tar/bad is not a readable image.*Fix:"):
        load_images(source, SHAPE)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("shards/train-0.tar.gz", b"", "compressed tar.*Fix: decompress"),
        ("dataset/data-00000-of-00001.arrow", b"", "save_to_disk.*Fix: write the dataset as parquet"),
        ("broken.tar", b"\x01" * 1024, "not a readable tar shard.*Fix:"),
    ],
)
def test_layouts_that_cannot_be_read_at_random_are_refused_with_the_fix(tmp_path, name, content, message):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        open_source(tmp_path, field="spec.data.retain.uri")


def test_parquet_without_an_image_column_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"], "label": [1, 2]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"no image column \(columns: text, label\).*Fix:"):
        open_source(tmp_path, field="f")


def test_an_explicit_format_overrides_detection(tmp_path):
    _write_folder(tmp_path)
    _write_shards(tmp_path / "shards", per_shard=40)
    assert detect_format(tmp_path) == "webdataset"
    assert len(open_source(tmp_path, field="f", fmt="imagefolder")) == len(IMAGES)


def _training_set(root: Path, forget: np.ndarray) -> Path:
    """30 distinct images, the forget image re-encoded losslessly twice (optimised PNG, BMP), and once as JPEG."""
    builders.write_image_folder(IMAGES[:30], root)
    (root / "copy-optimised.png").write_bytes(_encode(forget, optimize=True, compress_level=9))
    (root / "copy.bmp").write_bytes(_encode(forget, "BMP"))
    (root / "copy.jpg").write_bytes(_encode(forget, "JPEG", quality=90))
    return root


def test_exclusion_finds_re_encoded_copies_by_their_pixels_and_near_duplicates_by_distance(tmp_path):
    forget_image = IMAGES[35]
    forget = load_images(open_source(builders.write_image_folder(forget_image[None], tmp_path / "f"), field="f"), SHAPE)
    source = open_source(_training_set(tmp_path / "train", forget_image), field="spec.data.train.uri")
    names = [source.name(i) for i in range(len(source))]

    exact = scan(source, forget, SHAPE, exclude=True)
    assert (exact.scanned, exact.exact_copies, exact.near_duplicates, exact.forget_found) == (33, 2, 0, 1)
    assert sorted(names[i] for i in set(range(33)) - set(exact.kept.tolist())) == ["copy-optimised.png", "copy.bmp"]

    jpeg = np.asarray(Image.open(tmp_path / "train" / "copy.jpg").convert("L"), dtype=np.float64) / 255
    jpeg_rms = np.sqrt(((jpeg - forget_image / 255) ** 2).mean())
    assert 0 < jpeg_rms < 0.05
    near = scan(source, forget, SHAPE, exclude=True, near_duplicate_distance=0.05)
    assert (near.exact_copies, near.near_duplicates, len(near.kept)) == (2, 1, 30)
    assert sorted(names[i] for i in near.kept) == [f"img-{i:05d}.png" for i in range(30)]

    everything = torch.from_numpy(IMAGES[:30].reshape(30, -1)).double() / 255
    brute = np.sqrt(((everything.numpy() - forget_image.reshape(1, -1) / 255) ** 2).sum(1)).min()
    assert near.nearest_distance == pytest.approx(brute, rel=1e-9)


def test_a_retain_set_is_only_checked_for_copies_not_changed(tmp_path):
    forget_image = IMAGES[35]
    forget = load_images(open_source(builders.write_image_folder(forget_image[None], tmp_path / "f"), field="f"), SHAPE)
    source = open_source(_training_set(tmp_path / "retain", forget_image), field="spec.data.retain.uri")
    census = scan(source, forget, SHAPE, exclude=False)
    assert census.exact_copies == 2 and len(census.kept) == 33
    assert census.summary(excluded=False)["excluded"] == 0


def test_l2_distances_match_the_definition():
    generator = torch.Generator().manual_seed(0)
    images, forget = torch.rand(5, 12, generator=generator), torch.rand(3, 12, generator=generator)
    expected = torch.stack([torch.stack([(x - f).norm() for f in forget]) for x in images])
    assert torch.allclose(l2_distances(images.double(), forget.double()), expected.double(), atol=1e-7)


def _peak_bytes(root: Path, forget, monkeypatch) -> int:
    """Peak Python and NumPy allocations while indexing, scanning and drawing 20 batches from `root`."""
    monkeypatch.setattr(exclusion, "CHUNK_ELEMENTS", 64 * 32 * 32)
    tracemalloc.start()
    try:
        source = open_source(root, field="f")
        census = scan(source, forget, (1, 32, 32), exclude=True)
        streamed = StreamedImages(source, census.kept, (1, 32, 32))
        for step in range(20):
            streamed.take(torch.arange(step * 32, step * 32 + 32) % len(streamed))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_images_of_the_dataset(tmp_path, monkeypatch):
    """Loading 4,000 images whole would take 4 MB more than 1,000 do; the index takes ~70 bytes per image."""
    pictures = _images(4000, seed=1, size=32)
    forget_folder = builders.write_image_folder(pictures[:1], tmp_path / "forget")
    forget = load_images(open_source(forget_folder, field="f"), (1, 32, 32))
    small = builders.write_image_folder(pictures[:1000], tmp_path / "small")
    large = builders.write_image_folder(pictures, tmp_path / "large")
    growth = _peak_bytes(large, forget, monkeypatch) - _peak_bytes(small, forget, monkeypatch)
    whole = 3000 * 32 * 32
    assert growth < whole / 4, f"peak grew by {growth} bytes for 3,000 more images"


def _path_only_parquet(path: Path, names: list[str]) -> None:
    """Rows as datasets' to_parquet writes images opened from files: the Image struct with a path, no bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": name} for name in names])}), path)


def test_parquet_rows_that_name_their_image_file_read_it_from_the_dataset_folder_only(tmp_path):
    builders.write_image_folder(IMAGES[:3], tmp_path / "data" / "images")
    _path_only_parquet(tmp_path / "data" / "train.parquet", [f"images/img-{i:05d}.png" for i in range(3)])
    source = open_source(tmp_path / "data", field="f", fmt="parquet")
    assert np.array_equal(load_images(source, SHAPE).pixels[:, 0].numpy(), IMAGES[:3])

    builders.write_image_folder(IMAGES[:1], tmp_path / "outside")
    _path_only_parquet(tmp_path / "elsewhere" / "sub" / "x.parquet", ["../../outside/img-00000.png"])
    with pytest.raises(DataError, match=r"names the image '../../outside/img-00000.png' instead of holding it.*Fix:"):
        load_images(open_source(tmp_path / "elsewhere", field="f", fmt="parquet"), SHAPE)


def test_the_pass_logs_its_progress_whenever_a_chunk_crosses_a_tenth(tmp_path, caplog, monkeypatch):
    """1,200 images read in chunks of 500: every chunk crosses into a new tenth, so each is logged once."""
    from unlearning_trainer.data.prepare import prepare_data
    from unlearning_trainer.spec import parse_spec

    builders.write_image_folder(_images(1200, seed=2), tmp_path / "train")
    builders.write_image_folder(IMAGES[:1], tmp_path / "forget")
    spec = parse_spec(
        {
            "model": {"uri": "m"},
            "data": {"forget": {"uri": str(tmp_path / "forget")}, "train": {"uri": str(tmp_path / "train")}},
            "output": {"uri": "o"},
        }
    )
    monkeypatch.setattr(exclusion, "CHUNK_ELEMENTS", 500 * 8 * 8)
    caplog.set_level("INFO", logger="unlearning_trainer.data")
    prepare_data(spec, lambda uri, field: Path(uri), SHAPE)
    checked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checked")]
    assert checked == [f"checked {n} of 1200 images of spec.data.train.uri" for n in (500, 1000, 1200)]
