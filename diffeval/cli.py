"""The ``diffeval`` command: argument parsing and exit codes only.

Exit codes: 0 success, 1 a gate found a regression, 2 an error (bad input, bad option).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from diffeval.errors import DiffevalError

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


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
    demo.set_defaults(handler=_run_demo)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from diffeval.demo.run import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, device=args.device, n=args.n, steps=args.steps, seed=args.seed, batch_size=args.batch_size, eta=args.eta, progress=not args.no_progress)
    report, paths = run_demo(cfg)
    print(report.to_text())
    print()
    for kind, path in paths.items():
        print(f"{kind:8s} {path}")
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
