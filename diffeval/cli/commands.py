"""The built-in subcommands, as one table (:data:`BUILTIN`): each is a help line, the function adding its
options, and its handler.

The commands that compute one thing from stored images (``fid``, ``kid``, ``cmmd``, ``prdc``, ``ref``,
``is``, ``clip-score``) share one handler, :func:`printed`: their argparse names are the keyword
arguments of the :mod:`diffeval.api` function they call, and the result is printed as a table or JSON.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffeval.cli.main import COMMANDS, Command, _int_at_least, positive_int
from diffeval.core.errors import ConfigError, ExitCode, explain

__all__ = ["BUILTIN", "printed", "print_result"]

blocks_int = _int_at_least(2)  # --blocks: a jackknife needs two seed blocks (0 or 1 would drop the standard error)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _features(parser: argparse.ArgumentParser) -> None:
    from diffeval.features import EXTRACTORS

    parser.add_argument(
        "--features",
        default="inception-v3",
        choices=EXTRACTORS.names(),
        metavar="NAME",
        help=f"feature extractor: {', '.join(EXTRACTORS.names())}",
    )
    parser.add_argument(
        "--weights", default=None, help="explicit weight file for the extractor (default: the published weights)"
    )
    _common(parser)


def print_result(result: dict[str, Any], as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(result, default=str))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}s}  {value:.6g}" if isinstance(value, float) else f"{key:{width}s}  {value}")


def printed(function: str) -> Callable[[argparse.Namespace], int]:
    """A handler calling ``diffeval.api.<function>`` with the parsed options of the same names; prints the result."""

    def handler(args: argparse.Namespace) -> int:
        fn = getattr(importlib.import_module("diffeval.api"), function)
        given = vars(args) | {"progress": False if getattr(args, "no_progress", False) else None}  # None: on a tty
        kwargs = {name: given[name] for name in inspect.signature(fn).parameters if name in given}
        print_result(fn(**kwargs), args.json)
        return ExitCode.OK

    return handler


# -- fid / ref / is / clip-score ---------------------------------------------------------------
def _fid_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    p.add_argument("gen", help="generated images: folder, .npz batch (arr_0), .npz statistics or a data set")
    p.add_argument("ref", help="reference: folder, .npz batch, .npz statistics (mu, sigma, n) or a data set")
    _features(p)
    p.add_argument("--n", type=pos, default=None, help="use a seeded subset of N generated images (default: all)")
    p.add_argument(
        "--ref-n",
        type=pos,
        default=None,
        help="images behind a reference statistics file that records no count (pytorch-fid, clean-fid, EDM files)",
    )
    p.add_argument(
        "--gen-n",
        type=pos,
        default=None,
        help="images behind a generated statistics file that records no count (pytorch-fid, clean-fid files)",
    )
    p.add_argument("--seed", type=nonneg, default=0, help="seed of the subsets")
    p.add_argument(
        "--allow-unmatched", action="store_true", help="compute even if the counts differ (the output says so)"
    )


def _kid_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    p.add_argument("gen", help="generated images: folder, .npz batch (arr_0) or a data set")
    p.add_argument("ref", help="reference images: folder, .npz batch or a data set (KID needs images, not statistics)")
    _features(p)
    p.add_argument("--subsets", type=pos, default=100, help="random subsets")
    p.add_argument("--subset-size", type=pos, default=1000, help="rows per subset (shrinks to the smaller set)")
    p.add_argument("--blocks", type=blocks_int, default=10, help="seed blocks of the jackknife standard error (>= 2)")


def _cmmd_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    from diffeval.metrics.cmmd import ESTIMATORS

    p.add_argument("gen", help="generated images: folder, .npz batch (arr_0) or a data set")
    p.add_argument("ref", help="reference images: folder, .npz batch or a data set")
    p.add_argument("--model", default="ViT-L-14-336", help="open_clip model (CMMD needs a 336 px input)")
    p.add_argument("--pretrained", default="openai", help="open_clip weights tag")
    p.add_argument("--weights", default=None, help="explicit CLIP checkpoint file (takes the place of --pretrained)")
    p.add_argument("--estimator", default="min-variance", choices=ESTIMATORS, help="MMD estimator")
    p.add_argument("--blocks", type=blocks_int, default=10, help="seed blocks of the jackknife standard error (>= 2)")
    _common(p)


def _prdc_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    p.add_argument("gen", help="generated images: folder, .npz batch (arr_0) or a data set")
    p.add_argument("ref", help="reference: images (folder, .npz batch, data set) or an .npz saved by --save-reference")
    _features(p)
    p.add_argument("--k-pr", type=pos, default=3, help="nearest neighbours for precision and recall")
    p.add_argument("--k-dc", type=pos, default=5, help="nearest neighbours for density and coverage")
    p.add_argument("--blocks", type=blocks_int, default=10, help="seed blocks of the jackknife standard errors (>= 2)")
    p.add_argument(
        "--save-reference", default=None, help="save the reference features and their k-NN radii to this .npz"
    )


def _ref_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    p.add_argument("images", help="image folder, .npz batch or a data set")
    p.add_argument("--out", type=Path, required=True, help="output .npz (mu, sigma, n + metadata)")
    _features(p)
    p.add_argument("--n", type=pos, default=None, help="a seeded subset of N images (default: all)")
    p.add_argument("--seed", type=nonneg, default=0, help="seed of the subset")


def _is_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    p.add_argument("images", help="image folder, .npz batch or a data set")
    _features(p)
    p.add_argument("--splits", type=pos, default=10, help="number of splits")


def _clip_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    p.add_argument("images", help="image folder (sorted by path), .npz batch or a data set")
    p.add_argument("prompts", help="text file, one prompt per line, line i for image i")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    p.add_argument("--pretrained", default="openai", help="open_clip tag or local checkpoint path")
    _common(p)


# -- run / diagnose / bpd ----------------------------------------------------------------------
def _run_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    from diffeval.run.config import CONFIGS

    p.add_argument(
        "config", help=f"path to eval.toml, or a named config ({', '.join(CONFIGS.names()) or 'none registered'})"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<name>)")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the interrupted run in DIR (its output folder) from its last checkpoint",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the config's [run] device)")
    p.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars (shown when stderr is a terminal)"
    )


def _failed_checks(report: Any) -> list[str]:
    return [row["name"] for row in report.rows if row["kind"] == "check" and row["status"] == "fail"]


def _finish_run(outcome: Any, command: str, as_json: bool = False) -> int:
    if as_json:
        import json

        print(
            json.dumps(
                [
                    {k: r[k] for k in ("name", "status", "value", "details")}
                    for r in outcome.report.rows
                    if r["kind"] == "check"
                ],
                default=str,
            )
        )
    else:
        print(outcome.report.to_text())
        attention = outcome.report.attention()
        if attention:
            print("\nchecks that need attention:")
            print("\n".join(attention))
        print()
        for kind, path in outcome.paths.items():
            print(f"{kind:18s} {path}")
    failed = _failed_checks(outcome.report)
    if failed:
        print(f"diffeval {command}: FAILED checks: {', '.join(failed)} (see report.md for each fix)", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from diffeval.engine.distributed import init_from_env
    from diffeval.run.config import load_config
    from diffeval.run.runner import default_out, run_config

    w = init_from_env()  # under torchrun: join the process group (NCCL on GPUs, gloo on CPUs)
    cfg = load_config(args.config)
    if args.device is not None:
        cfg = replace(cfg, device=args.device)
    if args.resume is not None and args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ConfigError(
            explain(
                "--out and --resume name different folders",
                expected="one folder: the interrupted run's",
                got=f"--out {args.out}, --resume {args.resume}",
                fix="drop --out (a resumed run writes into the folder it continues)",
            )
        )
    out = args.resume if args.resume is not None else args.out if args.out is not None else default_out(cfg.name)
    progress = False if args.no_progress else None  # None: a bar when stderr is a terminal
    outcome = run_config(cfg, out, progress=progress, resume=args.resume is not None)
    return ExitCode.OK if w.rank != 0 else _finish_run(outcome, "run")


def _diagnose_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    from diffeval.checks.xt_normality import PREPROCESSINGS
    from diffeval.diffusion.denoiser import PREDICTIONS
    from diffeval.diffusion.schedules import PRESETS, SPACINGS

    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--schedule", choices=PRESETS.names(), help="a preset schedule")
    source.add_argument("--alphas", type=Path, help="alphas_cumprod file (.npy, .txt, .csv)")
    source.add_argument(
        "--config", type=Path, help="diffusers scheduler_config.json (its timestep_spacing and prediction_type apply)"
    )
    p.add_argument("--rescale-zero-snr", action="store_true", help="apply Lin et al.'s zero-terminal-SNR rescale first")
    p.add_argument("--shift", type=float, default=None, help="with --schedule flow: the time shift s (SD3: 3)")
    p.add_argument(
        "--mu",
        type=float,
        default=None,
        help="flow dynamic shifting's mu (shift = exp(mu)), for --schedule flow or a dynamically shifted --config",
    )
    p.add_argument(
        "--prediction",
        choices=PREDICTIONS,
        default=None,
        help="what the model predicts (default: the diffusers config's, else unknown)",
    )
    p.add_argument("--steps", type=pos, default=None, help="sampling steps (with a spacing: checks the first step)")
    p.add_argument(
        "--spacing", choices=SPACINGS, default=None, help="timestep spacing (default: the diffusers config's)"
    )
    p.add_argument(
        "--data",
        default=None,
        help=(
            "images for the x_T checks: a data set (digits), an image folder or an .npz batch (default: schedule checks"
            " only)"
        ),
    )
    p.add_argument(
        "--preprocess",
        choices=tuple(PREPROCESSINGS),
        default="signed",
        help="uint8 -> model input: signed x/127.5-1, unit x/255, raw 0-255",
    )
    p.add_argument("--seed", type=nonneg, default=0, help="seed of the forward-process noise")
    p.add_argument("--out", type=Path, default=Path("diffeval-diagnose"), help="output folder")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def _diagnose(args: argparse.Namespace) -> int:
    from diffeval.run.diagnose import diagnose_config
    from diffeval.run.runner import run_config

    cfg = diagnose_config(
        schedule=args.schedule,
        alphas=args.alphas,
        config=args.config,
        rescale_zero_snr=args.rescale_zero_snr,
        prediction=args.prediction,
        steps=args.steps,
        spacing=args.spacing,
        data=args.data,
        preprocess=args.preprocess,
        seed=args.seed,
        shift=args.shift,
        mu=args.mu,
    )
    return _finish_run(run_config(cfg, args.out), "diagnose", args.json)


def _bpd_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    p.add_argument(
        "config", nargs="?", default="demo", help="config whose sampler declares the model (path or a named config)"
    )
    p.add_argument(
        "--data", default=None, help="data: image folder, .npz batch or a data set (default: the config's bpd metric's)"
    )
    p.add_argument(
        "--estimator",
        choices=("vlb", "vdm"),
        default=None,
        help=(
            "vlb: discrete-time bound; vdm: continuous-time models only, e.g. the demo-gaussian config (default: the"
            " config's, else vlb)"
        ),
    )
    p.add_argument("--strata", type=pos, default=None, help="vlb: t strata of the sum over steps (default 50)")
    p.add_argument(
        "--no-clip",
        action="store_true",
        help="vlb: do not clip x0_hat to [-1, 1] (the unclipped model, as vdm sees it)",
    )
    p.add_argument("--all-terms", action="store_true", help="vlb: sum all T-1 terms exactly (slow)")
    p.add_argument("--cdf", choices=("exact", "tanh"), default=None, help="vlb: decoder CDF (default exact)")
    p.add_argument("--n", type=pos, default=None, help="use the first N data images (default: all)")
    p.add_argument("--seed", type=nonneg, default=None, help="seed of the per-sample streams (default: the config's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    p.add_argument("--batch-size", type=pos, default=None, help="images per batch (default: the config's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _bpd(args: argparse.Namespace) -> int:
    from diffeval.run.config import load_config
    from diffeval.run.runner import bpd_of_config

    overrides = {
        "data": args.data,
        "estimator": args.estimator,
        "strata": args.strata,
        "all_terms": True if args.all_terms else None,
        "cdf": args.cdf,
        "clip_x0": False if args.no_clip else None,
        "n": args.n,
        "seed": args.seed,
    }
    result = bpd_of_config(
        load_config(args.config),
        {k: v for k, v in overrides.items() if v is not None},
        device=args.device,
        batch_size=args.batch_size,
    )
    print_result(
        {
            "bpd": result.value,
            "bpd_stderr": result.stderr,
            "n": result.n_ref,
            **result.details,
            "convention": result.convention,
        },
        args.json,
    )
    return ExitCode.OK


# -- gate / bench ------------------------------------------------------------------------------
def _gate_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    p.add_argument("--baseline", required=True, help="baseline report.json")
    p.add_argument("--candidate", required=True, help="candidate report.json")
    p.add_argument("--rules", default=None, help="gate rules TOML (default: no metric worse, no new check failure)")
    p.add_argument("--junit", default=None, help="also write a JUnit XML file here")
    p.add_argument(
        "--k",
        type=float,
        default=None,
        help=(
            "noise multiplier: a change must exceed k standard errors (overrides the rules; default: the rules' k,"
            " else 2)"
        ),
    )


def _gate(args: argparse.Namespace) -> int:
    from diffeval.gate import run_gate

    return run_gate(args.baseline, args.candidate, args.rules, args.junit, args.k)


def _bench_args(p: argparse.ArgumentParser, pos: Any, nonneg: Any) -> None:
    from diffeval.run.bench import DTYPES

    p.add_argument("config", help="an eval.toml (or a named config) whose sampler to time")
    p.add_argument("--steps", type=pos, nargs="+", default=[10, 50], help="sampling step counts")
    p.add_argument("--batch-size", type=pos, nargs="+", default=[1, 64], help="batch sizes")
    p.add_argument("--dtype", choices=tuple(DTYPES), nargs="+", default=["fp32"], help="model precision(s)")
    p.add_argument("--warmup", type=nonneg, default=2, help="untimed warm-up calls")
    p.add_argument("--repeats", type=pos, default=5, help="timed calls")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported separately)")
    p.add_argument("--overhead", action="store_true", help="also measure the step hook's overhead against a bare loop")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--out", type=Path, default=None, help="write latency rows to OUT/report.{csv,json,...} (default: print only)"
    )


def _bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from diffeval.engine.loop import resolve_device
    from diffeval.report.report import Report, provenance, writable_folder
    from diffeval.run.bench import bench_config, format_table
    from diffeval.run.config import load_config

    resolve_device(args.device)  # a CUDA request on a machine without one fails here, with the fix
    if args.out is not None:
        writable_folder(args.out)
    cfg = replace(load_config(args.config), device=args.device)
    results, overhead, rows = bench_config(
        cfg,
        steps=args.steps,
        batch_sizes=args.batch_size,
        dtypes=args.dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        compile=args.compile,
        overhead=args.overhead,
    )
    print(format_table(results))
    if overhead is not None:
        o = overhead
        print(
            f"\nstep hook overhead at batch 1, {o.steps} steps: {o.hook_overhead_pct:+.2f}% of a step"
            f" ({o.sampler_step_ms:.3f} ms with the hook, {o.sampler_off_step_ms:.3f} ms without); whole harness vs a"
            f" bare loop of the model calls ({o.bare_step_ms:.3f} ms): {o.harness_overhead_pct:+.1f}%"
        )
    if args.out is not None:
        paths = Report(
            rows,
            provenance(
                {
                    "command": "bench",
                    "config": str(cfg.source),
                    "steps": args.steps,
                    "batch_sizes": args.batch_size,
                    "dtypes": args.dtype,
                },
                args.device,
                code=cfg.sampler.factory if cfg.sampler else None,
                name=f"bench-{cfg.name}",
            ),
        ).write(args.out)
        print(f"\nreport: {paths['json']}")
    return ExitCode.OK


BUILTIN: dict[str, Command] = {
    "run": Command("run an evaluation config (TOML) into a report", _run_args, _run),
    "gate": Command(
        "compare a candidate report with a baseline: exit 0 pass, 1 regression, 2 error", _gate_args, _gate
    ),
    "fid": Command(
        "FID between two image sets or statistics files, at matched counts", _fid_args, printed("fid_between")
    ),
    "kid": Command("KID between two image sets, with its jackknife standard error", _kid_args, printed("kid_between")),
    "cmmd": Command(
        "CMMD (CLIP ViT-L/14@336, RBF MMD^2 x 1000) between two image sets", _cmmd_args, printed("cmmd_between")
    ),
    "prdc": Command(
        "precision, recall (k=3), density, coverage (k=5) of an image set", _prdc_args, printed("prdc_between")
    ),
    "ref": Command("reference statistics (mu, sigma, n) of an image set", _ref_args, printed("compute_reference")),
    "is": Command(
        "Inception Score of an image set (torch-fidelity convention)", _is_args, printed("inception_score_of")
    ),
    "clip-score": Command(
        "CLIP score of images against prompts (both conventions)", _clip_args, printed("clip_score_of")
    ),
    "diagnose": Command(
        "SNR-endpoint and x_T-normality checks of a schedule (and data): a checks-only run", _diagnose_args, _diagnose
    ),
    "bpd": Command(
        "bits/dim of data under a config's model (the demo's by default), with a standard error", _bpd_args, _bpd
    ),
    "bench": Command("sampler latency table (per-step median/IQR, images/s, NFE, peak memory)", _bench_args, _bench),
}
for _name, _command in BUILTIN.items():
    COMMANDS.register(_name, _command)
