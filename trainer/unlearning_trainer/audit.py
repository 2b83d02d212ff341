"""The audit record of a deletion request: what was forgotten, how, and what the evidence says.

It holds digests, never data: the sha256 of every forgotten file, the model digests before and after,
the method and hyperparameters, the code version, the metrics before and after, a verdict against the
thresholds in `spec.audit`, and the limits of what those metrics prove. Pure functions, no I/O but reading
the files to digest.
"""

from __future__ import annotations

import hashlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unlearning_trainer import __version__
from unlearning_trainer.spec import MethodSpec, UnlearningJob

MODEL_FILES = (
    "model_index.json",
    "unet",
    "scheduler",
    "vae",
    "text_encoder",
    "tokenizer",
    "pytorch_lora_weights.safetensors",
)
"""What a published model consists of: a pipeline's folders, or a LoRA adapter's weights (output.format: adapter)."""

LIMITS = (
    "The memorization rate is estimated from {samples} generated samples: a rate of 0 means no sample came "
    "within the threshold; at 95% confidence the true rate is below {upper:.2%}.",
    "The NLL and denoising losses are measured on the listed forget images only; near-duplicates that are "
    "not in the forget set are not covered by this record.",
    "Unlearning fine-tunes the model towards one retrained without the data; it is not a retraining, and "
    "these metrics are evidence of forgetting, not a proof of it.",
    "The retain loss is the denoising error on a fixed subset of retained images; it tracks, but does not "
    "guarantee, the quality of generated samples.",
)
MEMBERSHIP_LIMITS = (
    "Membership evidence comes from two attacks (a loss attack and SimA) run by whoever holds the weights; a "
    "stronger attacker (shadow models, many queries) may still tell the forget images apart.",
    "Percentiles are among {non_members} held-out images, so they move in steps of {step:.2g}; an AUC near 0.5 "
    "before unlearning means the attacks could not tell members from non-members even then, and then a "
    "non-member-like forget score proves little.",
    "Scores are not calibrated per image: an image that is hard to denoise (sharp edges, unlike the rest of the "
    "data) can score like a non-member even while memorized, so read the percentile after unlearning against the "
    "one before, and against a model retrained without the data where one exists.",
    "The held-out images are only valid non-members if the model never trained on them; the record cannot check "
    "that beyond refusing copies of the forget images.",
)
NO_HOLDOUT = (
    "skipped: the job has no data.holdout (images from the same distribution that the model never saw), so there "
    "were no non-members to compare the forget images with"
)


def model_digest(folder: Path) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs of a pipeline's model files."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] in MODEL_FILES)
    for path in files:
        digest.update(
            f"{path.relative_to(folder).as_posix()} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode()
        )
    return digest.hexdigest()


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}"


def verdict(job: UnlearningJob, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Each check with its value, its threshold and whether it passed; `passed` is all of them."""
    audit = job.spec.audit
    retain_limit = before["retain_loss"] * (1 + audit.max_retain_loss_increase)
    checks = [
        {
            "check": "memorization rate after unlearning",
            "value": after["memorization_rate"],
            "threshold": f"<= {audit.max_memorization_rate}",
            "passed": after["memorization_rate"] <= audit.max_memorization_rate,
        },
        {
            "check": "forget-set NLL (bits/dim) rose",
            "value": after["forget_nll_bpd"],
            "threshold": f"> {before['forget_nll_bpd']:.4f} (before)",
            "passed": after["forget_nll_bpd"] > before["forget_nll_bpd"],
        },
        {
            "check": "retain loss kept",
            "value": after["retain_loss"],
            "threshold": f"<= {retain_limit:.4f} (before + {audit.max_retain_loss_increase:.0%})",
            "passed": after["retain_loss"] <= retain_limit,
        },
    ]
    if "mia_loss_forget_percentile" in after:
        lowest = min(after["mia_loss_forget_percentile"], after["mia_sima_forget_percentile"])
        checks.append(
            {
                "check": "forget images score like non-members (lowest membership percentile, both attacks)",
                "value": lowest,
                "threshold": f">= {audit.min_membership_percentile}",
                "passed": lowest >= audit.min_membership_percentile,
            }
        )
    return {"passed": all(check["passed"] for check in checks), "checks": checks}


def build_record(
    job: UnlearningJob,
    *,
    forget_files: list[tuple[str, str]],
    model_before: str,
    model_after: str | None,
    metrics: dict[str, Any],
    tracking: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit record as a JSON-ready dict. `forget_files` holds (file name, sha256) pairs."""
    spec = job.spec
    before, after = metrics.get("before"), metrics.get("after")
    samples = spec.evaluation.num_samples
    return {
        "kind": "UnlearningAuditRecord",
        "version": 1,
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "request": {
            "id": spec.audit.request_id,
            "job": job.metadata.name,
            "namespace": job.metadata.namespace,
            "uid": (job.metadata.model_extra or {}).get("uid"),
        },
        "forgotten": {
            "count": len(forget_files),
            "distinct": len({digest for _, digest in forget_files}),
            "sha256": [{"file": name, "sha256": digest} for name, digest in forget_files],
        },
        "model": {
            "uri": spec.model.uri,
            "sha256Before": model_before,
            "output": spec.output.uri,
            "sha256After": model_after,
        },
        "data": _data_section(job, metrics.get("data")),
        "method": spec.method.model_dump(by_alias=True),
        "training": spec.training.model_dump(by_alias=True),
        "samplingForm": metrics.get("samplingForm"),
        "codeVersion": code_version(),
        "status": metrics.get("status"),
        "steps": metrics.get("steps"),
        "stoppedEarly": metrics.get("stoppedEarly", False),
        "metricsBefore": before,
        "metricsAfter": after,
        "verdict": verdict(job, before, after) if before and after else None,
        "relearning": metrics.get("relearning"),
        "membership": _membership_section(job, metrics),
        "tracking": tracking,
        "limits": [line.format(samples=samples, upper=3.0 / samples) for line in LIMITS],
    }


def _data_section(job: UnlearningJob, data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where the retained data came from and what the pass over it found (counts, never images)."""
    if data is None:
        return None
    spec = job.spec.data
    return {
        "retainFrom": data["retainFrom"],
        "uri": spec.kept[1].uri,
        "generated": data.get("generated"),
        "scanned": data["scanned"],
        "retained": data["retain"],
        "excludedExactCopies": data["exactCopies"] if data["excluded"] else 0,
        "excludedNearDuplicates": data["nearDuplicates"] if data["excluded"] else 0,
        "nearDuplicateDistance": spec.near_duplicate_distance,
        "forgetImagesFound": data["forgetFound"],
        "nearestRetainedDistance": data["nearestKeptDistance"],
        "sha256": data["sha256"],
        "warnings": data["warnings"],
    }


def _membership_section(job: UnlearningJob, metrics: dict[str, Any]) -> dict[str, Any]:
    """Each attack's AUC and lowest forget percentile before and after, or why the check was skipped."""
    data, before, after = metrics.get("data") or {}, metrics.get("before") or {}, metrics.get("after") or {}
    non_members = data.get("holdout")
    if not non_members:
        return {"evaluated": False, "reason": NO_HOLDOUT}
    attacks = {
        attack: {
            "aucBefore": before.get(f"mia_{attack}_auc"),
            "aucAfter": after.get(f"mia_{attack}_auc"),
            "forgetPercentileBefore": before.get(f"mia_{attack}_forget_percentile"),
            "forgetPercentileAfter": after.get(f"mia_{attack}_forget_percentile"),
            "forgetPercentileMeanAfter": after.get(f"mia_{attack}_forget_percentile_mean"),
        }
        for attack in ("loss", "sima")
    }
    percentiles = metrics.get("forgetPercentiles") or {}
    return {
        "evaluated": True,
        "members": min(job.spec.evaluation.retain_images, data["retain"]),
        "nonMembers": non_members,
        "holdoutUri": job.spec.data.holdout.uri if job.spec.data.holdout else None,
        "attacks": attacks,
        "forgetImages": {"before": percentiles.get("before"), "after": percentiles.get("after")},
        "limits": [line.format(non_members=non_members, step=100 / non_members) for line in MEMBERSHIP_LIMITS],
    }


def render(record: dict[str, Any]) -> str:
    """A human-readable summary of an audit record, for `unlearn report`."""
    request = record["request"]
    lines = [
        f"Unlearning audit record — job {request['job']}"
        + (f" (request {request['id']})" if request.get("id") else ""),
        f"  created {record['createdAt']}, code {record['codeVersion']}, status {record['status']} "
        f"after {record['steps']} steps" + (" (training.stopWhen met)" if record.get("stoppedEarly") else ""),
        f"  method {record['method']['name']} "
        + ", ".join(f"{k}={v}" for k, v in _method_settings(record["method"]).items()),
        f"  forgot {record['forgotten']['count']} files ({record['forgotten']['distinct']} distinct)",
        *_render_data(record.get("data")),
        f"  model {record['model']['uri']} sha256 {record['model']['sha256Before'][:16]}…",
        f"     -> {record['model']['output']} sha256 {(record['model']['sha256After'] or 'none')[:16]}…",
    ]
    before, after = record.get("metricsBefore") or {}, record.get("metricsAfter") or {}
    if before and after:
        lines.append(f"  {'metric':<22}{'before':>12}{'after':>12}")
        for key in ("memorization_rate", "forget_nll_bpd", "forget_loss", "retain_loss", "quality_is", "quality_fd"):
            if key in before and key in after:
                lines.append(f"  {key:<22}{before[key]:>12.4g}{after[key]:>12.4g}")
    if record.get("verdict"):
        lines.append("  verdict: " + ("PASSED" if record["verdict"]["passed"] else "FAILED"))
        for check in record["verdict"]["checks"]:
            mark = "ok " if check["passed"] else "NO "
            lines.append(f"    [{mark}] {check['check']}: {check['value']:.4g} (needs {check['threshold']})")
    relearning = record.get("relearning")
    if relearning:
        lines.append(
            f"  relearning probe: after {relearning['steps']:.0f} steps of fine-tuning on retain data only, "
            f"memorization rate {relearning['memorization_rate']:.4g}, forget NLL {relearning['forget_nll_bpd']:.4g}"
        )
    lines.extend(_render_membership(record.get("membership")))
    lines.append("  limits of this evidence:")
    lines.extend(f"    - {limit}" for limit in record["limits"])
    return "\n".join(lines)


def _render_membership(membership: dict[str, Any] | None) -> list[str]:
    if not membership:
        return []
    if not membership["evaluated"]:
        return [f"  membership inference: {membership['reason']}"]
    lines = [
        f"  membership inference ({membership['members']} members vs {membership['nonMembers']} held-out images; "
        "AUC 0.5 = cannot tell; percentile 0 = more member-like than every held-out image):"
    ]
    for attack, values in membership["attacks"].items():
        auc = " -> ".join(_number(values[key], ".3f") for key in ("aucBefore", "aucAfter"))
        rank = " -> ".join(_number(values[key], ".1f") for key in ("forgetPercentileBefore", "forgetPercentileAfter"))
        lines.append(f"    {attack:<5} AUC {auc}, lowest forget percentile {rank}")
    lines.extend(f"    - {limit}" for limit in membership["limits"])
    return lines


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _method_settings(method: dict[str, Any]) -> dict[str, Any]:
    """The recorded method's fields that it reads (a record of an unknown method shows every field)."""
    try:
        return MethodSpec.model_validate(method).settings()
    except ValueError:
        return {k: v for k, v in method.items() if k != "name" and v is not None}


def _render_data(data: dict[str, Any] | None) -> list[str]:
    if not data:
        return []
    if data["retainFrom"] == "train":
        excluded = data["excludedExactCopies"] + data["excludedNearDuplicates"]
        line = (
            f"  retained {data['retained']} of {data['scanned']} training images: {excluded} excluded "
            f"({data['excludedExactCopies']} copies, {data['excludedNearDuplicates']} near-duplicates)"
        )
    elif data["retainFrom"] == "generated":
        dropped = sum(entry["dropped"] for entry in data["generated"])
        line = f"  retained {data['retained']} images generated by the base model ({dropped} memorization hits dropped)"
    else:
        line = f"  retained {data['retained']} images of the given retain set"
    return [line, *(f"  warning: {warning}" for warning in data["warnings"])]
