"""Draw docs/architecture.png: how an UnlearningJob flows through the operator, the trainer pods, S3 and MLflow.

python docs/make_architecture_diagram.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).parent / "architecture.png"

BLUE, GREEN, ORANGE, GREY = "#dbe9f6", "#dff0d8", "#fbe5cc", "#eeeeee"
BOXES: dict[str, tuple[float, float, float, float, str, str]] = {
    # name: (x, y, width, height, colour, text)
    "user": (0.2, 5.6, 2.6, 1.1, GREY, "kubectl apply -f job.yaml\n(or unlearn run job.yaml\non one machine)"),
    "crd": (3.6, 5.6, 2.8, 1.1, BLUE, "UnlearningJob\nspec → status: phase, progress,\nresumedFrom, mlflow, audit"),
    "operator": (7.3, 5.6, 2.9, 1.1, BLUE, "operator (kopf)\nvalidate · create · follow ·\nrestart · resume"),
    "children": (
        7.3,
        3.3,
        2.9,
        1.5,
        BLUE,
        "ConfigMap (resolved spec)\nheadless Service\nIndexed Job <name>-r<attempt>",
    ),
    "pods": (
        3.6,
        3.3,
        2.8,
        1.5,
        GREEN,
        "trainer pods × workers\ntorchrun → unlearn run\nSISS step: all-reduce,\nnorm fix, AdamW",
    ),
    "s3": (
        0.2,
        3.3,
        2.6,
        1.5,
        ORANGE,
        "S3\nmodel · forget / retain data\ncheckpoints/step-N\nunlearned model · audit.json",
    ),
    "mlflow": (3.6, 0.9, 2.8, 1.3, ORANGE, "MLflow\none run per job: params,\nmetrics, samples, registry"),
}
ARROWS = [
    ("user", "crd", "create"),
    ("crd", "operator", "watch"),
    ("operator", "children", "create / delete"),
    ("children", "pods", "schedule"),
    ("pods", "s3", "read · write"),
    ("pods", "mlflow", "log"),
    ("mlflow", "operator", "progress"),
    ("operator", "crd", "status"),
]


def _anchor(name: str, towards: str) -> tuple[float, float]:
    """The middle of the side of box `name` that faces box `towards`."""
    x, y, w, h, *_ = BOXES[name]
    tx, ty, tw, th, *_ = BOXES[towards]
    dx, dy = (tx + tw / 2) - (x + w / 2), (ty + th / 2) - (y + h / 2)
    if abs(dx) > abs(dy):
        return (x + w, y + h / 2) if dx > 0 else (x, y + h / 2)
    return (x + w / 2, y + h) if dy > 0 else (x + w / 2, y)


def _around_the_right(axes: plt.Axes) -> tuple[tuple[float, float], tuple[float, float]]:
    """MLflow → operator runs right of the other boxes; draws the first legs, returns the arrow's last leg."""
    x, y, w, h, *_ = BOXES["mlflow"]
    ox, oy, ow, oh, *_ = BOXES["operator"]
    lane = ox + ow + 0.3
    axes.plot([x + w, lane, lane], [y + h / 2, y + h / 2, oy + oh / 2], color="#333333", linewidth=1.2)
    return (lane, oy + oh / 2), (ox + ow, oy + oh / 2)


def main() -> None:
    figure, axes = plt.subplots(figsize=(10.6, 7.0), dpi=110)
    axes.set_xlim(0, 10.8)
    axes.set_ylim(0.5, 7.0)
    axes.axis("off")
    for x, y, w, h, colour, text in BOXES.values():
        axes.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", facecolor=colour, edgecolor="#555555"))
        axes.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9.5)
    offsets = {("crd", "operator"): 0.18, ("operator", "crd"): -0.18}
    for source, target, label in ARROWS:
        start, end = _anchor(source, target), _anchor(target, source)
        shift = offsets.get((source, target), 0.0)
        start, end = (start[0], start[1] + shift), (end[0], end[1] + shift)
        if source == "mlflow" and target == "operator":
            start, end = _around_the_right(axes)
        axes.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#333333", linewidth=1.2))
        if source == "mlflow" and target == "operator":
            x, y = start[0] + 0.08, (BOXES["mlflow"][1] + start[1]) / 2
            axes.text(x, y, label, ha="left", va="center", fontsize=8.5, color="#333333", rotation=90)
        elif start[0] == end[0]:
            axes.text(start[0] + 0.08, (start[1] + end[1]) / 2, label, ha="left", va="center", fontsize=8.5)
        else:
            middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + (0.14 if shift >= 0 else -0.22))
            axes.text(*middle, label, ha="center", va="bottom", fontsize=8.5, color="#333333")
    axes.set_title("An UnlearningJob, end to end", fontsize=12)
    figure.tight_layout()
    figure.savefig(OUT)
    print(OUT)


if __name__ == "__main__":
    main()
