"""``diffeval gate`` as a process: read the reports and rules, compare, print, write the outputs, return the exit
code."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from diffeval.core.errors import ConfigError, DiffevalError, ExitCode, InputError, OutputError, explain
from diffeval.core.files import append_text, write_text
from diffeval.gate.compare import Verdict, evaluate_gate
from diffeval.gate.render import junit as junit_xml
from diffeval.gate.render import markdown as summary_markdown
from diffeval.gate.render import table as verdict_table
from diffeval.gate.rules import check_k, load_rules
from diffeval.report.report import Report, writable_file

__all__ = ["run_gate", "EXIT_PASS", "EXIT_REGRESSION", "EXIT_ERROR"]

EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR = int(ExitCode.OK), int(ExitCode.FAILED), int(ExitCode.ERROR)


def run_gate(
    baseline: str | Path,
    candidate: str | Path,
    rules_path: str | Path | None = None,
    junit: str | Path | None = None,
    k: float | None = None,
) -> int:
    """Compare and print; returns the exit code (0 pass, 1 regression, 2 error). Never raises.

    The outputs (``junit``, ``$GITHUB_STEP_SUMMARY``) are checked for writability first: a gate that
    cannot record its verdict is an error (2), never a pass or a regression.
    """
    verdicts: list[Verdict] = []
    errors: list[str] = []
    summary = os.environ.get("GITHUB_STEP_SUMMARY") or None
    outputs = {"--junit": junit, "$GITHUB_STEP_SUMMARY": summary}
    writable = {}
    for option, path in outputs.items():
        if path is None:
            continue
        try:
            writable[option] = writable_file(path, option)
        except InputError as exc:
            errors.append(str(exc))
    code = EXIT_ERROR
    if not errors:
        try:
            rules = load_rules(rules_path)
            if k is not None:
                rules = dataclasses.replace(rules, k=check_k(k, "--k"))
            verdicts = evaluate_gate(Report.load(baseline), Report.load(candidate), rules)
            if not verdicts:
                raise ConfigError(
                    explain(
                        "the gate has nothing to compare",
                        expected="at least one rule that applies",
                        got="no rules matched any row",
                        fix="add rules, or compare reports that contain metrics",
                    )
                )
            code = EXIT_REGRESSION if any(v.status != "pass" for v in verdicts) else EXIT_PASS
        except DiffevalError as exc:
            errors.append(str(exc))
        except Exception as exc:  # anything unexpected is an error (2), never a pass or a regression
            errors.append(f"unexpected error: {type(exc).__name__}: {exc}")
    error = "; ".join(errors) or None
    status = {EXIT_PASS: "pass", EXIT_REGRESSION: "REGRESSION", EXIT_ERROR: "ERROR"}[code]
    if verdicts:
        print(verdict_table(verdicts))
    if error is not None:
        print(f"diffeval gate: error: {error}", file=sys.stderr)
    print(f"gate: {status}", file=sys.stderr)
    try:  # the JUnit file is replaced atomically; a failed append to the summary is cut back (no partial lines)
        if "$GITHUB_STEP_SUMMARY" in writable:
            append_text(
                writable["$GITHUB_STEP_SUMMARY"],
                summary_markdown(verdicts, status, error),
                fix="point $GITHUB_STEP_SUMMARY at a writable file",
            )
        if "--junit" in writable:
            write_text(writable["--junit"], junit_xml(verdicts, error), fix="pass --junit a path on another disk")
    except (OSError, OutputError) as exc:
        text = str(exc) if isinstance(exc, OutputError) else f"{type(exc).__name__}: {exc}"
        print(f"diffeval gate: error: could not write the gate's outputs: {text}", file=sys.stderr)
        return EXIT_ERROR
    return code
