"""Trust at the edges: wrong-range samples, honest standard errors, exit codes, colour, provenance, no lost work.

Each test drives the CLI where the problem was seen through the CLI.
"""

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffeval.cli.main import COMMANDS, main
from diffeval.report.report import Report

TESTS = Path(__file__).resolve().parent


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _rows(report_json):
    return {r["label"]: r for r in json.loads(Path(report_json).read_text())["rows"]}


def _png_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    return folder


def _digits(split="test"):
    from diffeval.demo.data import load_digits

    return load_digits(split).images.numpy()


RANGE = """
[run]
name = "range"
n = 48
batch_size = 16

[sampler]
factory = "run_helpers:{factory}"

[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"
allow_unmatched = true
"""


# -- 1. wrong-range samples -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory, signature, fix", [("unit_sampler", "[0, 1]", "x * 2 - 1"), ("byte_sampler", "0-255", "x / 127.5 - 1")]
)
def test_a_sampler_on_the_wrong_scale_fails_the_run_with_the_fix(tmp_path, capsys, factory, signature, fix):
    cfg = _write(tmp_path / "r.toml", RANGE.format(factory=factory))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 1  # was 0, with FID 611.5 / 885.9
    row = _rows(tmp_path / "o" / "report.json")["output_range"]
    message = json.loads(row["details"])["message"]
    assert row["status"] == "fail" and f"look like {signature}" in message and fix in message
    assert "FAILED checks: output_range" in capsys.readouterr().err


def test_the_demo_sampler_side_trap_is_caught_and_gated(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--out",
                str(tmp_path / "bug"),
                "--n",
                "40",
                "--steps",
                "5",
                "--no-progress",
                "--bug",
                "unit-output",
            ]
        )
        == 1
    )
    assert "output_range" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "ok"), "--n", "40", "--steps", "5", "--no-progress"]) == 0
    rules = _write(tmp_path / "g.toml", '[relative]\nfid = "+100000%"\n')  # a gate that would accept any FID
    base, cand = str(tmp_path / "ok" / "report.json"), str(tmp_path / "bug" / "report.json")
    assert (
        main(["gate", "--baseline", base, "--candidate", cand, "--rules", str(rules)]) == 1
    )  # output_range is always checked
    assert "must not fail (always)" in capsys.readouterr().out


def test_range_statistics_merge_across_shards():
    from diffeval.checks.output_range import RangeStats

    x = torch.randn(10, 1, 4, 4)
    a, b = RangeStats(), RangeStats()
    a.update(x[:3])
    b.update(x[3:])
    whole = RangeStats.of(x)
    assert a.merge(b) == whole and whole.outside == int((x.abs() > 1.001).sum()) and whole.lo == float(x.min())


# -- 2. every stderr is the standard error of its row's value ------------------------------------
def test_inception_score_stderr_is_the_standard_error_of_the_split_mean():
    from diffeval.metrics import Batch, InceptionScore
    from diffeval.metrics.inception_score import split_scores

    logits = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    metric = InceptionScore("x", "f", splits=5)
    metric.update(Batch(features={"x": {"f": logits}}))
    out = metric.compute()
    scores = split_scores(logits, 5)
    assert out.stderr == pytest.approx(scores.std(ddof=1) / math.sqrt(5), rel=1e-12)
    assert out["inception_score_std"] == pytest.approx(scores.std(), rel=1e-12)  # torch-fidelity's spread, kept


def test_kid_jackknife_standard_error_matches_the_sampling_spread():
    """Over 120 repetitions the jackknife SE is within 25% of the empirical standard deviation of KID."""
    from diffeval.metrics.kid import kid_with_jackknife

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(300, 12, generator=g, dtype=torch.float64)
    values, errors = [], []
    for _ in range(120):
        x = torch.randn(300, 12, generator=g, dtype=torch.float64) + 0.3
        est = kid_with_jackknife(x, ref, subsets=20, subset_size=100, blocks=10)
        values.append(est.value)
        errors.append(est.stderr)
    ratio = np.mean(errors) / np.std(values, ddof=1)
    assert 0.75 < ratio < 1.25, ratio
    assert est.std > 1.5 * np.std(values)  # the subset spread, which the old rows called a standard error


DEMO_KID = """
[run]
name = "kid"
n = 360
seed = {seed}
batch_size = 120

[sampler]
factory = "demo"
[sampler.kwargs]
steps = {steps}

[[metrics]]
name = "kid"
extractor = "demo-digits"
reference = "digits:test"
subset_size = 100

[[metrics]]
name = "inception_score"
extractor = "demo-digits"
"""


def test_the_gate_catches_a_10x_kid_and_passes_equal_quality_on_other_seeds(tmp_path, capsys):
    runs = {}
    for name, seed, steps in (("base", 0, 50), ("reseeded", 1000, 50), ("worse", 0, 3)):
        cfg = _write(tmp_path / f"{name}.toml", DEMO_KID.format(seed=seed, steps=steps))
        assert main(["run", str(cfg), "--out", str(tmp_path / name), "--no-progress"]) == 0
        runs[name] = str(tmp_path / name / "report.json")
    kid = {k: _rows(v)["kid@demo-digits:features"]["value"] for k, v in runs.items()}
    assert kid["worse"] > 10 * kid["base"]
    capsys.readouterr()
    assert (
        main(["gate", "--baseline", runs["base"], "--candidate", runs["worse"]]) == 1
    )  # passed as "within noise" before
    assert main(["gate", "--baseline", runs["base"], "--candidate", runs["reseeded"]]) == 0
    out = capsys.readouterr().out
    assert "kid@demo-digits:features" in out and "inception_score@demo-digits:logits" in out


# -- 3. exit codes: every subcommand through every failure class ---------------------------------------
BAD_INPUT = {
    "run": ["run", "missing.toml"],
    "gate": ["gate", "--baseline", "missing.json", "--candidate", "missing.json"],
    "fid": ["fid", "missing", "missing"],
    "kid": ["kid", "missing", "missing"],
    "cmmd": ["cmmd", "missing", "missing"],
    "prdc": ["prdc", "missing", "missing"],
    "ref": ["ref", "missing", "--out", "{tmp}/r.npz"],
    "is": ["is", "missing"],
    "clip-score": ["clip-score", "missing", "missing.txt"],
    "diagnose": ["diagnose", "--alphas", "missing.npy", "--out", "{tmp}/d"],
    "bpd": ["bpd", "missing.toml"],
    "bench": ["bench", "missing.toml"],
    "demo": ["demo", "--out", "{tmp}/d", "--steps", "5000", "--no-progress"],
}


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_every_subcommand_maps_every_failure_class_to_its_exit_code(command, tmp_path, capsys, monkeypatch):
    assert set(BAD_INPUT) == set(COMMANDS.names())  # a new command must join this table
    argv = [a.format(tmp=tmp_path) for a in BAD_INPUT[command]]
    assert main(argv) == 2  # bad input: one clear message
    err = capsys.readouterr().err
    assert f"diffeval {command}: error:" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # an unknown option
        main([command, "--no-such-option"])
    assert info.value.code == 2
    real = COMMANDS.get(command)
    for exc, code in ((RuntimeError("boom"), 2), (KeyboardInterrupt(), 130)):

        def handler(args, exc=exc):
            raise exc

        monkeypatch.setitem(COMMANDS._items, command, type(real)(real.help, real.configure, handler))
        assert main(argv) == code  # unexpected errors are 2, never 1; interrupts 130
    capsys.readouterr()


def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    import diffeval.engine.references

    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    base = tmp_path / "base"
    Report([], {}).write(base)  # an empty but valid report
    rules = _write(tmp_path / "rules.toml", "[checks]\nmust_pass = []\n")

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(diffeval.engine.references, "measure", no_work)
    digits = _png_folder(tmp_path / "digits", _digits()[:8])
    unwritable = str(blocker / "x")
    cases = [
        ["ref", str(digits), "--out", unwritable + ".npz", "--features", "demo-digits"],
        ["ref", str(digits), "--out", str(tmp_path / "stats"), "--features", "demo-digits"],  # not .npz
        ["diagnose", "--schedule", "linear", "--out", unwritable],
        ["bench", "demo", "--out", unwritable, "--steps", "2"],
        ["run", "demo", "--out", unwritable],
        [
            "gate",
            "--baseline",
            str(base / "report.json"),
            "--candidate",
            str(base / "report.json"),
            "--junit",
            unwritable,
        ],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        assert "error" in capsys.readouterr().err
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", unwritable)
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(base / "report.json"),
                "--candidate",
                str(base / "report.json"),
                "--rules",
                str(rules),
            ]
        )
        == 2
    )
    assert "$GITHUB_STEP_SUMMARY" in capsys.readouterr().err


def test_a_corrupt_image_is_exit_2_before_any_feature(tmp_path, capsys, monkeypatch):
    evaluate_module = importlib.import_module("diffeval.engine.loop")  # (diffeval.engine.loop is also the function)
    folder = _png_folder(tmp_path / "g", _digits()[:20])
    (folder / "0007.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    monkeypatch.setattr(evaluate_module, "feed", lambda *a, **k: pytest.fail("features were extracted"))
    assert main(["fid", str(folder), "digits:test", "--features", "demo-digits", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "0007.png" in err


# -- 4. colour --------------------------------------------------------------------------------------------
def test_a_folder_mixing_grayscale_and_colour_keeps_the_colour_and_says_so(tmp_path, capsys):
    from diffeval.data.sources import FolderSource

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(70):  # more than the 64 files the old reader sampled
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / f"{i:03d}.png")
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(folder / "999.png")
    source = FolderSource(folder)
    assert source.load([70])[0, :, 0, 0].tolist() == [255, 0, 0]  # was read as gray 76
    assert "converted 70 L file(s)" in source.notes and "converted 70 L" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(folder / "alpha.png")
    assert main(["fid", str(folder), str(folder), "--features", "demo-digits"]) == 2
    assert "alpha channel" in capsys.readouterr().err


# -- 5. which weights were used ------------------------------------------------------------------------
def test_statistics_record_their_weights_and_a_mismatch_names_both(tmp_path, capsys):
    from inception_fixture import save_random_inception

    from diffeval.features.weights import sha256_file
    from diffeval.stats.moments import FeatureMoments

    a, b = save_random_inception(tmp_path / "a.pt", seed=1), save_random_inception(tmp_path / "b.pt", seed=2)
    g = np.random.RandomState(0)
    images = tmp_path / "imgs.npz"
    np.savez(images, arr_0=g.randint(0, 256, (6, 16, 16, 3)).astype(np.uint8))
    assert main(["ref", str(images), "--out", str(tmp_path / "ref.npz"), "--weights", str(a), "--no-progress"]) == 0
    meta = FeatureMoments.load(tmp_path / "ref.npz").meta
    assert (
        meta["weights_sha256"] == sha256_file(a)
        and meta["layer"] == "2048"
        and meta["quantization"].startswith("uint8")
    )
    capsys.readouterr()
    assert (
        main(["fid", str(images), str(tmp_path / "ref.npz"), "--weights", str(b), "--no-progress"]) == 2
    )  # was FID 161.4
    err = capsys.readouterr().err
    assert sha256_file(a)[:12] in err and sha256_file(b)[:12] in err and "another feature space" in err
    assert main(["fid", str(images), str(tmp_path / "ref.npz"), "--weights", str(a), "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fid"] == 0.0 and abs(out["raw_value"]) < 1e-6 and out["statistics_space"] == "verified"


# -- 6. no lost work ---------------------------------------------------------------------------------------
def test_counts_are_checked_before_sampling(tmp_path):
    from diffeval.engine.loop import evaluate
    from diffeval.metrics import FID
    from diffeval.stats.moments import FeatureMoments

    ref = FeatureMoments()
    ref.update(torch.randn(10, 4, dtype=torch.float64))
    calls = []

    def sampler(noise, cond):
        calls.append(1)
        return noise.clamp(-1, 1)

    with pytest.raises(Exception, match="sample counts do not match"):
        evaluate(
            sampler, seeds=range(20), image_shape=(1, 2, 2), metrics=[FID(ref, "x", "f")], extractors={"x": object()}
        )
    assert not calls


def test_fid_checks_the_reference_count_before_extracting(tmp_path, capsys, monkeypatch):
    evaluate_module = importlib.import_module("diffeval.engine.loop")
    gen = _png_folder(tmp_path / "gen", _digits("train")[:50])
    small = tmp_path / "small.npz"
    np.savez(small, arr_0=_digits()[:20].transpose(0, 2, 3, 1))
    monkeypatch.setattr(evaluate_module, "feed", lambda *a, **k: pytest.fail("features were extracted"))
    assert main(["fid", str(gen), str(small), "--features", "demo-digits", "--no-progress"]) == 2
    assert "sample counts do not match" in capsys.readouterr().err


SLOW = """
[run]
name = "slow"
n = 96
batch_size = 16

[sampler]
factory = "run_helpers:slow_demo"
[sampler.kwargs]
delay_s = {delay}

[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"
allow_unmatched = true

[[metrics]]
name = "kid"
extractor = "demo-digits"
reference = "digits:test"
subset_size = 50

[[metrics]]
name = "inception_score"
extractor = "demo-digits"
splits = 4

[checks]
snr_endpoints = true
"""


def _diffeval(args, cwd, env):
    return subprocess.Popen(
        [sys.executable, "-m", "diffeval", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_keeps_a_partial_report_and_resume_equals_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "DIFFEVAL_CHECKPOINT_S": "0"}
    _write(tmp_path / "fast.toml", SLOW.format(delay=0.0))
    _write(tmp_path / "slow.toml", SLOW.format(delay=0.5))
    full = _diffeval(["run", "fast.toml", "--out", "full", "--no-progress"], tmp_path, env)
    assert full.wait(timeout=300) == 0, full.stderr.read()
    run = _diffeval(["run", "slow.toml", "--out", "cut", "--no-progress"], tmp_path, env)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        ckpt = tmp_path / "cut" / "checkpoint.pt"
        if (
            ckpt.exists()
            and ckpt.stat().st_size
            and "loop" in _ckpt(tmp_path / "cut")
            and _ckpt(tmp_path / "cut")["loop"]
        ):
            if _ckpt(tmp_path / "cut")["loop"].batches_done >= 2:
                break
    else:
        run.kill()
        pytest.fail("no checkpoint with 2 batches done appeared within 120 s")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 130
    err = run.stderr.read()
    assert "stopped by SIGTERM" in err and "--resume" in err
    partial = Report.load(tmp_path / "cut" / "report.json")
    assert (
        partial.rows[-1]["name"] == "run_interrupted" and "INCOMPLETE" in (tmp_path / "cut" / "report.html").read_text()
    )
    assert any(r["name"] == "terminal_snr" for r in partial.rows)  # the work done before is in the report
    # the config named by another spelling of its path is the same config
    resumed = _diffeval(["run", str(tmp_path / "slow.toml"), "--resume", "cut", "--no-progress"], tmp_path, env)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = _rows(tmp_path / "full" / "report.json"), _rows(tmp_path / "cut" / "report.json")
    for label in ("fid@demo-digits:features", "kid@demo-digits:features", "inception_score@demo-digits:logits"):
        assert b[label]["value"] == pytest.approx(a[label]["value"], rel=1e-9), label
        assert b[label]["stderr"] == pytest.approx(a[label]["stderr"], rel=1e-9), label
        pa, pb = (json.loads(r[label]["details"])["pairing"] for r in (a, b))  # seed blocks survive the resume
        assert pb["seeds"] == pa["seeds"] and pb["values"] == pytest.approx(pa["values"], rel=1e-9), label
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "cut" / "report.json").read_text())["provenance"]["config"]["resumed"] is True


def _ckpt(folder):
    from diffeval.engine import checkpoint

    try:
        return checkpoint.load(folder)
    except Exception:
        return {}


def test_resume_refuses_another_config(tmp_path, capsys):
    os.environ["DIFFEVAL_CHECKPOINT_S"] = "0"
    try:
        cfg = _write(tmp_path / "a.toml", RANGE.format(factory="noise_sampler").replace("n = 48", "n = 32"))
        from diffeval.engine import checkpoint

        (tmp_path / "o").mkdir()
        checkpoint.save(
            tmp_path / "o",
            {
                "config": "{}",
                "rows": [],
                "checks": [],
                "figures": [],
                "samples": None,
                "sweep_done": 0,
                "data_done": True,
                "loop": None,
            },
        )
        assert main(["run", str(cfg), "--resume", str(tmp_path / "o"), "--no-progress"]) == 2
        assert "config differs" in capsys.readouterr().err
        assert main(["run", str(cfg), "--resume", str(tmp_path / "nothing"), "--no-progress"]) == 2
        assert "nothing to resume" in capsys.readouterr().err
        # a fresh run into the folder of an interrupted one refuses to overwrite its checkpoint
        assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "holds the checkpoint of an interrupted run" in err and "--resume" in err
        assert (tmp_path / "o" / "checkpoint.pt").exists()
    finally:
        del os.environ["DIFFEVAL_CHECKPOINT_S"]


# -- 7. standard reference statistics; diffeval kid ---------------------------------------------------------------
def test_reference_statistics_without_a_count_take_ref_n(tmp_path, capsys):
    from diffeval.stats.moments import FeatureMoments

    assert (
        main(["ref", "digits:test", "--out", str(tmp_path / "full.npz"), "--features", "demo-digits", "--no-progress"])
        == 0
    )
    stats = FeatureMoments.load(tmp_path / "full.npz")
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mean.numpy(), sigma=stats.cov.numpy())  # no n, no metadata
    capsys.readouterr()
    assert (
        main(["fid", "digits:test", str(tmp_path / "pytorch_fid.npz"), "--features", "demo-digits", "--no-progress"])
        == 2
    )
    assert "--ref-n" in capsys.readouterr().err
    args = [
        "fid",
        "digits:test",
        str(tmp_path / "pytorch_fid.npz"),
        "--features",
        "demo-digits",
        "--ref-n",
        "360",
        "--json",
        "--no-progress",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["fid"] == 0.0 and out["n_ref"] == 360 and out["statistics_space"] == "unverified"
    assert "caveat" in captured.err and "other Inception ports" in captured.err
    assert main(args[:-4] + ["--ref-n", "100", "--no-progress"]) == 2  # the matched-count rule applies
    assert "sample counts do not match" in capsys.readouterr().err


def test_kid_command(tmp_path, capsys):
    gen = _png_folder(tmp_path / "gen", _digits("train")[:120])
    assert (
        main(
            [
                "kid",
                str(gen),
                "digits:test",
                "--features",
                "demo-digits",
                "--subset-size",
                "50",
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["n_gen"] == 120 and out["n_ref"] == 360 and out["kid_stderr"] > 0 and "jackknife" in out["stderr_is"]


# -- 8. own samplers ---------------------------------------------------------------------------------------
def test_a_factory_module_next_to_the_config_is_importable(tmp_path, capsys, monkeypatch):
    (tmp_path / "cfgdir").mkdir()
    _write(
        tmp_path / "cfgdir" / "mymodels_next_to_config.py",
        """
        from diffeval.samplers import CallableSampler

        def make(scale=0.5):
            return CallableSampler(lambda noise, cond: (noise * scale).clamp(-1, 1), name="mine", image_shape=(1, 8, 8))
        """,
    )
    cfg = _write(
        tmp_path / "cfgdir" / "eval.toml",
        RANGE.format(factory="x").replace("run_helpers:x", "mymodels_next_to_config:make"),
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    capsys.readouterr()
    cfg = _write(
        tmp_path / "cfgdir" / "bad.toml",
        RANGE.format(factory="x").replace("run_helpers:x", "no_such_module_anywhere:make"),
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    assert "the config's folder" in capsys.readouterr().err


DOCUMENTS = ("README.md", "CONTRIBUTING.md", *sorted(f"docs/{p.name}" for p in (TESTS.parent / "docs").glob("*.md")))


def _doc_blocks(documents=DOCUMENTS):
    import re

    return [
        (name, lang, code)
        for name in documents
        for lang, code in re.findall(r"```(\w+)\n(.*?)```", (TESTS.parent / name).read_text(), re.S)
    ]


def test_every_documented_snippet_runs(tmp_path, monkeypatch):
    """Every Python snippet of the README, CONTRIBUTING and docs/ runs as written (the k-diffusion one in its own
    environment); every TOML snippet parses as what it shows (a config, a [sweep], or gate rules)."""
    from diffeval.gate import parse_rules
    from diffeval.run.config import parse_config
    from diffeval.run.sweeps import parse_sweep

    blocks = _doc_blocks()
    monkeypatch.chdir(tmp_path)  # what a snippet writes lands here
    assert len(DOCUMENTS) >= 8 and {"docs/cli.md", "docs/gate.md", "docs/statistics.md"} <= set(DOCUMENTS)
    python = [(name, code) for name, lang, code in blocks if lang == "python" and "k_diffusion" not in code]
    assert {name for name, _ in python} >= {"README.md", "docs/python.md"}
    for name, code in python:
        exec(compile(code, name, "exec"), {})
    tomllib = __import__("tomllib") if sys.version_info >= (3, 11) else __import__("tomli")
    tomls = [(name, code) for name, lang, code in blocks if lang == "toml"]
    assert tomls
    for name, code in tomls:
        table = tomllib.loads(code)
        if "run" in table:  # a whole config
            parse_config(table, source=name)
        elif "sweep" in table or "grid" in table:  # a [sweep] example of a config
            assert parse_sweep(table.get("sweep", table)).points
        else:  # gate rules
            parse_rules(table)


def test_the_readme_gate_quick_start_runs_on_the_demo(tmp_path, monkeypatch, capsys):
    """The README's CI quick start, command by command: two demo runs and a gate that passes with the shipped rules."""
    import re
    import shlex

    readme = (TESTS.parent / "README.md").read_text()
    block = re.search(r"## Quick start 3: a CI gate\s+```bash\n(.*?)```", readme, re.S).group(1)
    commands = [c.split("#")[0].strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    assert [c.split()[:2] for c in commands] == [["diffeval", "run"], ["diffeval", "run"], ["diffeval", "gate"]]
    monkeypatch.chdir(tmp_path)
    rules = TESTS.parent / "diffeval" / "demo" / "gate.toml"
    for command in commands:
        argv = shlex.split(command.replace("diffeval/demo/gate.toml", str(rules)))[1:]
        assert main(argv) == 0, (command, capsys.readouterr().err[-2000:])
    assert "gate: pass" in capsys.readouterr().err
    assert (tmp_path / "gate.xml").read_text().count("<testcase") >= 8


@pytest.mark.kdiffusion
def test_the_adapter_snippet_runs(tmp_path):
    pytest.importorskip("k_diffusion", reason="k-diffusion is tested in its own environment: tox -e kdiffusion")
    from adapter_helpers import EpsModel, build_tiny_sd_pipeline, tiny_unet

    (code,) = [code for _, lang, code in _doc_blocks() if lang == "python" and "k_diffusion" in code]
    namespace = {"pipe": build_tiny_sd_pipeline(tmp_path / "tok"), "unet": tiny_unet(), "model": EpsModel().eval()}
    exec(compile(code, "docs/samplers.md", "exec"), namespace)
    assert namespace["dpmpp"].prediction == "eps" and namespace["ddim"].describe().steps == 50


# -- 10. the conformance bound ---------------------------------------------------------------------------------
def test_batch_size_independence_uses_a_derived_float32_bound():
    diffusers = pytest.importorskip("diffusers")
    from diffeval.samplers.diffusers import DiffusersPipelineSampler
    from diffeval.testing import check_sampler

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    result = {
        r.name: r
        for r in check_sampler(DiffusersPipelineSampler(pipe, num_inference_steps=10), image_shape=(3, 32, 32))
    }
    check = result["batch_size_independence"]
    assert check.status == "pass" and "sigma_T/alpha_T" in check.message, check


# -- also -------------------------------------------------------------------------------------------------
def test_help_documents_every_option_with_its_default_once():
    import argparse

    from diffeval.cli.main import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            shown = sub._get_formatter()._expand_help(action)  # once: was "(default: X) (default: None)"
            assert shown.count("default") <= 1, (
                name,
                action.option_strings,
                shown,
            )  # was "(default: X) (default: None)"
            has_value = action.default is not None and action.default is not False and not action.required
            if has_value:
                assert "default" in shown, (name, action.option_strings, shown)
        assert name in text


def test_bpd_vdm_only_for_continuous_time_models_and_it_agrees_with_the_vlb(capsys):
    assert main(["bpd", "--estimator", "vdm", "--n", "4"]) == 2
    assert "continuous-time models only" in capsys.readouterr().err
    assert main(["bpd", "demo-gaussian", "--n", "60", "--json"]) == 0
    vdm = json.loads(capsys.readouterr().out)
    assert main(["bpd", "demo-gaussian", "--estimator", "vlb", "--no-clip", "--n", "60", "--json"]) == 0
    vlb = json.loads(capsys.readouterr().out)
    assert vdm["estimator"] == "vdm" and vlb["estimator"] == "vlb"
    assert abs(vdm["bpd"] - vlb["bpd"]) < 3 * math.hypot(vdm["bpd_stderr"], vlb["bpd_stderr"]), (vdm, vlb)


def test_the_html_page_reads_well(tmp_path):
    assert main(["diagnose", "--schedule", "linear", "--data", "digits", "--out", str(tmp_path / "d")]) == 0
    page = (tmp_path / "d" / "report.html").read_text()
    assert "<title>diagnose</title>" in page and "<h2>Checks</h2>" in page and page.count("<figure>") == 3
    assert "none</p>" not in page
    cfg = _write(tmp_path / "r.toml", RANGE.format(factory="noise_sampler"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    page = (tmp_path / "o" / "report.html").read_text()
    assert "<title>range</title>" in page and "<h2>Sampler</h2>" in page and "factory run_helpers:noise_sampler" in page
    assert "<h2>Metrics</h2>" in page and "<h2>Latency</h2>" in page and "INCOMPLETE" not in page


# -- review: inputs that used to pass silently ------------------------------------------------------------------
def test_inputs_that_used_to_pass_silently_are_clear_errors(tmp_path, capsys, monkeypatch):
    from diffeval.core.errors import ConfigError, InputError
    from diffeval.metrics.cmmd import CMMD, cmmd
    from diffeval.metrics.kid import KID
    from diffeval.run.config import load_config

    x = torch.randn(6, 4, dtype=torch.float64)
    for sigma in (0.0, -1.0, math.nan):
        with pytest.raises(ConfigError, match="bad CMMD kernel bandwidth"):
            cmmd(x, x, sigma=sigma)
        with pytest.raises(ConfigError, match="bad CMMD kernel bandwidth"):
            CMMD(x, "clip", "image", sigma=sigma)
    kid = KID(x, "x", "f", subsets=2, subset_size=2)
    state = kid.state()
    del state["seed_blocks"]  # a state missing a key must not merge an empty default
    with pytest.raises(InputError, match="unknown or missing keys \\['seed_blocks'\\]"):
        kid.merge_state(state)
    assert main(["fid", "digits:test", "digits:all", "--ref-n", "7", "--features", "demo-digits", "--no-progress"]) == 2
    assert "--ref-n 7 applies only to reference statistics" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. `diffeval demo --out demo`: the folder does not shadow the named config
    assert load_config("demo").name == load_config(Path(__file__).parents[1] / "diffeval/demo/demo.toml").name
    monkeypatch.setenv("DIFFEVAL_CHECKPOINT_S", "nan")  # would have switched checkpoints off
    assert main(["run", "demo", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "DIFFEVAL_CHECKPOINT_S is not a number of seconds" in err and not (tmp_path / "o").exists()
