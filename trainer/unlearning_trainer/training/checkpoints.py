"""Resumable training checkpoints: model weights (safetensors), optimizer state, step and metric history.

The optimizer state is read back with `torch.load(weights_only=True)`, which refuses arbitrary pickles; the
LR scheduler's state (step counters and rates) is JSON. No RNG state is stored because none is needed: every
batch and noise draw is a function of (seed, step, micro-batch), and the global torch RNG (dropout) is reseeded
from (seed, step, rank) before each step, so a resumed run draws exactly what an uninterrupted one would.
A checkpoint is written to a temporary folder and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

PATTERN = re.compile(r"^step-(\d+)$")


class Mirror(Protocol):
    """Copies checkpoints to and from the output store, so a new pod (or machine) resumes where the last one
    stopped. Local outputs need none: the checkpoints already live next to the output."""

    def push(self, folder: Path, *, keep: int) -> None:
        """Upload one checkpoint folder and delete all but the newest `keep` in the store."""
        ...

    def pull(self, root: Path) -> None:
        """Download the newest complete checkpoint in the store into `root`, if `root` has none."""
        ...

    def clear(self) -> None:
        """Delete every checkpoint in the store (a restart)."""
        ...


@dataclass
class TrainingState:
    step: int = 0
    cached_forget_scale: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None
    """What trained these weights (training/fingerprint.py); None in checkpoints of older versions."""


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := PATTERN.match(p.name)) and p.is_dir()]
    return sorted(found)


def save(
    root: Path,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
    *,
    keep: int,
) -> Path:
    """Write checkpoint `step-N` under `root` and delete all but the newest `keep`."""
    target = root / f"step-{state.step:06d}"
    staging = root / f".staging-step-{state.step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, staging / "model.safetensors")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    document = {
        "step": state.step,
        "cachedForgetScale": state.cached_forget_scale,
        "scheduler": scheduler.state_dict(),
        "history": state.history,
        "fingerprint": state.fingerprint,
    }
    (staging / "state.json").write_text(json.dumps(document))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_latest(
    root: Path,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainingState | None:
    """Restore the newest checkpoint under `root` into `unet`, `optimizer` and `scheduler`; None if none."""
    checkpoints = list_checkpoints(root)
    if not checkpoints:
        return None
    _, folder = checkpoints[-1]
    unet.load_state_dict(load_file(folder / "model.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    raw = json.loads((folder / "state.json").read_text())
    if "scheduler" in raw:
        scheduler.load_state_dict(raw["scheduler"])
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step\\(\\)", category=UserWarning)
            for _ in range(raw["step"]):
                scheduler.step()
    return TrainingState(
        step=raw["step"],
        cached_forget_scale=raw["cachedForgetScale"],
        history=raw["history"],
        fingerprint=raw.get("fingerprint"),
    )
