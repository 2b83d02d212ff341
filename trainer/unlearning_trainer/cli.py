"""The `unlearn` command line: validate and run UnlearningJob files on this machine."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from unlearning_trainer import __version__, logs, termination
from unlearning_trainer.advice import spec_warnings
from unlearning_trainer.errors import SpecError, UnlearningError
from unlearning_trainer.spec import METHODS, EvaluationSpec, UnlearningJob, dump_job, load_job

INTERRUPTED_EXIT_CODE = 143
"""128 + SIGTERM: a preempted trainer must not look like a finished one to the Job controller."""


def _warn(job: UnlearningJob) -> None:
    for warning in spec_warnings(job.spec):
        sys.stderr.write(f"warning: {warning}\n")


def _validate(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    _warn(job)
    if args.print_resolved:
        json.dump(dump_job(job), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        spec = job.spec
        sys.stdout.write(
            f"{args.job}: valid UnlearningJob {job.metadata.name!r}: method {spec.method.name}, "
            f"{spec.training.steps} steps, batch {spec.training.batch_size}, output {spec.output.uri}\n"
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    from unlearning_trainer.runner import resolve_local_uris, run_job

    job = resolve_local_uris(load_job(args.job), Path(args.job).resolve().parent)
    _warn(job)
    try:
        result = run_job(job, show_progress=not args.no_progress, restart=args.restart)
    except UnlearningError as exc:
        termination.write({"reason": exc.reason, "message": str(exc)})
        raise
    except Exception as exc:
        termination.write({"reason": "TrainerError", "message": f"{type(exc).__name__}: {exc}"})
        raise
    tracking = result.metrics.get("tracking") or {}
    termination.write_summary(
        {
            "reason": "Succeeded" if result.metrics["status"] == "succeeded" else "Interrupted",
            "message": f"{result.metrics['status']} after {result.metrics['steps']} steps",
            "step": result.metrics["steps"],
            "resumedFrom": result.metrics["resumedFrom"],
            "runId": tracking.get("runId"),
            "auditPassed": (result.metrics.get("verdict") or {}).get("passed"),
        }
    )
    if result.metrics["status"] == "interrupted":
        sys.stdout.write(f"interrupted at step {result.metrics['steps']}; checkpoint saved, rerun to resume\n")
        return INTERRUPTED_EXIT_CODE
    after = result.metrics.get("after") or {}
    sys.stdout.write(
        f"{result.metrics['status']}: {result.metrics['steps']} steps; unlearned pipeline and metrics.json in "
        f"{result.output}\n"
    )
    if after:
        keys = ("memorization_rate", "forget_nll_bpd", "forget_loss", "retain_loss")
        before = result.metrics.get("before") or {}
        for key in keys:
            was = f"{before[key]:.4g} -> " if key in before else ""
            sys.stdout.write(f"  {key:<20} {was}{after[key]:.4g}\n")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from unlearning_trainer.data.prepare import prepare_data
    from unlearning_trainer.models.loading import load_adapter
    from unlearning_trainer.runner import resolve_local_uris
    from unlearning_trainer.storage.base import storage_for

    job = resolve_local_uris(load_job(args.job), Path(args.job).resolve().parent)
    spec = job.spec

    def fetch(uri: str, field: str) -> Path:
        return storage_for(uri, endpoint=spec.storage.endpoint).fetch(uri, field=field)

    adapter = load_adapter(fetch(spec.model.uri, "spec.model.uri"))
    with tempfile.TemporaryDirectory(prefix="unlearn-check-data-") as scratch:

        def generate(forget: Any) -> Path:
            """data.retain.generate: sample the set the run would make, into a scratch folder."""
            from unlearning_trainer.data.generated import generate_retain, settings_of

            generate_retain(adapter, settings_of(spec, forget, model_digest=""), forget, Path(scratch) / "retain")
            return Path(scratch) / "retain"

        _, _, summary = prepare_data(spec, fetch, adapter.image_shape, generate)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return 0
    sys.stdout.write(describe_data(summary, adapter.image_shape, spec.evaluation))
    return 0


def describe_data(summary: dict, image_shape: tuple[int, int, int], evaluation: EvaluationSpec) -> str:
    """What `unlearn check-data` prints: the sets, what was excluded, and the room for the threshold."""
    values = math.prod(image_shape)
    threshold = evaluation.l2_threshold(values)
    lines = [f"forget set: {summary['forget']} images ({summary['forgetUnique']} distinct)"]
    if summary["retainFrom"] == "train":
        lines.append(
            f"training set: {summary['scanned']} images; excluded {summary['excluded']} "
            f"({summary['exactCopies']} copies, {summary['nearDuplicates']} near-duplicates); retain set "
            f"{summary['retain']} images"
        )
        lines.append(f"forget images found in the training set: {summary['forgetFound']} of {summary['forgetUnique']}")
    elif summary["retainFrom"] == "generated":
        dropped = sum(entry["dropped"] for entry in summary["generated"])
        lines.append(
            f"retain set: {summary['retain']} images generated by the base model for "
            f"{len(summary['generated'])} caption(s); {dropped} memorization hits dropped"
        )
    else:
        lines.append(
            f"retain set: {summary['retain']} images, {summary['exactCopies']} of them copies of forget images"
        )
    nearest = summary["nearestKeptDistance"]
    if nearest is not None:
        lines.append(
            f"nearest retained image to a forget image: L2 {nearest:.3g} over {values} pixel values in [0, 1] "
            f"(RMS {nearest / values**0.5:.3g} per value)"
        )
        verdict = "below it: fine" if threshold < nearest else "NOT below it: lower it"
        lines.append(
            f"memorization threshold: L2 {threshold:.3g}, {verdict} (half the nearest distance, "
            f"{nearest / 2:.3g}, is a safe start)"
        )
    lines.extend(f"warning: {warning}" for warning in summary["warnings"])
    return "\n".join(lines) + "\n"


def _report(args: argparse.Namespace) -> int:
    from unlearning_trainer import audit
    from unlearning_trainer.storage.base import storage_for

    uri = args.output.rstrip("/") + "/audit.json"
    record = json.loads(storage_for(uri, endpoint=args.endpoint).read_text(uri, field="output"))
    sys.stdout.write((json.dumps(record, indent=2) if args.json else audit.render(record)) + "\n")
    return 0


def _operator(args: argparse.Namespace) -> int:
    from unlearning_operator.main import run

    if not args.namespace and not args.all_namespaces:
        raise SpecError("choose --namespace NAME (repeatable) or --all-namespaces")
    run(namespaces=args.namespace, clusterwide=args.all_namespaces, liveness=args.liveness, verbose=args.verbose)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from unlearning_trainer.demo import DemoSettings, format_table, run_demo

    settings = DemoSettings(
        case=args.case,
        method=args.method,
        steps=args.steps,
        samples=args.samples,
        stop_when_forgotten=args.stop_when_forgotten,
    )
    sys.stdout.write(
        f"Unlearning the memorized {args.case} from the shipped digits model with {args.method} "
        f"({args.steps} steps, CPU)...\n"
    )
    metrics = run_demo(settings, Path(args.out), show_progress=not args.no_progress)
    sys.stdout.write("\n" + format_table(metrics["before"], metrics["after"], metrics["steps"]) + "\n\n")
    sys.stdout.write(f"Report: {Path(args.out).resolve()} (before.png, after.png, metrics.json, model/)\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unlearn",
        description="Make a diffusion model forget specific training data (SISS and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log every training step")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a job file and explain any problem")
    validate.add_argument("job", help="UnlearningJob YAML file")
    validate.add_argument("--print-resolved", action="store_true", help="print the spec with all defaults as JSON")
    validate.set_defaults(handler=_validate)

    run = commands.add_parser("run", help="run a job on this machine (relative paths start at the job file)")
    run.add_argument("job", help="UnlearningJob YAML file")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument(
        "--restart",
        action="store_true",
        help="delete the output's checkpoints and train from the base model (needed after changing how it trains)",
    )
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check-data", help="read the job's data once: exclusions, warnings and the room for memorizationThreshold"
    )
    check.add_argument("job", help="UnlearningJob YAML file")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(handler=_check_data)

    report = commands.add_parser("report", help="print the audit record of a finished job")
    report.add_argument("output", help="the job's spec.output.uri (local path or s3://)")
    report.add_argument("--endpoint", help="S3-compatible endpoint URL (default: AWS or AWS_ENDPOINT_URL)")
    report.add_argument("--json", action="store_true", help="print the raw JSON record")
    report.set_defaults(handler=_report)

    operator = commands.add_parser("operator", help="run the Kubernetes operator (kopf, standalone)")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch the whole cluster")
    operator.add_argument("--liveness", help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    operator.set_defaults(handler=_operator)

    demo = commands.add_parser("demo", help="unlearn a memorized image from the shipped digits model (CPU, minutes)")
    demo.add_argument("--out", default="unlearning-demo", help="report folder (default: ./unlearning-demo)")
    demo.add_argument("--case", choices=("glyph", "digit"), default="glyph", help="what to forget")
    demo.add_argument("--method", choices=METHODS, default="siss", help="unlearning objective")
    demo.add_argument("--steps", type=int, default=150, help="optimizer steps")
    demo.add_argument("--samples", type=int, default=512, help="samples per evaluation")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.add_argument(
        "--stop-when-forgotten",
        action="store_true",
        help="stop at the second evaluation in a row without a memorized sample (training.stopWhen)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(fmt=args.log_format, verbose=args.verbose)
    try:
        return args.handler(args)
    except UnlearningError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
