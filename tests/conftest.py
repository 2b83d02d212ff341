"""Shared fixtures: tiny diffusers models and image folders built in code, and job documents."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from unlearning_trainer.data.images import ImageSet
from unlearning_trainer.scenarios import builders

IMAGE_SIZE = 8


def forget_glyph() -> np.ndarray:
    """An 8×8 'X in a box': unlike the random-blob retain images."""
    glyph = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    glyph[0, :] = glyph[-1, :] = glyph[:, 0] = glyph[:, -1] = 255
    np.fill_diagonal(glyph, 255)
    np.fill_diagonal(np.fliplr(glyph), 255)
    return glyph


def retain_images(count: int, seed: int = 0) -> np.ndarray:
    """Smooth random blobs in [0, 255]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    centers = rng.uniform(2, IMAGE_SIZE - 2, size=(count, 2))
    widths = rng.uniform(1.0, 2.5, size=count)
    blobs = np.exp(
        -((yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2)
        / (2 * widths[:, None, None] ** 2)
    )
    return (blobs * 255).round().astype(np.uint8)


def grayscale_set(pixels: np.ndarray) -> ImageSet:
    """An in-memory ImageSet of (N, H, W) uint8 grayscale images, named and digested by index."""
    names = [f"{i}.png" for i in range(len(pixels))]
    return ImageSet(torch.from_numpy(pixels)[:, None], names, names, None)


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with model/ (tiny untrained DDPM), forget/ (3 copies of one glyph) and retain/ (48 blobs)."""
    root = tmp_path_factory.mktemp("scenario")
    builders.save_pipeline(builders.tiny_unet(sample_size=IMAGE_SIZE), builders.ddpm_scheduler(), root / "model")
    builders.write_image_folder(np.stack([forget_glyph()] * 3), root / "forget")
    builders.write_image_folder(retain_images(48), root / "retain")
    return root


TEXT_TO_IMAGE_SIZE = 16
TEXT_TO_IMAGE_FORGET_CAPTION = "x in a box"


def colour_glyph(size: int = TEXT_TO_IMAGE_SIZE) -> np.ndarray:
    """A size×size RGB 'X in a box' with a red X."""
    glyph = np.zeros((size, size, 3), np.uint8)
    glyph[[0, -1], :] = glyph[:, [0, -1]] = 255
    index = np.arange(size)
    glyph[index, index] = glyph[index, size - 1 - index] = (255, 40, 40)
    return glyph


def colour_blobs(count: int, size: int = TEXT_TO_IMAGE_SIZE) -> np.ndarray:
    """Smooth blobs of random colours, (count, size, size, 3) uint8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for _ in range(count):
        cy, cx = rng.uniform(4, size - 4, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(2, 4) ** 2))
        images.append((blob[..., None] * rng.uniform(80, 255, size=3)).round().astype(np.uint8))
    return np.stack(images)


@pytest.fixture(scope="session")
def text_to_image_scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model/ (tiny untrained StableDiffusionPipeline), forget/ (3 captioned glyphs), retain/ (24 blobs)."""
    root = tmp_path_factory.mktemp("text-to-image")
    builders.save_text_to_image_pipeline(root / "model", image_size=TEXT_TO_IMAGE_SIZE)
    forget = builders.write_image_folder(np.stack([colour_glyph()] * 3), root / "forget", prefix="glyph")
    builders.write_captions(forget, {f"glyph-{i:05d}.png": TEXT_TO_IMAGE_FORGET_CAPTION for i in range(3)})
    retain = builders.write_image_folder(colour_blobs(24), root / "retain", prefix="blob")
    builders.write_captions(retain, {f"blob-{i:05d}.png": "a coloured blob" for i in range(24)})
    return root


BASE_JOB: dict[str, Any] = {
    "apiVersion": "unlearning.dev/v1alpha1",
    "kind": "UnlearningJob",
    "metadata": {"name": "test-job"},
    "spec": {
        "model": {"uri": "model"},
        "data": {"forget": {"uri": "forget"}, "retain": {"uri": "retain"}},
        "method": {"name": "siss", "lambda": 0.5, "forgetGradNorm": 5.0},
        "training": {"steps": 4, "batchSize": 8, "checkpointEvery": 2},
        "evaluation": {
            "every": 2,
            "numSamples": 8,
            "inferenceSteps": 4,
            "memorizationThreshold": 2.0,
            "retainImages": 16,
            "nll": {"timesteps": 10},
        },
        "output": {"uri": "out"},
    },
}


@pytest.fixture
def job_document() -> dict[str, Any]:
    """A fresh, valid job document that a test may edit."""
    return copy.deepcopy(BASE_JOB)


def copy_scenario(source: Path, target: Path, parts: tuple[str, ...] = ("model", "forget", "retain")) -> Path:
    """Copy a scenario's folders into `target`, where a test may write next to them; returns `target`."""
    for name in parts:
        shutil.copytree(source / name, target / name)
    return target


def write_job(folder: Path, document: dict[str, Any], name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (SeaweedFS) for the whole session; tests that stop it must start it again."""
    from tests.servers import S3Server

    server = S3Server(root=tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_scenario(scenario: Path, s3_server, request) -> dict[str, str]:
    """The tiny scenario uploaded to S3 under a prefix unique to the test; the output URI goes next to it."""
    prefix = request.node.name.replace("[", "-").replace("]", "")
    uris = {
        "model": f"s3://models/{prefix}/tiny-ddpm",
        "forget": f"s3://datasets/{prefix}/forget",
        "retain": f"s3://datasets/{prefix}/retain",
        "output": f"s3://outputs/{prefix}/unlearned",
    }
    for name in ("model", "forget", "retain"):
        s3_server.upload_folder(scenario / name, uris[name])
    return uris


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, s3_server):
    """A real MLflow tracking server (sqlite backend, artifacts on the S3 server)."""
    from tests.servers import MlflowServer

    server = MlflowServer(root=tmp_path_factory.mktemp("mlflow"), s3=s3_server)
    server.start()
    yield server
    server.stop()
