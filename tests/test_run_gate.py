"""Config-driven runs, reports (lossless round-trip, HTML) and the CI gate's exit codes."""

import json
import os
import textwrap

import pandas as pd
import pytest

from diffeval.cli.main import main
from diffeval.core.errors import ConfigError
from diffeval.core.points import sweep_table
from diffeval.report.report import Report, load_frames, make_row, read_csv
from diffeval.run.config import load_config, parse_config
from diffeval.run.runner import RunFailed, run_config


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


SMALL = """
[run]
name = "small"
n = 40
batch_size = 16

[sampler]
factory = "demo"
[sampler.kwargs]
steps = 5

[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"
"""


# -- configs ---------------------------------------------------------------------------------
def test_unknown_keys_are_errors_listing_the_valid_ones(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown option\(s\) 'sead' for \[run\].*batch_size, device, image_shape, n, name, seed.*did you mean 'seed'",  # noqa: E501
    ):
        parse_config({"run": {"n": 4, "sead": 1}, "sampler": {"factory": "demo"}})
    with pytest.raises(ConfigError, match="unknown metric 'fidd'"):
        parse_config({"run": {"n": 4}, "sampler": {"factory": "demo"}, "metrics": [{"name": "fidd"}]})
    with pytest.raises(ConfigError, match="unknown check"):
        parse_config({"run": {"n": 4}, "sampler": {"factory": "demo"}, "checks": {"snr": True}})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "bad.toml", "[run\nn = 3"))


def test_missing_import_path_and_raising_factory(tmp_path, capsys):
    cfg = _write(tmp_path, "a.toml", SMALL.replace('factory = "demo"', 'factory = "no_such_pkg.models:make"'))
    assert main(["run", str(cfg), "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "cannot import 'no_such_pkg.models'" in capsys.readouterr().err
    cfg = _write(
        tmp_path,
        "b.toml",
        SMALL.replace('factory = "demo"', 'factory = "run_helpers:raising_factory"').replace(
            "[sampler.kwargs]\nsteps = 5\n", ""
        ),
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "raised" in err and "checkpoint not found" in err


def test_sampler_dying_midway_keeps_the_rows_and_says_where(tmp_path, capsys):
    text = SMALL.replace('factory = "demo"', 'factory = "run_helpers:dying_sampler"').replace(
        "steps = 5", "die_at_call = 2"
    )
    cfg = _write(tmp_path, "c.toml", text)
    out = tmp_path / "c"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "batch 1 (seeds 16..31)" in err and "illegal memory access" in err
    report = Report.load(out / "report.json")
    assert report.rows[-1]["name"] == "run_error" and "batch 1" in json.loads(report.rows[-1]["details"])["stage"]


def test_ctrl_c_keeps_a_partial_report(tmp_path):
    cfg = parse_config(
        {"run": {"n": 40, "batch_size": 16}, "sampler": {"factory": "run_helpers:interrupted_sampler"}, "checks": {}},
    )
    with pytest.raises(RunFailed) as info:
        run_config(cfg, tmp_path / "i")
    assert info.value.interrupted
    assert Report.load(tmp_path / "i" / "report.json").rows[-1]["name"] == "run_interrupted"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cfg = _write(tmp_path, "s.toml", SMALL)
    assert main(["run", str(cfg), "--out", str(locked / "x"), "--no-progress"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_unwritable_output_folder_is_refused_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    cfg = _write(tmp_path, "s.toml", SMALL)
    assert main(["run", str(cfg), "--out", str(blocker / "out"), "--no-progress"]) == 2
    assert "not writable" in capsys.readouterr().err


# -- runs and reports ----------------------------------------------------------------------------
def test_run_twice_identical_and_lossless_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, "s.toml", SMALL))
    a = run_config(cfg, tmp_path / "a")
    b = run_config(cfg, tmp_path / "b")
    fa, fb = a.report.to_frame(), b.report.to_frame()
    metric = fa["kind"] == "metric"
    assert fa[metric]["value"].tolist() == fb[metric]["value"].tolist()
    frame = a.report.to_frame()
    pd.testing.assert_frame_equal(Report.load(a.paths["json"]).to_frame(), frame)
    pd.testing.assert_frame_equal(read_csv(a.paths["csv"]), frame)
    both = load_frames([a.paths["json"], b.paths["csv"]])
    assert set(both["run_id"]) == {a.report.run_id, b.report.run_id}
    html = a.paths["html"].read_text()
    assert "<table" in html and "data:image/png;base64," in html and "fid" in html


def test_run_demo_config_reproduces_the_demo(tmp_path):
    from diffeval.demo.run import DemoConfig, demo_config, run_demo

    demo_cfg = DemoConfig(out=tmp_path / "demo", n=60, steps=8, batch_size=30, progress=False)
    report, _ = run_demo(demo_cfg)
    outcome = run_config(demo_config(demo_cfg), tmp_path / "run")
    demo = report.to_frame().set_index("name")
    run = outcome.report.to_frame().set_index("name")
    for name in ("fid", "inception_score", "kid", "bpd", "terminal_snr", "xT_mean"):
        assert demo.loc[name, "value"] == pytest.approx(run.loc[name, "value"], rel=1e-9), name
    assert "fid[pure noise]" in demo.index and "fid[pure noise]" not in run.index


def test_sweep_rows_and_plot(tmp_path):
    cfg = load_config(_write(tmp_path, "w.toml", SMALL + '\n[sweep]\nknob = "steps"\nvalues = [2, 8]\n'))
    out = run_config(cfg, tmp_path / "w")
    frame = out.report.to_frame()
    fids = sweep_table(frame).query("name == 'fid'").set_index("steps")["value"]
    assert list(fids.index) == [2.0, 8.0] and fids[8.0] < fids[2.0]
    assert out.paths["sweep_fid_demo-digits_features_png"].stat().st_size > 5000


# -- gate ----------------------------------------------------------------------------------------
def _report(path, fid=12.0, fid_se=None, clip=30.0, n=1000, extractor="inception-v3:2048", check="pass", extra=()):
    rows = [
        make_row("fid", "metric", fid, stderr=fid_se, n_gen=n, n_ref=n, extractor=extractor, direction="lower"),
        make_row("clip_score", "metric", clip, stderr=0.2, n_gen=n, extractor="clip:ViT-B-32", direction="higher"),
        make_row("terminal_snr", "check", 1e-5, status=check),
        *extra,
    ]
    Report(rows, {"device": "cpu"}).write(path)
    return path / "report.json"


def test_gate_pass_absolute_relative_noise(tmp_path, capsys):
    base = _report(tmp_path / "base")
    rules = _write(
        tmp_path,
        "gate.toml",
        '[absolute]\nfid = "<= 12.5"\n[relative]\nfid = "+2%"\nclip_score = "-1%"\n[checks]\nmust_pass ='
        ' ["terminal_snr"]\n',
    )
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(base),
                "--candidate",
                str(_report(tmp_path / "ok", fid=12.1)),
                "--rules",
                str(rules),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(_report(tmp_path / "base_abs", fid=12.4)),  # +2% of 12.4 allows 12.648: only <= 12.5 fails
                "--candidate",
                str(_report(tmp_path / "abs", fid=12.6)),
                "--rules",
                str(rules),
            ]
        )
        == 1
    )
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "12.6" in line.split()]
    verdicts = {(r[0], "fid"): "REGRESSION" if "REGRESSION" in r else "PASS" for r in rows if "fid" in r}
    assert verdicts == {("absolute", "fid"): "REGRESSION", ("relative", "fid"): "PASS"}, rows
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(base),
                "--candidate",
                str(_report(tmp_path / "rel", clip=29.0)),
                "--rules",
                str(rules),
            ]
        )
        == 1
    )
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(base),
                "--candidate",
                str(_report(tmp_path / "chk", check="fail")),
                "--rules",
                str(rules),
            ]
        )
        == 1
    )
    # within seed noise: +3% but both runs carry SE 0.4 -> noise 2 * 0.566 = 1.13 > 0.36 change
    noisy_base = _report(tmp_path / "nb", fid=12.0, fid_se=0.4)
    rel_only = _write(tmp_path, "rel.toml", '[relative]\nfid = "+2%"\n')
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(noisy_base),
                "--candidate",
                str(_report(tmp_path / "nc", fid=12.36, fid_se=0.4)),
                "--rules",
                str(rel_only),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(noisy_base),
                "--candidate",
                str(_report(tmp_path / "nd", fid=14.0, fid_se=0.4)),
                "--rules",
                str(rel_only),
            ]
        )
        == 1
    )
    capsys.readouterr()


def test_gate_errors_exit_2(tmp_path, capsys):
    base = _report(tmp_path / "base")
    rules = _write(tmp_path, "gate.toml", '[relative]\nfid = "+2%"\n')
    assert (
        main(
            ["gate", "--baseline", str(base), "--candidate", str(_report(tmp_path / "n", n=500)), "--rules", str(rules)]
        )
        == 2
    )
    assert "n_gen differs" in capsys.readouterr().err
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(base),
                "--candidate",
                str(_report(tmp_path / "e", extractor="clip:ViT-B-32")),
                "--rules",
                str(rules),
            ]
        )
        == 2
    )
    missing = _write(tmp_path, "m.toml", '[relative]\nkid = "+2%"\n')
    assert main(["gate", "--baseline", str(base), "--candidate", str(base), "--rules", str(missing)]) == 2
    assert "missing from the baseline" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"run_id": "x", "rows": [')
    assert main(["gate", "--baseline", str(base), "--candidate", str(broken)]) == 2
    unknown = _write(tmp_path, "u.toml", '[relativ]\nfid = "+2%"\n')
    assert main(["gate", "--baseline", str(base), "--candidate", str(base), "--rules", str(unknown)]) == 2
    assert "unknown table" in capsys.readouterr().err
    wrong_way = _write(tmp_path, "w.toml", '[relative]\nfid = "-2%"\n')
    assert main(["gate", "--baseline", str(base), "--candidate", str(base), "--rules", str(wrong_way)]) == 2
    assert 'write fid = "+2%"' in capsys.readouterr().err
    failed_run = tmp_path / "failed"
    Report(
        [
            make_row("fid", "metric", 1.0, n_gen=1000, n_ref=1000, extractor="inception-v3:2048", direction="lower"),
            make_row("run_error", "check", float("nan"), status="fail", details={"stage": "sampling"}),
        ],
        {},
    ).write(failed_run)
    assert main(["gate", "--baseline", str(base), "--candidate", str(failed_run / "report.json")]) == 2
    with pytest.raises(SystemExit) as info:
        main(["gate", "--baseline", str(base), "--candidat", str(base)])
    assert info.value.code == 2


def test_gate_defaults_junit_and_step_summary(tmp_path, monkeypatch, capsys):
    base = _report(tmp_path / "base")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    junit = tmp_path / "gate.xml"
    assert (
        main(
            [
                "gate",
                "--baseline",
                str(base),
                "--candidate",
                str(_report(tmp_path / "c", fid=12.5)),
                "--junit",
                str(junit),
            ]
        )
        == 1
    )
    xml = junit.read_text()
    assert 'failures="1"' in xml and "<failure" in xml and "fid" in xml
    assert "diffeval gate: REGRESSION" in summary.read_text()
    assert main(["gate", "--baseline", str(base), "--candidate", str(base)]) == 0
    capsys.readouterr()


def test_gate_compares_quality_but_not_latency_across_world_sizes(tmp_path, capsys):
    rows = [
        make_row("fid", "metric", 12.0, n_gen=1000, n_ref=1000, extractor="inception-v3:2048", direction="lower"),
        make_row("throughput", "latency", 50.0, direction="higher"),
    ]
    Report(rows, {"world_size": 1}).write(tmp_path / "one")
    Report(rows, {"world_size": 2}).write(tmp_path / "two")
    one, two = str(tmp_path / "one" / "report.json"), str(tmp_path / "two" / "report.json")
    assert main(["gate", "--baseline", one, "--candidate", two]) == 0  # the default gate holds metric rows only
    capsys.readouterr()
    rules = _write(tmp_path, "lat.toml", '[relative]\nthroughput = "-5%"\n')
    assert main(["gate", "--baseline", one, "--candidate", two, "--rules", str(rules)]) == 2
    assert "different world sizes" in capsys.readouterr().err


def test_gate_fails_closed_on_an_undirected_metric(tmp_path, capsys):
    """A metric row the gate cannot direct is exit 2 naming it (it used to be skipped: a 10x worse cmmd passed)."""
    base = tmp_path / "b"
    cand = tmp_path / "c"
    Report([make_row("cmmd", "metric", 0.1, n_gen=100, extractor="clip:x")], {}).write(base)
    Report([make_row("cmmd", "metric", 1.0, n_gen=100, extractor="clip:x")], {}).write(cand)
    assert main(["gate", "--baseline", str(base / "report.json"), "--candidate", str(cand / "report.json")]) == 2
    assert "cannot direct metric row(s) ['cmmd']" in capsys.readouterr().err


def test_reference_statistics_checked_before_sampling(tmp_path, capsys):
    assert (
        main(
            [
                "ref",
                str(_digits_npz(tmp_path)),
                "--out",
                str(tmp_path / "ref.npz"),
                "--features",
                "demo-digits",
                "--n",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = (
        SMALL.replace('reference = "digits:test"', f'reference = "{tmp_path / "ref.npz"}"')
        .replace('factory = "demo"', 'factory = "run_helpers:dying_sampler"')
        .replace("steps = 5", "die_at_call = 1")
    )
    # the sampler would die at its first call: the n mismatch (40 vs 100) must be reported first
    assert main(["run", str(_write(tmp_path, "r.toml", cfg)), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sample counts do not match" in err and "illegal memory access" not in err


def _digits_npz(tmp_path):
    import numpy as np

    from diffeval.demo.data import load_digits

    path = tmp_path / "digits.npz"
    np.savez(path, arr_0=load_digits("test").images.numpy().transpose(0, 2, 3, 1))
    return path
