"""The "digits-memorized" scenario: real handwritten digits plus injected copies of an out-of-distribution glyph.

Modeled on the SISS paper's MNIST T-shirt protocol, scaled to a CPU: scikit-learn's bundled digits (1,797 real
8×8 images, upsampled to 16×16), 36 copies of an "X in a box" glyph (≈2% of the training set) and 36 copies of
one real digit. A small DDPM trained on all of it memorizes the glyph; the retrain oracle never sees it.

Two forget cases share the base model:
- `glyph`: forget the 36 glyph copies, keep every digit (the headline case);
- `digit`: forget the 36 copies of one real digit, keep everything else.

A stratified tenth of the real digits (`data/holdout/`) is never trained on by any shipped model: the non-members
of the membership-inference check.

`python -m unlearning_trainer.scenarios.digits build OUT` reproduces the shipped files with a fixed seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from unlearning_trainer.data.sampling import InfiniteSampler, generator_for
from unlearning_trainer.evaluation import quality
from unlearning_trainer.evaluation.quality import DomainClassifier
from unlearning_trainer.objectives import losses
from unlearning_trainer.scenarios import builders

logger = logging.getLogger("unlearning_trainer.scenarios.digits")

SIZE = 16
COPIES = 36
DUPLICATED_DIGIT_INDEX = 1572
"""Index in `load_digits()` of the duplicated real digit: a 9, the digit farthest from its nearest neighbour
(L2 2.66 in [0, 1] pixels at 16×16), so that copies of it can be told from other digits."""
SEED = 0
CASES = ("glyph", "digit")
HOLDOUT_FRACTION = 0.1


def glyph(size: int = SIZE) -> np.ndarray:
    """An 'X in a box': a 1-pixel border and both diagonals, unlike any handwritten digit."""
    image = np.zeros((size, size), np.uint8)
    image[0, :] = image[-1, :] = image[:, 0] = image[:, -1] = 255
    np.fill_diagonal(image, 255)
    np.fill_diagonal(np.fliplr(image), 255)
    return image


def digits(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (N, size, size) images (bilinear upsampling) and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).float()[:, None]
    upsampled = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (upsampled[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy(), bunch.target


def split() -> tuple[np.ndarray, np.ndarray]:
    """Indices into `digits()` of the trained real digits and the held-out ones (a stratified tenth, seed 0).

    The duplicated digit is always trained on: the `digit` case forgets it.
    """
    from sklearn.model_selection import train_test_split

    _, labels = digits()
    candidates = np.delete(np.arange(len(labels)), DUPLICATED_DIGIT_INDEX)
    trained, held_out = train_test_split(
        candidates, test_size=HOLDOUT_FRACTION, random_state=SEED, stratify=labels[candidates]
    )
    return np.sort(np.append(trained, DUPLICATED_DIGIT_INDEX)), np.sort(held_out)


def holdout() -> np.ndarray:
    """The held-out real digits: same distribution as the training set, seen by no shipped model."""
    real, _ = digits()
    return real[split()[1]]


def cases() -> dict[str, dict[str, np.ndarray]]:
    """forget and retain images of both cases; the training set is forget ∪ retain in each."""
    real, _ = digits()
    trained = real[split()[0]]
    original = real[DUPLICATED_DIGIT_INDEX]
    glyphs = np.stack([glyph()] * COPIES)
    duplicates = np.stack([original] * (COPIES - 1))
    others = trained[~(trained == original).all(axis=(1, 2))]
    digit_copies = np.concatenate([original[None], duplicates])
    return {
        "glyph": {"forget": glyphs, "retain": np.concatenate([trained, duplicates])},
        "digit": {"forget": digit_copies, "retain": np.concatenate([others, glyphs])},
    }


def unet() -> UNet2DModel:
    """1.06 M parameters: three plain down/up blocks (32, 64, 64 channels), attention only in the 4×4 mid block."""
    return builders.tiny_unet(sample_size=SIZE, block_out_channels=(32, 64, 64), seed=SEED)


def train_ddpm(
    images: np.ndarray, *, steps: int, seed: int = SEED, batch_size: int = 64, learning_rate: float = 5e-4
) -> tuple[UNet2DModel, DDPMScheduler]:
    """Train a DDPM from scratch: AdamW, 200 warm-up steps then cosine decay, clip 1.0; returns the EMA weights."""
    model, scheduler = unet(), builders.ddpm_scheduler()
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-6)
    warmup = 200

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    data = torch.from_numpy(images).float()[:, None] / 127.5 - 1
    sampler = InfiniteSampler(len(data), seed)
    started = time.perf_counter()
    for step in range(steps):
        x = data[sampler.micro_batch(step, batch_size)]
        noise = losses.draw_noise(x.shape, scheduler.alphas_cumprod, generator_for(seed, step))
        loss = losses.naive_deletion(lambda m, t: model(m, t).sample, x, noise).keep / x[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        ema.step(model.parameters())
        if step % 500 == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f (%.0f s)", step, steps, loss.item(), time.perf_counter() - started)
    ema.copy_to(model.parameters())
    return model, scheduler


def train_classifier(seed: int = SEED) -> tuple[DomainClassifier, float]:
    """A 64-unit MLP on the real digits (16×16, [0, 1]); returns it and its held-out accuracy.

    Reference statistics for the Fréchet distance come from the features of all 1,797 real digits.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    images, labels = digits()
    x = images.reshape(len(images), -1) / 255.0
    x_train, x_test, y_train, y_test = train_test_split(x, labels, test_size=0.2, random_state=seed, stratify=labels)
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=seed).fit(x_train, y_train)
    accuracy = float(mlp.score(x_test, y_test))
    tensors = {
        "hidden.weight": torch.from_numpy(mlp.coefs_[0].T),
        "hidden.bias": torch.from_numpy(mlp.intercepts_[0]),
        "output.weight": torch.from_numpy(mlp.coefs_[1].T),
        "output.bias": torch.from_numpy(mlp.intercepts_[1]),
        "reference_mean": torch.zeros(64),
        "reference_cov": torch.eye(64),
    }
    classifier = DomainClassifier(tensors)
    reference = torch.from_numpy(images).float()[:, None] / 255.0
    mean, cov = quality.feature_statistics(classifier.features(reference))
    classifier.tensors["reference_mean"], classifier.tensors["reference_cov"] = mean, cov
    return classifier, accuracy


def write_case_data(root: Path) -> None:
    """data/<case>/{forget,retain}/ and data/holdout/ image folders."""
    for case, sets in cases().items():
        for name, images in sets.items():
            builders.write_image_folder(images, root / "data" / case / name, prefix=name)
    builders.write_image_folder(holdout(), root / "data" / "holdout", prefix="holdout")


def write_manifest(root: Path) -> Path:
    """MANIFEST.sha256: one `<sha256>  <relative path>` line per shipped file, sorted."""
    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(root).as_posix()}"
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "MANIFEST.sha256"
    ]
    manifest = root / "MANIFEST.sha256"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


MODEL_NOTES = {
    "base": "every image of both cases except the held-out digits",
    "oracle": "the glyph case's retain set: every image except the glyph copies and the held-out digits",
    "oracle-digit": "the digit case's retain set: every image except the duplicated digit and the held-out digits",
}
"""What each model trained on, recorded in build.json (the Pareto table quotes the oracles')."""


def build(root: Path, *, steps: int, parts: tuple[str, ...]) -> None:
    """Write the data, the quality classifier, the base model (trained on everything but the holdout) and each
    case's retrain oracle (trained on its retain set only): `oracle/` for the glyph, `oracle-digit/`."""
    root.mkdir(parents=True, exist_ok=True)
    write_case_data(root)
    sets = cases()
    record = root / "build.json"
    info: dict[str, object] = json.loads(record.read_text()) if record.is_file() else {}
    info |= {"steps": steps, "seed": SEED, "copies": COPIES}
    if "classifier" in parts:
        classifier, accuracy = train_classifier()
        classifier.save(root / "classifier.safetensors")
        info["classifierTestAccuracy"] = accuracy
    if "base" in parts:
        everything = np.concatenate([sets["glyph"]["forget"], sets["glyph"]["retain"]])
        builders.save_pipeline(*train_ddpm(everything, steps=steps), root / "base")
    for part, case in (("oracle", "glyph"), ("oracle-digit", "digit")):
        if part in parts:
            builders.save_pipeline(*train_ddpm(sets[case]["retain"], steps=steps), root / part)
    info |= {part: note for part, note in MODEL_NOTES.items() if part in parts}
    record.write_text(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="write data and train the models (about 10 minutes each)")
    build_parser.add_argument("out", type=Path)
    build_parser.add_argument("--steps", type=int, default=5000)
    build_parser.add_argument(
        "--parts",
        nargs="+",
        choices=("data", "classifier", "base", "oracle", "oracle-digit"),
        default=["classifier", "base", "oracle", "oracle-digit"],
    )
    manifest_parser = commands.add_parser("manifest", help="rewrite MANIFEST.sha256")
    manifest_parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.command == "build":
        build(args.out, steps=args.steps, parts=tuple(args.parts))
    write_manifest(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
