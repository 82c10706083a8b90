"""Reports: rows with provenance ↔ pandas, written as CSV, JSON, Markdown and HTML with plots.

Owns :mod:`~diffeval.report.report` (rows from each metric's and check's own description, provenance, the
:class:`~diffeval.report.report.Report` and its files), :mod:`~diffeval.report.pages` (the Markdown and HTML pages a
person reads) and :mod:`~diffeval.report.plots` (sweep plots). May import ``core``, ``data``, ``metrics`` and
``checks`` (row descriptions and figures); never the engine, the run layer or the gate.
"""
