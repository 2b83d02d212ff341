"""Peak memory and images/s of the retain-set pass and of training batches, for 1k, 10k and 100k generated images.

For each size the same generated 64×64 RGB images are written as an image folder, WebDataset tar shards and a
Hugging Face parquet folder. Each measurement runs in a fresh process: open the dataset, run the exclusion pass
(decode and hash every image, compare it with 4 forget images, two of which are in the set), then draw 200
random batches of 64 the way training does. Beside it, the same process loads the image folder whole into one
uint8 array (what the trainer did before streaming). Memory is the process's peak resident set above its size
after imports (torch, pyarrow). Writes benchmarks/results/data_memory.md.

    python benchmarks/data_memory.py [--sizes 1000 10000 100000] [--work /tmp/data-memory] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "data_memory.md"
SIZE = 64
LAYOUTS = ("imagefolder", "webdataset", "parquet")
BATCHES, BATCH = 200, 64
PER_SHARD = 2000
"""Images per tar shard and per parquet file."""


def _image(index: int) -> np.ndarray:
    """A smooth coloured blob, different for every index (PNG-compressible like a photo, unlike noise)."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cy, cx, width = (*rng.uniform(8, SIZE - 8, 2).tolist(), rng.uniform(6, 14))
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    return (blob[..., None] * rng.uniform(60, 255, 3)).round().astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_layouts(root: Path, count: int) -> dict[str, Path]:
    """The first `count` images in the three layouts under root/<count>/ (kept between runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = root / str(count)
    folders = {layout: base / layout for layout in LAYOUTS}
    done = base / "done"
    if done.exists():
        return folders
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, count, PER_SHARD):
        stop = min(start + PER_SHARD, count)
        encoded = [_png(_image(i)) for i in range(start, stop)]
        names = [f"img-{i:07d}" for i in range(start, stop)]
        for name, content in zip(names, encoded, strict=True):
            (folders["imagefolder"] / f"{name}.png").write_bytes(content)
        with tarfile.open(folders["webdataset"] / f"train-{start // PER_SHARD:05d}.tar", "w") as archive:
            for name, content in zip(names, encoded, strict=True):
                info = tarfile.TarInfo(f"{name}.png")
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
        images = pa.array([{"bytes": c, "path": f"{n}.png"} for n, c in zip(names, encoded, strict=True)])
        table = pa.table({"image": images, "text": [f"blob {i}" for i in range(start, stop)]})
        pq.write_table(table, folders["parquet"] / f"train-{start // PER_SHARD:05d}.parquet", row_group_size=100)
    done.touch()
    return folders


def measure(folder: Path, layout: str, mode: str) -> dict[str, float]:
    """In this process: the streamed pass and batches, or the whole-folder load; peak RSS above the baseline."""
    import resource

    import psutil
    import pyarrow.parquet  # noqa: F401 - imported before the baseline, like torch, so only data counts
    import torch

    from unlearning_trainer.data.decode import decode_image
    from unlearning_trainer.data.exclusion import scan
    from unlearning_trainer.data.images import ImageSet, StreamedImages
    from unlearning_trainer.data.sampling import InfiniteSampler
    from unlearning_trainer.data.sources import open_source

    torch.set_num_threads(1)
    shape = (3, SIZE, SIZE)
    forget_pixels = torch.from_numpy(np.stack([_image(i).transpose(2, 0, 1) for i in (0, 1, 10**9, 10**9 + 1)]))
    forget = ImageSet(forget_pixels, ["a", "b", "c", "d"], ["a", "b", "c", "d"], None)
    baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    if mode == "whole":
        files = sorted(folder.glob("*.png"))
        pixels = np.stack([decode_image(path.read_bytes(), shape) for path in files])
        result = {"images": len(pixels), "pass_per_s": len(pixels) / (time.perf_counter() - started)}
    else:
        source = open_source(folder, field="spec.data.train.uri", fmt=layout)
        census = scan(source, forget, shape, exclude=True)
        scanned = time.perf_counter()
        streamed = StreamedImages(source, census.kept, shape)
        sampler = InfiniteSampler(len(streamed), 0)
        for index in range(BATCHES):
            streamed.take(sampler.micro_batch(index, BATCH))
        result = {
            "images": census.scanned,
            "excluded": census.exact_copies,
            "pass_per_s": census.scanned / (scanned - started),
            "batch_per_s": BATCHES * BATCH / (time.perf_counter() - scanned),
        }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {**result, "peak_mib": (peak - baseline) / 2**20}


def _run(folder: Path, layout: str, mode: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--measure", str(folder), layout, mode]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def report(rows: list[dict], sizes: list[int]) -> str:
    def cell(size: int, layout: str, mode: str) -> dict:
        return next(r for r in rows if r["size"] == size and r["layout"] == layout and r["mode"] == mode)

    lines = [
        "# Retain data: streamed vs loaded whole",
        "",
        f"`python benchmarks/data_memory.py --sizes {' '.join(map(str, sizes))}` on {platform.processor() or 'CPU'} "
        f"({platform.system()}), Python {platform.python_version()}. Generated {SIZE}×{SIZE} RGB PNG images; "
        f"tar shards and parquet files of {PER_SHARD} images (parquet row groups of 100). Peak memory: the "
        "process's peak resident set above its size after imports (torch, pyarrow). The pass decodes, hashes and "
        "compares every image with 4 forget images (2 of them in the set, both excluded); then "
        f"{BATCHES} random batches of {BATCH} are drawn as training draws them. Loaded whole: every image decoded "
        "into one uint8 array.",
        "",
        "| images | layout | peak memory (MiB) | pass (images/s) | batches (images/s) | excluded |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for size in sizes:
        for layout in LAYOUTS:
            r = cell(size, layout, "streamed")
            lines.append(
                f"| {size:,} | {layout}, streamed | {r['peak_mib']:.1f} | {r['pass_per_s']:,.0f} | "
                f"{r['batch_per_s']:,.0f} | {r['excluded']} |"
            )
        r = cell(size, "imagefolder", "whole")
        lines.append(f"| {size:,} | imagefolder, loaded whole | {r['peak_mib']:.1f} | {r['pass_per_s']:,.0f} | | |")
    small, large = sizes[0], sizes[-1]
    lines += ["", f"Ratios, {large:,} images against {small:,} (memory growth with the dataset):", ""]
    for layout in LAYOUTS:
        ratio = cell(large, layout, "streamed")["peak_mib"] / max(cell(small, layout, "streamed")["peak_mib"], 0.1)
        lines.append(f"- {layout}, streamed: {ratio:.2f}×")
    whole = cell(large, "imagefolder", "whole")["peak_mib"] / max(cell(small, "imagefolder", "whole")["peak_mib"], 0.1)
    streamed_vs_whole = cell(large, "imagefolder", "whole")["peak_mib"] / max(
        cell(large, "imagefolder", "streamed")["peak_mib"], 0.1
    )
    lines += [
        f"- imagefolder, loaded whole: {whole:.2f}×",
        f"- at {large:,} images, loading whole takes {streamed_vs_whole:.1f}× the memory of streaming",
        "",
        "The streamed pass keeps an index (a name and a few offsets per image, or only row-group sizes for parquet)",
        "and one chunk of decoded images; parquet batches read a 100-row group per image drawn at random, which",
        "is why its batch rate is the lowest: larger row groups make that worse, a re-shard to tar makes it better.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/data-memory"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        folder, layout, mode = args.measure
        print(json.dumps(measure(Path(folder), layout, mode)))
        return
    rows = []
    for size in args.sizes:
        started = time.perf_counter()
        folders = write_layouts(args.work, size)
        print(f"{size} images in three layouts ready in {time.perf_counter() - started:.0f} s", flush=True)
        for layout in LAYOUTS:
            rows.append({"size": size, "layout": layout, "mode": "streamed", **_run(folders[layout], layout, "s")})
            print(rows[-1], flush=True)
        rows.append(
            {"size": size, "layout": "imagefolder", "mode": "whole", **_run(folders["imagefolder"], "", "whole")}
        )
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, args.sizes))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
