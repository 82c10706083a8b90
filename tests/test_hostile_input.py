"""Hostile input: nothing forged in the outputs, nothing lost from the inputs, every refusal explained.

Labels and names cannot inject into JUnit XML, the step summary, report.md or report.html; prompt files split at
newlines only; huge images are refused from their headers; statistics files, .npz archives and reports are data,
validated before use; each refusal says what, expected, got and the fix (exit 2, never "unexpected error").
"""

import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from PIL import Image

from diffeval.cli.main import main
from diffeval.core.errors import InputError
from diffeval.core.text import markdown_code, markdown_text, printable
from diffeval.data import sources
from diffeval.data.sources import FolderSource, read_prompts
from diffeval.report.report import Report, make_row
from diffeval.samplers import CallableSampler
from diffeval.stats.moments import FeatureMoments

FEATURES = ["--features", "demo-digits", "--no-progress", "--json"]
EVIL = "fid\x01\x1b[2J\u2028\n\n## diffeval gate: pass\n<b>bold</b> | `x` [a](javascript:alert(1))"


def _explained(err: str) -> None:
    """An error that says what, expected, got and the fix — not a bare exception."""
    assert "unexpected error" not in err, err
    assert "error:" in err and "expected" in err and "got" in err and "Fix:" in err, err


@pytest.fixture(scope="module")
def digits():
    from diffeval.demo.data import load_digits

    return load_digits("test").images.numpy(), load_digits("train").images.numpy()


def _folder(folder: Path, images: np.ndarray, suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"{i:04d}{suffix}")
    return folder


def _stats(path: Path, **arrays) -> str:
    with open(path, "wb") as handle:  # np.savez on a handle keeps the name (a path gains ".npz")
        np.savez(handle, **arrays)
    return str(path)


# -- 6: outputs that cannot be injected ----------------------------------------------------------
def _report(folder: Path, label: str, fid: float, stderr: float | None = None, provenance=None) -> str:
    rows = [
        make_row(
            "fid", "metric", fid, stderr=stderr, n_gen=100, n_ref=100, extractor="x", direction="lower", label=label
        )
    ]
    Report(rows, {"device": "cpu", **(provenance or {})}).write(folder)
    return str(folder / "report.json")


def test_a_label_cannot_break_the_junit_xml_or_forge_the_step_summary(tmp_path, monkeypatch, capsys):
    summary, junit = tmp_path / "summary.md", tmp_path / "gate.xml"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    base, cand = _report(tmp_path / "b", EVIL, 12.0), _report(tmp_path / "c", EVIL, 15.0)
    assert main(["gate", "--baseline", base, "--candidate", cand, "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x01" not in out and "\\x1b[2J" in out  # the terminal table shows, never obeys
    suite = ElementTree.parse(junit).getroot()  # well-formed
    case = suite.find("testcase")
    assert suite.get("failures") == "1" and case.find("failure") is not None and "\\x01" in case.get("name")
    headings = [line for line in summary.read_text().splitlines() if line.startswith("#")]
    assert headings == ["## diffeval gate: REGRESSION"], headings
    text = summary.read_text()
    assert "<b>" not in text and "[a](" not in text and "\\[a\\](javascript" in text  # escaped: shown, not linked


def test_an_error_naming_a_label_cannot_forge_the_step_summary(tmp_path, monkeypatch, capsys):
    summary, junit = tmp_path / "summary.md", tmp_path / "gate.xml"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    rows = [make_row("fid", "metric", 12.0, n_gen=9, n_ref=9, direction="lower", label=EVIL)] * 2  # duplicate rows
    Report(rows, {}).write(tmp_path / "dup")
    path = str(tmp_path / "dup" / "report.json")
    assert main(["gate", "--baseline", path, "--candidate", path, "--junit", str(junit)]) == 2
    assert "two rows for" in capsys.readouterr().err
    lines = summary.read_text().splitlines()
    assert [line for line in lines if line.startswith("#")] == ["## diffeval gate: ERROR"], lines
    assert sum(line.startswith("**Error:**") for line in lines) == 1
    error = ElementTree.parse(junit).getroot().find("testcase/error")
    assert error is not None and "two rows for" in error.get("message")


def hostile_sampler():
    """A sampler whose name tries to add a heading and a tag to the report pages."""
    return CallableSampler(
        lambda noise, cond: noise.clamp(-1, 1),
        name="s\n# SAMPLER <img src=x onerror=alert(1)>\x07",
        nfe=1,
        image_shape=(1, 8, 8),
    )


RUN = """
[run]
name = "{name}"
n = {n}
batch_size = 4

[sampler]
factory = "test_hostile_input:{factory}"
{cond}
[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"
allow_unmatched = true
"""


def _config(tmp_path: Path, factory: str, n: int = 8, cond: str = "", name: str = "hostile") -> Path:
    path = tmp_path / f"{factory}.toml"
    path.write_text(textwrap.dedent(RUN.format(name=name, n=n, factory=factory, cond=cond)))
    return path


def test_report_pages_escape_run_and_sampler_names(tmp_path, capsys):
    assert main(["run", str(_config(tmp_path, "hostile_sampler")), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    capsys.readouterr()
    md = (tmp_path / "r" / "report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert headings[0] == "# hostile" and "## Sampler" in headings, headings
    assert set(headings[1:]) <= {"## Sampler", "## Metrics", "## Checks", "## Latency", "## Provenance"}, headings
    assert not re.search(r"(?<!\\)<img", md) and "\\<img" in md and "\x07" not in md  # shown, not a tag
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<img src=x" not in page and "\x07" not in page and "\\x07" in page
    # the run name is written by whoever made the report: the same holds for it
    rows = [make_row("fid", "metric", 1.0, direction="lower", sampler="ok")]
    report = Report(rows, {"run_name": "run\n# Injected <script>alert(1)</script>\x07", "note": "a\n## b"})
    md = report.to_markdown()
    assert [line for line in md.splitlines() if line.startswith("#")] == [
        md.splitlines()[0],
        "## Sampler",
        "## Metrics",
        "## Provenance",
    ]
    assert md.splitlines()[0].startswith("# run") and "<script>" not in md
    page = report.to_html({})
    assert "<script>" not in page and "\x07" not in page and "&lt;script&gt;" in page


def test_the_sanitising_helpers():
    assert (
        printable("a\x00b\x7f\x85\u2028\ud800\ufffe\tc\n", keep="\t")
        == "a\\x00b\\x7f\\x85\\u2028\\ud800\\ufffe\tc\\x0a"
    )
    assert markdown_text("# a | <b>_x_ *y* [l](u) \\ &amp;\n## h") == (
        "\\# a \\| \\<b\\>\\_x\\_ \\*y\\* \\[l\\](u) \\\\ \\&amp;\\\\x0a\\#\\# h"
    )
    assert markdown_code("a`b") == "``a`b``" and markdown_code("`x") == "`` `x ``"


# -- 8: prompts ----------------------------------------------------------------------------------
CAPTIONS = ["a cat\u2028on a mat", "form\x0cfeed", "group\x1dsep\x1erecord\x1cfile", "next\x85line", "a\rcarriage"]


def test_prompts_split_at_newlines_only(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(("\r\n".join(CAPTIONS[:2]) + "\n" + "\n".join(CAPTIONS[2:]) + "\r\n").encode("utf-8"))
    assert read_prompts(path) == CAPTIONS


SEEN: list = []


def recording_sampler():
    """Records the prompts it is given (the run's pairing of prompt and seed)."""

    def fn(noise, cond):
        SEEN.extend(cond)
        return noise.clamp(-1, 1)

    return CallableSampler(fn, name="recording", nfe=1, image_shape=(1, 8, 8))


def test_a_run_pairs_every_prompt_with_its_sample_and_checks_the_count(tmp_path, capsys):
    (tmp_path / "four.txt").write_text("\n".join(CAPTIONS[:4]) + "\n", encoding="utf-8")
    cfg = _config(tmp_path, "recording_sampler", n=8, cond='[cond]\nprompts = "four.txt"\n')
    SEEN.clear()
    assert main(["run", str(cfg), "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    assert SEEN[:8] == CAPTIONS[:4] * 2  # U+2028, \x0c, \x1c-\x1e, U+0085 split nothing
    (tmp_path / "five.txt").write_text("\n".join("abcde") + "\n")
    cfg = _config(tmp_path, "recording_sampler", n=8, cond='[cond]\nprompts = "five.txt"\n')
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    _explained(err)
    assert "got 5 prompts" in err and "n = 8" in err


# -- 9: image size from the header -----------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A 1-bit PNG whose header declares width x height (a few hundred bytes: its pixel data is cut short)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + (width + 7) // 8) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"an image of {self.size} was decoded")

    monkeypatch.setattr(Image.Image, "load", refuse)


def test_a_huge_png_is_refused_from_its_header_before_decoding(tmp_path, no_decoding, capsys):
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(3):
        _huge_png(folder / f"{i}.png", 12000, 12000)
    assert main(["fid", str(folder), str(folder), *FEATURES, "--allow-unmatched"]) == 2
    err = capsys.readouterr().err
    _explained(err)
    assert "too large to decode" in err and "12000 x 12000" in err and "DIFFEVAL_MAX_IMAGE_PIXELS" in err


def test_above_pils_limit_the_error_is_explained(tmp_path, no_decoding, capsys):
    folder = tmp_path / "bomb"
    folder.mkdir()
    _huge_png(folder / "0.png", 20000, 20000)  # 400 M pixels: PIL itself refuses to open it
    assert main(["fid", str(folder), str(folder), *FEATURES, "--allow-unmatched"]) == 2
    err = capsys.readouterr().err
    _explained(err)
    assert "too large to decode" in err and "PIL refused it" in err and "DecompressionBombError" not in err


def test_the_pixel_cap_is_a_stated_constant_with_an_override(tmp_path, digits, monkeypatch):
    folder = _folder(tmp_path / "small", digits[0][:3])  # 8 x 8 = 64 pixels
    assert len(FolderSource(folder)) == 3 and sources.MAX_IMAGE_PIXELS == 4096 * 4096
    monkeypatch.setattr(sources, "MAX_IMAGE_PIXELS", 63)
    with pytest.raises(InputError, match="at most 63 pixels"):
        FolderSource(folder)
    monkeypatch.setenv("DIFFEVAL_MAX_IMAGE_PIXELS", "64")
    assert len(FolderSource(folder)) == 3
    monkeypatch.setenv("DIFFEVAL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="not a pixel count"):
        FolderSource(folder)


# -- 10: statistics files ------------------------------------------------------------------------
MU, SIGMA = np.zeros(4), np.eye(4)


def test_complex_or_fractional_statistics_are_refused(tmp_path, capsys):
    ref = _stats(tmp_path / "ref.npz", mu=MU, sigma=SIGMA, n=100)
    for name, arrays, said in (
        ("complex_mu.npz", {"mu": MU + 1j, "sigma": SIGMA, "n": 100}, "complex"),
        ("complex_sigma.npz", {"mu": MU, "sigma": SIGMA + 0j, "n": 100}, "complex"),
        ("bool_mu.npz", {"mu": MU > 0, "sigma": SIGMA, "n": 100}, "not real numbers"),
        ("fraction.npz", {"mu": MU, "sigma": SIGMA, "n": 100.7}, "not a whole number"),
    ):
        assert main(["fid", _stats(tmp_path / name, **arrays), ref, *FEATURES]) == 2, name
        err = capsys.readouterr().err
        _explained(err)
        assert said in err, (name, err)
    with pytest.raises(InputError, match="complex"):  # statistics given in memory too
        FeatureMoments.from_mean_cov(MU + 0j, SIGMA, 10)
    assert main(["fid", _stats(tmp_path / "whole.npz", mu=MU, sigma=SIGMA, n=100.0), ref, *FEATURES]) == 0


def test_generated_statistics_without_a_count_take_gen_n(tmp_path, capsys):
    gen, ref = _stats(tmp_path / "gen.npz", mu=MU, sigma=SIGMA), _stats(tmp_path / "ref.npz", mu=MU, sigma=SIGMA)
    assert main(["fid", gen, ref, *FEATURES, "--ref-n", "100"]) == 2
    err = capsys.readouterr().err
    _explained(err)
    assert "gen.npz has no sample count" in err and "--gen-n N" in err and "--ref-n N" not in err
    assert main(["fid", gen, ref, *FEATURES, "--gen-n", "100"]) == 2
    err = capsys.readouterr().err
    assert "ref.npz has no sample count" in err and "--ref-n N" in err and "--gen-n N" not in err
    assert main(["fid", gen, ref, *FEATURES, "--gen-n", "100", "--ref-n", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_gen"] == out["n_ref"] == 100 and out["fid"] == pytest.approx(0.0, abs=1e-9)
    counted = _stats(tmp_path / "counted.npz", mu=MU, sigma=SIGMA, n=100)
    assert main(["fid", counted, ref, *FEATURES, "--gen-n", "90", "--ref-n", "100"]) == 2
    assert "drop --gen-n" in capsys.readouterr().err


# -- 11: every refusal explained ---------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_broken_statistics_files_are_explained_errors(tmp_path, capsys):
    ref = _stats(tmp_path / "ref.npz", mu=MU, sigma=SIGMA, n=100)
    np.savez(tmp_path / "object.npz", mu=np.array([1, "a", None], dtype=object), sigma=SIGMA, n=100)
    raw = Path(ref).read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (490000, 490000)})
    with zipfile.ZipFile(tmp_path / "forged.npz", "w") as archive:  # sigma declares 1.75 TiB, holds 64 bytes
        archive.writestr("mu.npy", _npy(MU))
        archive.writestr("sigma.npy", header.getvalue() + b"\0" * 64)
        archive.writestr("n.npy", _npy(np.asarray(100)))
    cases = {
        "object.npz": "holds Python objects",
        "truncated.npz": "cannot read",
        "forged.npz": "does not hold what its header declares",
        _stats(tmp_path / "n_vector.npz", mu=MU, sigma=SIGMA, n=np.array([100, 100])): "n is not one number",
        _stats(tmp_path / "n_string.npz", mu=MU, sigma=SIGMA, n=np.asarray("100")): "n is not one number",
        _stats(tmp_path / "shapes.npz", mu=MU, sigma=np.eye(5), n=100): "shapes do not match",
    }
    for name, said in cases.items():
        assert main(["fid", str(tmp_path / name), ref, *FEATURES]) == 2, name
        err = capsys.readouterr().err
        _explained(err)
        assert said in err, (name, err)
    assert main(["is", str(tmp_path / "truncated.npz"), *FEATURES]) == 2  # the same archive as an image batch
    _explained(capsys.readouterr().err)


def test_a_report_whose_rows_are_not_a_list_is_an_explained_error(tmp_path, capsys):
    good = _report(tmp_path / "b", "fid", 12.0)
    for name, edit in (
        ("rows_dict", lambda d: d.update(rows={"a": 1})),
        ("rows_strings", lambda d: d.update(rows=["fid"])),
        ("provenance_list", lambda d: d.update(provenance=[])),
        ("array", lambda d: d.clear()),
    ):
        data = json.loads(Path(good).read_text())
        edit(data)
        (tmp_path / f"{name}.json").write_text(json.dumps(data if data else [1, 2]))
        assert main(["gate", "--baseline", str(tmp_path / f"{name}.json"), "--candidate", good]) == 2, name
        err = capsys.readouterr().err
        _explained(err)
        assert "cannot read report" in err, err


# -- 12: the smaller ones ------------------------------------------------------------------------
def test_upper_case_npz_and_netpbm_images_are_read(tmp_path, digits, capsys):
    stats = _stats(tmp_path / "STATS.NPZ", mu=MU, sigma=SIGMA, n=100)
    assert main(["fid", stats, stats, *FEATURES]) == 0
    capsys.readouterr()
    pgm = _folder(tmp_path / "pgm", digits[0][:12], ".pgm")
    assert main(["is", str(pgm), *FEATURES, "--splits", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["n_gen"] == 12
    ppm = tmp_path / "ppm"
    ppm.mkdir()
    for i, image in enumerate(digits[0][:5]):
        Image.fromarray(image[0]).convert("RGB").save(ppm / f"{i}.PPM")
    source = FolderSource(ppm)
    assert len(source) == 5 and source.load([0]).shape == (1, 3, 8, 8)
    torch.testing.assert_close(source.load([2])[0, 1], torch.from_numpy(digits[0][2, 0]))


def test_symlinked_subfolders_are_skipped_with_a_note(tmp_path, digits, capsys):
    root = _folder(tmp_path / "root", digits[1][:6])
    target = _folder(tmp_path / "elsewhere", digits[1][6:10])
    try:
        (root / "linked").symlink_to(target, target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    (root / "loop").symlink_to(root, target_is_directory=True)
    assert main(["is", str(root), *FEATURES, "--splits", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n_gen"] == 6
    assert "skipped 2 symlinked subfolder(s) (linked, loop)" in captured.err
    assert "symlinked subfolder" in FolderSource(root).notes


def test_palette_transparency_is_refused_as_the_docs_say(tmp_path, digits, capsys):
    folder = tmp_path / "palette"
    folder.mkdir()
    for i, image in enumerate(digits[0][:4]):
        Image.fromarray(image[0]).convert("P").save(folder / f"{i}.png", transparency=0)
    with pytest.raises(InputError, match="has transparency"):
        FolderSource(folder)
    assert main(["is", str(folder), *FEATURES, "--splits", "1"]) == 2
    err = capsys.readouterr().err
    _explained(err)
    assert "transparency" in err


@pytest.mark.parametrize("rule", ['[relative]\nfid = "+1e400%"\n', '[absolute]\nfid = "<= 1e400"\n'])
def test_gate_rules_must_be_finite(tmp_path, capsys, rule):
    base, cand = _report(tmp_path / "b", "fid", 12.0), _report(tmp_path / "c", "fid", 1e300)
    (tmp_path / "rules.toml").write_text(rule)
    assert main(["gate", "--baseline", base, "--candidate", cand, "--rules", str(tmp_path / "rules.toml")]) == 2
    err = capsys.readouterr().err
    _explained(err)
    assert "not finite" in err


def test_a_negative_standard_error_is_refused_by_the_gate(tmp_path, capsys):
    base, cand = _report(tmp_path / "b", "fid", 12.0, -5.0), _report(tmp_path / "c", "fid", 13.0, -5.0)
    assert main(["gate", "--baseline", base, "--candidate", cand]) == 2
    err = capsys.readouterr().err
    _explained(err)
    assert "negative standard error" in err


@pytest.mark.parametrize("command", ["kid", "cmmd", "prdc"])
@pytest.mark.parametrize("blocks", ["0", "1"])
def test_blocks_below_two_are_refused(tmp_path, digits, capsys, command, blocks):
    folder = _folder(tmp_path / "g", digits[0][:10])
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(folder), str(folder), "--blocks", blocks, "--no-progress"])
    assert exit_info.value.code == 2 and "expected an integer >= 2" in capsys.readouterr().err


def test_a_missing_plugin_module_is_an_error(tmp_path):
    report = _report(tmp_path / "b", "fid", 12.0)
    env = {**os.environ, "DIFFEVAL_PLUGINS": "no_such_plugin_module"}
    done = subprocess.run(
        [sys.executable, "-m", "diffeval", "gate", "--baseline", report, "--candidate", report],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    _explained(done.stderr)
    assert "no_such_plugin_module" in done.stderr and "DIFFEVAL_PLUGINS" in done.stderr


def test_the_unmatched_count_message_uses_the_extractors_dimension(tmp_path, digits, capsys):
    from diffeval.demo.networks import DigitsClassifier

    gen, ref = _folder(tmp_path / "gen", digits[1][:20]), _folder(tmp_path / "ref", digits[0][:10])
    assert main(["fid", str(gen), str(ref), *FEATURES]) == 2
    err = capsys.readouterr().err
    assert f"here d = {DigitsClassifier.FEATURE_DIM}:" in err and "d = 2048" not in err


def test_the_docs_say_configs_and_plugins_are_trusted_code():
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    trust = " ".join(text[text.index("**Trust.**") :].split("\n\n")[0].split())
    for said in ("factory", "os:system", "DIFFEVAL_PLUGINS", "entry point", "are data", "never unpickled"):
        assert said in trust, said
