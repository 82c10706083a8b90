"""Text from reports, configs and file names, made safe to write into a page, a summary or an XML file.

Labels, run and sampler names, notes and error messages can come from a report.json written by anyone:
each output format gets them through one of these functions, so none can be injected into.

- :func:`printable`: every control or XML-illegal character (C0 and C1 controls, DEL, U+2028/U+2029,
  lone surrogates, U+FFFE/U+FFFF) written as a visible escape (``\\x07``, ``\\u2028``); the terminal, XML
  and HTML use it (then escape ``<&>`` themselves).
- :func:`markdown_text`: :func:`printable` on one line (newlines escaped too), with the characters that
  Markdown or inline HTML would read (``\\ ` * _ [ ] < > | # ~ & !``) backslash-escaped.
- :func:`markdown_code`: a code span that shows the text as it is (a fence longer than any backtick run in it).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["printable", "markdown_text", "markdown_code"]

# C0 controls (tab, newline and carriage return included: callers keep them with ``keep``), DEL, C1 controls,
# the Unicode line and paragraph separators, lone surrogates and the two non-characters XML 1.0 forbids
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|#~&!])")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any, keep: str = "") -> str:
    """``str(text)`` with every control and XML-illegal character written as ``\\xNN`` / ``\\uNNNN``, except those in
    ``keep`` (e.g. ``"\\n"`` where a line break is harmless)."""
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m.group()), str(text))


def markdown_text(text: Any) -> str:
    """``text`` as literal Markdown on one line: no heading, list, table cell, link, emphasis or HTML can be made."""
    return _MARKDOWN.sub(r"\\\1", printable(text))


def markdown_code(text: Any) -> str:
    """``text`` as a Markdown code span (``\\`text\\```), on one line, whatever backticks it holds."""
    body = printable(text)
    runs = [len(r) for r in re.findall("`+", body)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"
