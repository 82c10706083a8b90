"""Nothing lost, nothing forged: every output written atomically, runs that resume after a move and refuse a
tampered checkpoint, one run per output folder, size guards before any work, run names kept inside runs/."""

import copy
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffeval.cli.main import main
from diffeval.core import files
from diffeval.engine import checkpoint
from diffeval.report.report import Report, make_row, provenance
from diffeval.run.config import load_config

TESTS = Path(__file__).parent

SMALL = """
[run]
name = "small"
n = 32
batch_size = 16

[sampler]
factory = "demo"
[sampler.kwargs]
steps = 2

[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"
allow_unmatched = true

[checks]
snr_endpoints = true
"""

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

[checks]
snr_endpoints = true
"""

STOP_ONCE = SMALL.replace('factory = "demo"', 'factory = "test_nothing_lost:stop_once"').replace(
    "steps = 2", 'flag = "{flag}"'
)


class _StopOnce:
    """The demo sampler, interrupted (like Ctrl-C) at its second batch the first time it runs."""

    def __init__(self, inner, flag):
        self.inner, self.flag, self.calls = inner, Path(flag), 0

    def describe(self):
        return self.inner.describe()

    def __call__(self, noise, cond=None, *, rng=None, timer=None):
        self.calls += 1
        if self.calls == 2 and not self.flag.exists():
            self.flag.write_text("stopped once")
            raise KeyboardInterrupt
        return self.inner(noise, cond, rng=rng, timer=timer)


def stop_once(flag: str):
    from diffeval.demo.bundle import demo_sampler

    return _StopOnce(demo_sampler(steps=2), flag)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _env():
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


def _diffeval(args, cwd, env):
    return subprocess.Popen(
        [sys.executable, "-m", "diffeval", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(path):
    return {r["label"]: r for r in json.loads(Path(path).read_text())["rows"]}


def _temporaries(folder):
    return [p.name for p in Path(folder).iterdir() if files.is_temporary(p.name)]


def _loaded(folder):
    try:
        return checkpoint.load(folder)
    except Exception:
        return {}


def _stopped_run(tmp_path, monkeypatch, out="cut"):
    """A run stopped (KeyboardInterrupt) after its first sampled batch: its folder holds a checkpoint."""
    monkeypatch.setenv("DIFFEVAL_CHECKPOINT_S", "0")
    cfg = _write(tmp_path / "stop.toml", STOP_ONCE.format(flag=tmp_path / "flag"))
    assert main(["run", str(cfg), "--out", str(tmp_path / out), "--no-progress"]) == 130
    state = checkpoint.load(tmp_path / out)
    assert state["loop"] is not None and state["loop"].batches_done == 1
    return cfg, tmp_path / out


def _edit_raw(folder, change):
    """Edit a checkpoint by hand (torch.load, change, torch.save): its digest no longer matches."""
    path = Path(folder) / checkpoint.FILENAME
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)


def _forge(folder, change):
    """Edit a checkpoint's payload and write it back with a matching digest (a forgery that knows the format)."""
    state = checkpoint.load(folder)
    change(state)
    checkpoint.save(folder, state)


# -- 1. a moved run resumes (after SIGTERM, from another working folder) ------------------------------------------
def test_a_run_stopped_by_sigterm_moved_and_resumed_elsewhere_equals_an_uninterrupted_run(tmp_path):
    env = {**_env(), "DIFFEVAL_CHECKPOINT_S": "0"}
    _write(tmp_path / "fast.toml", SLOW.format(delay=0.0))
    _write(tmp_path / "slow.toml", SLOW.format(delay=0.4))
    full = _diffeval(["run", "fast.toml", "--out", "full", "--no-progress"], tmp_path, env)
    assert full.wait(timeout=300) == 0, full.stderr.read()
    run = _diffeval(["run", "slow.toml", "--out", "runs/a", "--no-progress"], tmp_path, env)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        state = _loaded(tmp_path / "runs" / "a")
        if state.get("loop") is not None and state["loop"].batches_done >= 2:
            break
    else:
        run.kill()
        pytest.fail("no checkpoint with 2 batches done appeared within 120 s")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 130
    assert "--resume" in run.stderr.read()
    figures = checkpoint.load(tmp_path / "runs" / "a")["figures"]
    assert figures and all(not Path(p).is_absolute() and "runs" not in p for _, p in figures)  # relative to the run
    shutil.move(tmp_path / "runs" / "a", tmp_path / "moved" / "b")  # `mv runs/a moved/b`
    (tmp_path / "elsewhere").mkdir()
    resumed = _diffeval(
        ["run", str(tmp_path / "slow.toml"), "--resume", "../moved/b", "--no-progress"], tmp_path / "elsewhere", env
    )
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    b = tmp_path / "moved" / "b"
    a_rows, b_rows = _rows(tmp_path / "full" / "report.json"), _rows(b / "report.json")
    for label in ("fid@demo-digits:features", "kid@demo-digits:features"):
        assert b_rows[label]["value"] == pytest.approx(a_rows[label]["value"], rel=1e-9), label
        assert b_rows[label]["stderr"] == pytest.approx(a_rows[label]["stderr"], rel=1e-9), label
        assert b_rows[label]["n_gen"] == a_rows[label]["n_gen"] == 96
    assert [r["name"] for r in _rows(b / "report.json").values() if r["kind"] == "check"] == [
        r["name"] for r in a_rows.values() if r["kind"] == "check"
    ]  # complete: every check row, no run_interrupted row
    html = (b / "report.html").read_text()
    assert "INCOMPLETE" not in html and "log_snr" in html
    leftovers = {checkpoint.FILENAME, files.LOCK_NAME} & {p.name for p in b.iterdir()}
    assert not leftovers and not _temporaries(b)
    assert not (tmp_path / "runs" / "a").exists()  # nothing was written where the run used to be


# -- 2. every output is written atomically -------------------------------------------------------------------------
def test_a_full_disk_during_ref_keeps_the_older_statistics_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "stats.npz"
    args = ["ref", "digits:test", "--out", str(out), "--features", "demo-digits", "--no-progress"]
    assert main(args) == 0
    before = out.read_bytes()

    def full_disk(file, **arrays):  # the disk fills part-way through the file (ENOSPC injected, no real full disk)
        file.write(b"PK\x03\x04 part of a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    capsys.readouterr()
    assert main([*args, "--n", "100"]) == 2
    err = capsys.readouterr().err
    assert "unexpected error" not in err
    assert f"cannot write {out}: the disk holding {tmp_path} is full" in err
    assert "expected room for more than" in err and "Errno 28" in err and "Fix: free space in" in err
    assert "the older stats.npz there is unchanged" in err
    assert out.read_bytes() == before  # the good older file survives, and no partial file is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.npz"]


def test_a_killed_write_leaves_the_older_report_and_the_next_run_removes_its_temporary(tmp_path):
    cfg = _write(tmp_path / "s.toml", SMALL)
    out = tmp_path / "o"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    before = (out / "report.csv").read_bytes()
    # kill -9 in the middle of writing report.csv (the writer kills its own process part-way through)
    script = textwrap.dedent(
        """
        import os, signal, sys
        from diffeval.core.files import atomic_write

        def die(handle):
            handle.write(b"run_id,run_name,se")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write(sys.argv[1], die)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script, str(out / "report.csv")], env=_env(), check=False)
    assert killed.returncode == -signal.SIGKILL
    assert (out / "report.csv").read_bytes() == before  # never 0 bytes, never half a file
    assert len(_temporaries(out)) == 1 and _temporaries(out)[0].startswith(".report.csv.diffeval-tmp-")
    (out / "checkpoint.pt.tmp").write_bytes(b"left by an older diffeval killed mid-checkpoint")
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert not _temporaries(out) and not (out / "checkpoint.pt.tmp").exists()


def test_a_full_disk_during_a_checkpoint_is_explained_and_the_run_resumes_from_the_older_one(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("DIFFEVAL_CHECKPOINT_S", "0")
    cfg = _write(tmp_path / "s.toml", SMALL)
    assert main(["run", str(cfg), "--out", str(tmp_path / "full"), "--no-progress"]) == 0
    real_save, calls = torch.save, {"n": 0}

    def filling(obj, f, *args, **kwargs):  # the third checkpoint hits a full disk (ENOSPC injected)
        calls["n"] += 1
        if calls["n"] == 3:
            f.write(b"PK part of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling)
    out = tmp_path / "o"
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unexpected error" not in err
    assert f"cannot write {out / 'checkpoint.pt'}: the disk holding {out} is full" in err
    assert "Fix: free space in" in err and "the older checkpoint.pt there is unchanged" in err
    assert f"--resume {out}" in err  # and that resume works:
    assert checkpoint.load(out)["loop"].batches_done == 1 and not _temporaries(out)
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["run", str(cfg), "--resume", str(out), "--no-progress"]) == 0
    label = "fid@demo-digits:features"
    assert _rows(out / "report.json")[label]["value"] == pytest.approx(
        _rows(tmp_path / "full" / "report.json")[label]["value"], rel=1e-9
    )


def test_a_full_disk_during_the_report_keeps_the_results_and_resume_writes_it_without_sampling(
    tmp_path, capsys, monkeypatch
):
    import diffeval.report.report as report_module

    cfg = _write(tmp_path / "s.toml", SMALL)
    out = tmp_path / "o"
    real = report_module.write_text

    def full_at_html(path, text, **kw):  # the disk fills while report.html is written (ENOSPC injected)
        if Path(path).name != "report.html":
            return real(path, text, **kw)

        def partial(handle):
            handle.write(text[:100].encode())
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return files.atomic_write(path, partial, **kw)

    monkeypatch.setattr(report_module, "write_text", full_at_html)
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unexpected error" not in err
    assert f"cannot write {out / 'report.html'}: the disk holding {out} is full" in err
    assert "Nothing computed is lost" in err and f"--resume {out}" in err
    assert not (out / "report.html").exists() and not _temporaries(out) and (out / checkpoint.FILENAME).exists()
    first = _rows(out / "report.json")
    monkeypatch.setattr(report_module, "write_text", real)
    monkeypatch.setattr("diffeval.run.runner.evaluate_sharded", lambda *a, **k: pytest.fail("sampled again"))
    assert main(["run", str(cfg), "--resume", str(out), "--no-progress"]) == 0
    label = "fid@demo-digits:features"
    assert _rows(out / "report.json")[label]["value"] == first[label]["value"]
    assert (out / "report.html").stat().st_size > 0 and not (out / checkpoint.FILENAME).exists()


def _gate_reports(tmp_path):
    row = make_row("fid", "metric", 10.0, stderr=0.1, n_gen=40, n_ref=40, extractor="x", direction="lower")
    paths = [Report([row], provenance({}, "cpu")).write(tmp_path / name)["json"] for name in ("a", "b")]
    return [str(p) for p in paths]


def test_the_gates_junit_and_step_summary_are_never_left_half_written(tmp_path, monkeypatch):
    base, cand = _gate_reports(tmp_path)
    junit, summary = tmp_path / "gate.xml", tmp_path / "summary.md"
    summary.write_text("# earlier steps\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["gate", "--baseline", base, "--candidate", cand, "--junit", str(junit)]) == 0
    junit_before, summary_before = junit.read_bytes(), summary.read_bytes()
    real_fsync = os.fsync

    def full_disk(fd):  # the data reach the disk at fsync: it is full (ENOSPC injected)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["gate", "--baseline", base, "--candidate", cand, "--junit", str(junit)]) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert summary.read_bytes() == summary_before  # the failed append was cut back: no partial line
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["gate", "--baseline", base, "--candidate", cand, "--junit", str(junit)]) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert junit.read_bytes() == junit_before and not _temporaries(tmp_path)


# -- 3. one run per output folder ----------------------------------------------------------------------------------
def test_a_second_run_into_a_busy_folder_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(
    tmp_path, capsys
):
    env = _env()
    slow = _write(tmp_path / "slow.toml", SLOW.format(delay=1.0))
    busy = tmp_path / "busy"
    first = _diffeval(["run", str(slow), "--out", str(busy), "--no-progress"], tmp_path, env)
    lock = busy / files.LOCK_NAME
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and str(first.pid) in lock.read_text()):
        time.sleep(0.1)
    assert lock.exists(), first.stderr.read() if first.poll() is not None else "no lock within 120 s"
    try:
        cfg = _write(tmp_path / "s.toml", SMALL)
        assert main(["run", str(cfg), "--out", str(busy), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "another diffeval process is writing into" in err and f"pid {first.pid} on host" in err
        assert "since 20" in err and "pass another --out" in err
    finally:
        first.kill()  # kill -9: its lock file stays behind, naming a process that no longer runs
        first.wait(timeout=60)
    assert lock.exists()
    (busy / checkpoint.FILENAME).unlink(missing_ok=True)  # start over (the killed run may have left one)
    assert main(["run", str(cfg), "--out", str(busy), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"took over the stale lock in {busy} left by pid {first.pid}" in err
    assert not lock.exists()  # released at the end


# -- 4. sweep size guard; the points are stored once ------------------------------------------------------------
GRID = (
    SMALL
    + """
[sweep]
{extra}
[sweep.grid]
eta = {etas}
steps = {steps}
"""
)


def test_a_million_point_grid_is_refused_before_any_work(tmp_path, capsys):
    values = json.dumps([round(0.001 * i, 3) for i in range(1000)])
    cfg = _write(tmp_path / "g.toml", GRID.format(extra="", etas=values, steps=json.dumps(list(range(1, 1001)))))
    start = time.perf_counter()
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err
    assert "[sweep] has more points than max_points = 1,000" in err and "1,000,000 points declared" in err
    assert "32,000,000 samples" in err and "max_points = 1000000 in [sweep]" in err
    assert not (tmp_path / "o").exists()


def test_a_sweep_states_its_size_and_cost_first_and_reports_store_the_declared_grid_once(tmp_path, capsys):
    over = _write(tmp_path / "over.toml", GRID.format(extra="max_points = 3", etas="[0.0, 1.0]", steps="[1, 2]"))
    assert main(["run", str(over), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "more points than max_points = 3" in capsys.readouterr().err
    cfg = _write(tmp_path / "g.toml", GRID.format(extra="max_points = 4", etas="[0.0, 1.0]", steps="[1, 2]"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "sweep of 4 point(s) over eta, steps: 128 samples in 8 batches of up to 16" in err
    assert "about 192 sampler steps" in err
    sweep = json.loads((tmp_path / "o" / "report.json").read_text())["provenance"]["config"]["sweep"]
    assert sweep == {"knobs": ["eta", "steps"], "count": 4, "declared": {"grid": {"eta": [0.0, 1.0], "steps": [1, 2]}}}
    # a 1,000-point grid (at the limit) is stored as its axes: configs, checkpoints and reports do not grow with it
    big = _write(
        tmp_path / "big.toml",
        GRID.format(extra="", etas=json.dumps([0.01 * i for i in range(100)]), steps=json.dumps(list(range(1, 11)))),
    )
    stored = json.dumps(load_config(big).to_dict())
    assert len(load_config(big).sweep.points) == 1000 and len(stored) < 3000


# -- 5. a checkpoint cannot embed files outside its run, nor be edited -------------------------------------------
def test_a_checkpoint_pointing_outside_its_run_or_edited_by_hand_is_refused(tmp_path, capsys, monkeypatch):
    cfg, out = _stopped_run(tmp_path, monkeypatch)
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")

    def resumed(change, forge=False):
        shutil.rmtree(out)
        shutil.copytree(pristine, out)
        (_forge if forge else _edit_raw)(out, change)
        code = main(["run", str(cfg), "--resume", str(out), "--no-progress"])
        html = out / "report.html"
        assert "root:x:0:0" not in (html.read_text() if html.exists() else "")
        return code, capsys.readouterr().err

    # hand edits: the digest no longer matches
    for change in (
        lambda raw: raw["payload"].__setitem__("figures", [["log_snr", "/etc/passwd"]]),
        lambda raw: raw["payload"]["loop"].__setitem__("batches_done", 0),
    ):
        code, err = resumed(change)
        assert code == 2 and "does not match the digest diffeval recorded" in err and "SHA-256" in err, err
    # forgeries with a matching digest: paths outside the run, counts or seed blocks that do not fit the config
    forgeries = {
        "figure 'log_snr' points outside the run folder": lambda s: s.__setitem__(
            "figures", [["log_snr", str(secret)]]
        ),
        "points outside the run folder": lambda s: s.__setitem__("figures", [["log_snr", "../secret.txt"]]),
        "its sampling state does not fit the config": lambda s: setattr(s["loop"], "batches_done", 3),
        "does not hold the samples of the batches done": lambda s: setattr(s["loop"], "batches_done", 0),
    }
    for message, change in forgeries.items():
        code, err = resumed(change, forge=True)
        assert code == 2 and message in err and "Fix: delete" in err, err

    def shift_blocks(state):  # one sample moved from seed block 0 to block 1
        blocks = state["loop"].metric_states["fid@demo-digits:features"]["seed_blocks"]
        blocks.counts[0] -= 1
        blocks.counts[1] += 1

    code, err = resumed(shift_blocks, forge=True)
    assert code == 2 and "does not hold the samples of the batches done" in err
    # the figure path is relative to the run folder, and the untouched checkpoint resumes
    shutil.rmtree(out)
    shutil.copytree(pristine, out)
    assert checkpoint.load(out)["figures"] == [["log_snr", "log_snr.png"]]
    assert main(["run", str(cfg), "--resume", str(out), "--no-progress"]) == 0
    assert _rows(out / "report.json")["fid@demo-digits:features"]["n_gen"] == 32


def test_unknown_checkpoint_fields_and_another_version_are_refused_clearly(tmp_path, capsys, monkeypatch):
    cfg, out = _stopped_run(tmp_path, monkeypatch)
    raw = torch.load(out / checkpoint.FILENAME, weights_only=True)
    cases = {
        "has fields diffeval does not write": lambda r: r.__setitem__("note", "hi"),
        "has fields this run does not know": lambda r: r["payload"].__setitem__("extra", 1),
        "a saved LoopState has fields diffeval does not know": lambda r: r["payload"]["loop"].__setitem__("extra", 1),
        "written by another diffeval version": lambda r: r.__setitem__("diffeval_version", "0.0.1"),
    }
    for message, change in cases.items():
        edited = copy.deepcopy(raw)
        change(edited)
        edited["digest"] = checkpoint.digest(edited["payload"])  # a consistent digest: only the field is wrong
        torch.save(edited, out / checkpoint.FILENAME)
        assert main(["run", str(cfg), "--resume", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "unexpected error" not in err and "Fix:" in err, err


# -- 7. run names stay inside runs/ ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../X", "ABSOLUTE", "a/b", "..", "a\\b"])
def test_a_run_name_never_leads_outside_runs(tmp_path, capsys, monkeypatch, name):
    work = tmp_path / "w" / "v"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    cfg = _write(tmp_path / "n.toml", SMALL.replace('name = "small"', f"name = {json.dumps(name)}"))
    assert main(["run", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot be the name of a folder in runs/" in err and "pass --out DIR" in err
    assert not list(tmp_path.rglob("report.*")) and not (tmp_path / "abs").exists()


# -- 11. absurd counts, up front ---------------------------------------------------------------------------------
def test_an_absurd_sample_count_is_refused_before_any_work_without_a_resume_hint(tmp_path, capsys):
    cfg = _write(tmp_path / "h.toml", SMALL.replace("n = 32", "n = 1000000000000"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "[run] n = 1,000,000,000,000 is more samples than one run can evaluate" in err
    assert "n <= 100,000,000" in err and "--resume" not in err and "unexpected error" not in err
    assert not (tmp_path / "o").exists()
    seeds = _write(tmp_path / "s.toml", SMALL.replace("n = 32", "n = 32\nseed = 9223372036854775800"))
    assert main(["run", str(seeds), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "seed + n runs past the largest seed" in capsys.readouterr().err
