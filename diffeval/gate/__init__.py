"""``diffeval gate``: compare a candidate report with a baseline under rules; exit 0 pass, 1 regression, 2 error.

Rules (TOML; every table optional, unknown keys are errors)::

    [absolute]            # bounds on the candidate
    fid = "<= 12"
    clip_score = ">= 25"

    [relative]            # allowed change from the baseline, in the metric's bad direction
    fid = "+2%"           # FID may rise by at most 2 %
    clip_score = "-1%"    # CLIP score may fall by at most 1 %
    step_latency_ms = "+0.5"   # an absolute allowance (no %)

    [checks]
    must_pass = ["terminal_snr", "xT_mean"]   # or "all"

    [noise]
    k = 2.0               # a change must also exceed k standard errors of the difference (z > k)
    paired = false        # true: every relative verdict must be paired (same seeds and reference), else error

    [compare]
    different_n = "refuse"   # or "infinity": FID rows at different N are compared by FID∞ (unpaired)

A rule's key is a metric name (``fid``: every FID row, e.g. one per feature extractor)
or a row label (``fid@inception-v3:2048``: that row only). Which way is worse is read
from each row's own ``direction`` (declared by its metric); a rule whose sign contradicts
it, and a gated row with no direction, are errors — the gate fails closed.

The noise of a relative verdict is the standard error of ``candidate - baseline``:
*paired* when both rows carry pairing records on the same seeds, reference and blocks
(the per-block leave-one-out differences, so the noise the runs share cancels), else
*unpaired* ``sqrt(se_b^2 + se_c^2)``, else none (the bare change decides). Every verdict
shows baseline, candidate, difference, its standard error, ``z = worse / SE`` and the mode.

Without rules (or with only ``[noise]``/``[compare]``): every metric row of the baseline
is held to "no worse" (0 %, noise-aware with k = 2) and no check may newly fail. Rows are
matched by label and sweep point; a missing metric, a different sample count or feature space between the runs,
an unreadable file or a failed run are errors (exit 2) — never a pass. Runs on
different world sizes are compared on quality metrics, never on latency rows.

The gate's layers: :mod:`~diffeval.gate.rules` (parse), :mod:`~diffeval.gate.compare` (frames in, verdicts
out), :mod:`~diffeval.gate.render` (table, Markdown, JUnit), :mod:`~diffeval.gate.process` (files, printing, exit
code). May import ``core``, ``stats`` and ``report``; never the run layer.
"""

from diffeval.gate.compare import Verdict, compare, evaluate_gate
from diffeval.gate.process import EXIT_ERROR, EXIT_PASS, EXIT_REGRESSION, run_gate
from diffeval.gate.rules import GateRules, load_rules, parse_rules

__all__ = [
    "GateRules",
    "Verdict",
    "parse_rules",
    "load_rules",
    "compare",
    "evaluate_gate",
    "run_gate",
    "EXIT_PASS",
    "EXIT_REGRESSION",
    "EXIT_ERROR",
]
