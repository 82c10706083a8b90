"""The ``diffeval`` command: argument parsing and exit codes only.

Exit codes: 0 success, 1 a gate found a regression, 2 an error (bad input, bad option).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from diffeval.errors import DiffevalError

__all__ = ["main", "build_parser"]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with a message that says what was given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    from diffeval import __version__

    parser = argparse.ArgumentParser(prog="diffeval", description="Evaluation and diagnostics for diffusion models.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"diffeval {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser("demo", help="run the whole job on the bundled digits model (offline)", allow_abbrev=False)
    demo.add_argument("--out", type=Path, default=Path("diffeval-demo"), help="output folder (default: ./diffeval-demo)")
    demo.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    demo.add_argument("--n", type=_positive_int, default=360, help="number of samples (default: 360 = held-out digits)")
    demo.add_argument("--steps", type=_positive_int, default=50, help="sampling steps (default: 50)")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="first seed; sample i uses seed + i")
    demo.add_argument("--batch-size", type=_positive_int, default=120)
    demo.add_argument("--eta", type=float, default=0.0, help="0 = DDIM, 1 = DDPM ancestral")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.add_argument("--bug", choices=("raw-pixels",), default=None, help="inject a classic bug: raw-pixels feeds the digits as 0-255 to the diagnostics")
    demo.set_defaults(handler=_run_demo)

    fid = commands.add_parser("fid", help="FID between two image sets or statistics files, at matched counts", allow_abbrev=False)
    fid.add_argument("gen", help="generated images: folder, .npz batch (arr_0) or .npz statistics")
    fid.add_argument("ref", help="reference: folder, .npz batch or .npz statistics (mu, sigma, n)")
    _feature_options(fid)
    fid.add_argument("--n", type=_positive_int, default=None, help="use a seeded subset of N generated images")
    fid.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the subsets (default 0)")
    fid.add_argument("--allow-unmatched", action="store_true", help="compute even if the counts differ (the output says so)")
    fid.set_defaults(handler=_run_fid)

    ref = commands.add_parser("ref", help="reference statistics (mu, sigma, n) of an image set", allow_abbrev=False)
    ref.add_argument("images", help="image folder or .npz batch")
    ref.add_argument("--out", type=Path, required=True, help="output .npz")
    _feature_options(ref)
    ref.add_argument("--n", type=_positive_int, default=None, help="a seeded subset of N images")
    ref.add_argument("--seed", type=_non_negative_int, default=0)
    ref.set_defaults(handler=_run_ref)

    isc = commands.add_parser("is", help="Inception Score of an image set (torch-fidelity convention)", allow_abbrev=False)
    isc.add_argument("images", help="image folder or .npz batch")
    _feature_options(isc)
    isc.add_argument("--splits", type=_positive_int, default=10)
    isc.set_defaults(handler=_run_is)

    clip = commands.add_parser("clip-score", help="CLIP score of images against prompts (both conventions)", allow_abbrev=False)
    clip.add_argument("images", help="image folder (sorted by path) or .npz batch")
    clip.add_argument("prompts", help="text file, one prompt per line, line i for image i")
    clip.add_argument("--model", default="ViT-B-32", help="open_clip model name (default ViT-B-32)")
    clip.add_argument("--pretrained", default="openai", help="open_clip tag or local checkpoint path (default openai)")
    _common_options(clip)
    clip.set_defaults(handler=_run_clip)
    diag = commands.add_parser("diagnose", help="SNR-endpoint and x_T-normality checks of a schedule (and data)", allow_abbrev=False)
    source = diag.add_mutually_exclusive_group(required=True)
    source.add_argument("--schedule", help="preset: linear, cosine, scaled_linear, vdm, edm")
    source.add_argument("--alphas", type=Path, help="alphas_cumprod file (.npy, .txt, .csv)")
    source.add_argument("--config", type=Path, help="diffusers scheduler_config.json")
    diag.add_argument("--rescale-zero-snr", action="store_true", help="apply Lin et al.'s zero-terminal-SNR rescale first")
    diag.add_argument("--prediction", choices=("eps", "x0", "v"), default=None, help="what the model predicts")
    diag.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (with --spacing: checks the first step)")
    diag.add_argument("--spacing", choices=("linspace", "leading", "trailing"), default=None)
    diag.add_argument("--data", default=None, help="'digits' (bundled), an image folder or an .npz batch")
    diag.add_argument("--preprocess", choices=("signed", "unit", "raw"), default="signed", help="uint8 -> model input: signed x/127.5-1, unit x/255, raw 0-255")
    diag.add_argument("--seed", type=_non_negative_int, default=0)
    diag.add_argument("--out", type=Path, default=Path("diffeval-diagnose"))
    diag.add_argument("--json", action="store_true", help="print the checks as JSON")
    diag.set_defaults(handler=_run_diagnose)
    bpd = commands.add_parser("bpd", help="bits/dim of the bundled digits under the bundled model (VLB with a standard error)", allow_abbrev=False)
    bpd.add_argument("--estimator", choices=("vlb", "vdm"), default="vlb", help="vlb: discrete-time bound (the demo model is discrete-time)")
    bpd.add_argument("--strata", type=_positive_int, default=50, help="t strata of the VLB sum (1..T-1)")
    bpd.add_argument("--all-terms", action="store_true", help="sum all T-1 terms exactly (slow)")
    bpd.add_argument("--cdf", choices=("exact", "tanh"), default="exact", help="decoder CDF: exact, or improved-diffusion's tanh approximation")
    bpd.add_argument("--n", type=_positive_int, default=360, help="held-out digits to use (max 360)")
    bpd.add_argument("--seed", type=_non_negative_int, default=0)
    bpd.add_argument("--device", default="cpu")
    bpd.add_argument("--batch-size", type=_positive_int, default=120)
    bpd.add_argument("--json", action="store_true")
    bpd.set_defaults(handler=_run_bpd)
    run = commands.add_parser("run", help="run an evaluation config (TOML) into a report", allow_abbrev=False)
    run.add_argument("config", help="path to eval.toml, or 'demo' for the bundled demo config")
    run.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<name>)")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(handler=_run_run)

    gate = commands.add_parser("gate", help="compare a candidate report with a baseline: exit 0 pass, 1 regression, 2 error", allow_abbrev=False)
    gate.add_argument("--baseline", required=True, help="baseline report.json")
    gate.add_argument("--candidate", required=True, help="candidate report.json")
    gate.add_argument("--rules", default=None, help="gate rules TOML (default: no metric worse, no new check failure)")
    gate.add_argument("--junit", default=None, help="also write a JUnit XML file here")
    gate.add_argument("--k", type=float, default=None, help="noise multiplier: a change must exceed k standard errors (overrides the rules)")
    gate.set_defaults(handler=_run_gate)
    bench = commands.add_parser("bench", help="sampler latency table (per-step median/IQR, images/s, NFE, peak memory)", allow_abbrev=False)
    target = bench.add_mutually_exclusive_group(required=True)
    target.add_argument("config", nargs="?", help="an eval.toml whose sampler to time")
    target.add_argument("--demo", action="store_true", help="time the bundled demo sampler")
    bench.add_argument("--steps", type=_positive_int, nargs="+", default=[10, 50])
    bench.add_argument("--batch-size", type=_positive_int, nargs="+", default=[1, 64])
    bench.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), nargs="+", default=["fp32"])
    bench.add_argument("--warmup", type=_non_negative_int, default=2)
    bench.add_argument("--repeats", type=_positive_int, default=5)
    bench.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported separately)")
    bench.add_argument("--overhead", action="store_true", help="also measure the step hook's overhead against a bare loop")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--out", type=Path, default=None, help="write latency rows to OUT/report.{csv,json,...}")
    bench.set_defaults(handler=_run_bench)
    return parser


def _run_bench(args: argparse.Namespace) -> int:
    from diffeval.bench import bench_grid, format_table, latency_rows, measure_hook_overhead
    from diffeval.config import load_config
    from diffeval.demo.run import demo_config_path
    from diffeval.evaluate import resolve_device
    from diffeval.report import Report, make_row, provenance
    from diffeval.runner import _build_sampler, _image_shape

    resolve_device(args.device)  # a CUDA request on a machine without one fails here, with the fix
    cfg = load_config(demo_config_path() if args.demo else args.config)
    cfg = type(cfg)(**{**cfg.__dict__, "device": args.device})

    def make(steps: int):
        return _build_sampler(cfg, {"steps": steps})

    shape = _image_shape(cfg, make(args.steps[0]))
    results = bench_grid(make, image_shape=shape, steps=args.steps, batch_sizes=args.batch_size, dtypes=args.dtype, device=args.device, warmup=args.warmup, repeats=args.repeats, compile=args.compile)
    print(format_table(results))
    rows = [row for r in results for row in latency_rows(r, f"[steps={r.steps},{r.dtype},b{r.batch_size}]")]
    if args.overhead:
        o = measure_hook_overhead(make(args.steps[0]), image_shape=shape, batch_size=1, device=args.device)
        print(f"\nstep hook overhead at batch 1, {o.steps} steps: {o.hook_overhead_pct:+.2f}% of a step ({o.sampler_step_ms:.3f} ms with the hook, {o.sampler_off_step_ms:.3f} ms without); whole harness vs a bare loop of the model calls ({o.bare_step_ms:.3f} ms): {o.harness_overhead_pct:+.1f}%")
        rows.append(make_row("step_hook_overhead_pct", "latency", o.hook_overhead_pct, unit="%", details=o.__dict__))
    if args.out is not None:
        paths = Report(rows, provenance({"command": "bench", "config": str(cfg.source), "steps": args.steps, "batch_sizes": args.batch_size, "dtypes": args.dtype}, args.device, code=cfg.sampler.factory, name=f"bench-{cfg.name}")).write(args.out)
        print(f"\nreport: {paths['json']}")
    return 0


def _run_run(args: argparse.Namespace) -> int:
    from diffeval.config import load_config
    from diffeval.demo.run import demo_config_path
    from diffeval.distributed import init_from_env
    from diffeval.runner import RunFailed, run_config

    w = init_from_env()  # under torchrun: join the process group (NCCL on GPUs, gloo on CPUs)
    cfg = load_config(demo_config_path() if args.config == "demo" else args.config)
    out = args.out if args.out is not None else Path("runs") / cfg.name
    try:
        outcome = run_config(cfg, out, progress=not args.no_progress)
    except RunFailed as failure:
        print(f"diffeval run: error (rank {w.rank} of {w.size}): {failure}", file=sys.stderr)
        return 130 if failure.interrupted else 2
    if w.rank != 0:
        return 0
    print(outcome.report.to_text())
    print()
    for kind, path in outcome.paths.items():
        print(f"{kind:14s} {path}")
    return 0


def _run_gate(args: argparse.Namespace) -> int:
    from diffeval.gate import run_gate

    return run_gate(args.baseline, args.candidate, args.rules, args.junit, args.k)


def _run_bpd(args: argparse.Namespace) -> int:
    from diffeval.demo.run import demo_bpd

    options = {"cdf": args.cdf, "strata": None if args.all_terms else args.strata} if args.estimator == "vlb" else {}
    result = demo_bpd(n=args.n, estimator=args.estimator, seed=args.seed, device=args.device, batch_size=args.batch_size, **options)
    _print_result(result, args.json)
    return 0


def _run_diagnose(args: argparse.Namespace) -> int:
    from diffeval.checks import worst
    from diffeval.diagnose import DiagnoseConfig, run_diagnose

    cfg = DiagnoseConfig(
        schedule=args.schedule, alphas=args.alphas, config=args.config, rescale_zero_snr=args.rescale_zero_snr, prediction=args.prediction,
        steps=args.steps, spacing=args.spacing, data=args.data, preprocess=args.preprocess, seed=args.seed, out=args.out,
    )
    results, _, paths = run_diagnose(cfg)
    if args.json:
        import json

        print(json.dumps([r.__dict__ for r in results], default=str))
    else:
        for r in results:
            print(r)
        print()
        for kind, path in paths.items():
            print(f"{kind:12s} {path}")
    verdict = worst(results)
    print(f"verdict: {verdict}", file=sys.stderr)
    return 1 if verdict == "fail" else 0


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _feature_options(parser: argparse.ArgumentParser) -> None:
    from diffeval.features import EXTRACTORS

    parser.add_argument("--features", default="inception-v3", help=f"feature extractor: {', '.join(EXTRACTORS.names())} (default inception-v3)")
    parser.add_argument("--weights", default=None, help="explicit weight file for the extractor")
    _common_options(parser)


def _print_result(result: dict, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(result, default=str))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:{width}s}  {value:.6g}" if isinstance(value, float) else f"{key:{width}s}  {value}")


def _run_fid(args: argparse.Namespace) -> int:
    from diffeval.image_metrics import fid_between

    result = fid_between(args.gen, args.ref, features=args.features, weights=args.weights, n=args.n, device=args.device, allow_unmatched=args.allow_unmatched, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    _print_result(result, args.json)
    return 0


def _run_ref(args: argparse.Namespace) -> int:
    from diffeval.image_metrics import compute_reference

    result = compute_reference(args.images, args.out, features=args.features, weights=args.weights, n=args.n, seed=args.seed, device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
    _print_result(result, args.json)
    return 0


def _run_is(args: argparse.Namespace) -> int:
    from diffeval.image_metrics import inception_score_of

    result = inception_score_of(args.images, features=args.features, weights=args.weights, splits=args.splits, device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
    _print_result(result, args.json)
    return 0


def _run_clip(args: argparse.Namespace) -> int:
    from diffeval.image_metrics import clip_score_of

    result = clip_score_of(args.images, args.prompts, model=args.model, pretrained=args.pretrained, device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
    _print_result(result, args.json)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from diffeval.demo.run import DemoConfig, run_demo
    from diffeval.runner import RunFailed

    cfg = DemoConfig(out=args.out, device=args.device, n=args.n, steps=args.steps, seed=args.seed, batch_size=args.batch_size, eta=args.eta, progress=not args.no_progress, bug=args.bug)
    try:
        report, paths = run_demo(cfg)
    except RunFailed as failure:
        print(f"diffeval demo: error: {failure}", file=sys.stderr)
        return 130 if failure.interrupted else 2
    print(report.to_text())
    print()
    for kind, path in paths.items():
        print(f"{kind:8s} {path}")
    failed = [row["name"] for row in report.rows if row["kind"] == "check" and row["status"] == "fail"]
    if failed:
        print(f"\nFAILED checks: {', '.join(failed)} (see report.md for each fix)", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except DiffevalError as error:
        print(f"diffeval {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
