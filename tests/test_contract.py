"""One contract per concept: metrics and checks describe themselves; registries, not tables; the gate fails closed."""

import ast
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from diffeval.checks.base import CHECKS, Check, CheckOutcome, CheckResult, register_check
from diffeval.cli.main import main
from diffeval.core.errors import ConfigError, InputError
from diffeval.features import EXTRACTORS
from diffeval.metrics.base import LABEL_OPTION, METRICS, Batch, Metric, MetricExample, MetricResult, register_metric
from diffeval.report.report import Report
from diffeval.run.config import load_config, parse_config
from diffeval.run.runner import RunFailed, run_config
from diffeval.testing import check_metric

PACKAGE = Path(__file__).resolve().parents[1] / "diffeval"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- a metric defined here, and nowhere else -------------------------------------------------------
class MeanPixel(Metric):
    """Mean pixel value of the samples in [0, 1] (a toy metric: brighter is better)."""

    name = "mean_pixel_test"
    direction = "higher"
    options = (LABEL_OPTION,)
    state_keys = ("sums",)

    def __init__(self, label=None):
        self.custom_label = label
        self.reset()

    def reset(self):
        self.sums = torch.zeros(3, dtype=torch.float64)  # n, sum, sum of squares of per-image means

    def update(self, batch):
        images = batch.images.double() / 255 if batch.images.dtype == torch.uint8 else batch.images.double()
        if not bool(torch.isfinite(images).all()):
            raise InputError("images contain NaN")
        means = images.flatten(1).mean(1)
        self.sums += torch.stack(
            [torch.tensor(float(means.numel()), dtype=torch.float64), means.sum(), (means**2).sum()]
        )

    def merge(self, other):
        self.sums += other.sums
        return self

    def compute(self):
        n, s, s2 = self.sums.tolist()
        mean = s / n
        return MetricResult(mean, math.sqrt(max(s2 / n - mean**2, 0) / max(n - 1, 1)), n_gen=int(n))

    def config_options(self):
        return {"label": self.custom_label}

    @classmethod
    def from_config(cls, options, ctx):
        return cls(options["label"])

    @classmethod
    def example(cls):
        images = torch.rand(30, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return MetricExample(cls, Batch(features={}, seeds=list(range(30)), images=images).split([10, 20]))


@pytest.fixture
def mean_pixel_metric():
    register_metric(MeanPixel)
    yield MeanPixel
    METRICS.unregister(MeanPixel.name)


CONSTANT = """
[run]
name = "constant"
n = 24
batch_size = 8

[sampler]
factory = "run_helpers:constant_sampler"
[sampler.kwargs]
level = {level}

[[metrics]]
name = "mean_pixel_test"
"""


def test_a_new_metric_flows_from_config_to_gate_with_no_edit_elsewhere(tmp_path, mean_pixel_metric, capsys):
    assert all(r.status == "pass" for r in check_metric(*_example(MeanPixel)))
    runs = {}
    for name, level in (("base", -0.5), ("brighter", -0.25), ("darker", -0.75)):
        cfg = load_config(_write(tmp_path, f"{name}.toml", CONSTANT.format(level=level)))
        outcome = run_config(cfg, tmp_path / name)
        row = next(r for r in outcome.report.rows if r["name"] == "mean_pixel_test")
        assert row["label"] == "mean_pixel_test" and row["direction"] == "higher" and row["kind"] == "metric"
        expected = round((level + 1) * 127.5) / 255  # the 8-bit grid
        assert row["value"] == pytest.approx(expected, abs=1e-12)
        runs[name] = str(outcome.paths["json"])
    assert main(["gate", "--baseline", runs["base"], "--candidate", runs["brighter"]]) == 0
    assert (
        main(["gate", "--baseline", runs["base"], "--candidate", runs["darker"]]) == 1
    )  # lower is worse for this metric
    table = capsys.readouterr().out
    assert "mean_pixel_test" in table and "REGRESSION" in table


def _example(cls):
    example = cls.example()
    return example.make, example.batches


@pytest.mark.parametrize("name", sorted(n for n in METRICS.names() if n != MeanPixel.name))
def test_conformance_of_every_registered_metric(name):
    results = check_metric(*_example(METRICS.get(name)))
    failed = [str(r) for r in results if r.status != "pass"]
    assert not failed, failed
    assert {r.name for r in results} == {
        "declaration",
        "streaming_equals_one_shot",
        "merged_shards_equal_single_pass",
        "batch_size_independence",
        "options_round_trip",
        "float64_state",
        "non_finite_refused",
    }


def test_conformance_catches_a_broken_metric():
    class Sloppy(MeanPixel):
        name = "sloppy_test"

        def reset(self):
            self.sums = torch.zeros(3, dtype=torch.float32)  # float32 state

        def merge(self, other):
            return self  # drops the other shard

    statuses = {r.name: r.status for r in check_metric(*_example(Sloppy))}
    assert statuses["float64_state"] == "fail" and statuses["merged_shards_equal_single_pass"] == "fail"


# -- a check defined here ------------------------------------------------------------------------
class ScheduleLength(Check):
    name = "schedule_length_test"
    needs = ("schedule",)
    from diffeval.core.options import Option

    options = (Option("max_T", int, 100, "longest schedule allowed", minimum=1),)

    def run(self, ctx):
        T = ctx.info.schedule.T  # noqa: N806
        ok = T <= self.settings["max_T"]
        return CheckOutcome(
            [
                CheckResult(
                    self.name,
                    "pass" if ok else "fail",
                    float(T),
                    f"T <= {self.settings['max_T']}",
                    "fine" if ok else "too long. Fix: shorten it",
                )
            ]
        )


def test_a_new_check_flows_from_config_to_report_and_skips_without_its_needs(tmp_path):
    register_check(ScheduleLength)
    try:
        demo = parse_config(
            {
                "run": {"n": 4, "batch_size": 4},
                "sampler": {"factory": "demo", "kwargs": {"steps": 2}},
                "checks": {"schedule_length_test": {"max_T": 10}},
            }
        )
        row = next(r for r in run_config(demo, tmp_path / "a").report.rows if r["name"] == "schedule_length_test")
        assert row["status"] == "fail" and row["value"] == 1000
        bare = parse_config(
            {
                "run": {"n": 4, "batch_size": 4},
                "sampler": {"factory": "run_helpers:noise_sampler"},
                "checks": {"schedule_length_test": True},
            }
        )
        row = next(r for r in run_config(bare, tmp_path / "b").report.rows if r["name"] == "schedule_length_test")
        assert row["status"] == "skip" and "exposes no schedule" in json.loads(row["details"])["message"]
        with pytest.raises(ConfigError, match="'max_t': did you mean 'max_T'"):
            parse_config(
                {"run": {"n": 4}, "sampler": {"factory": "demo"}, "checks": {"schedule_length_test": {"max_t": 3}}}
            )
    finally:
        CHECKS.unregister(ScheduleLength.name)


# -- two FIDs in one run -------------------------------------------------------------------------
class PixelExtractor:
    name = "pixels-test"
    key = "pixels-test"
    layers = {"pixels": 64}
    default_layers = {"fid": "pixels", "kid": "pixels"}
    channels = 1

    def __call__(self, images):
        return {"pixels": images.flatten(1).double() / 255}


TWO_FIDS = """
[run]
name = "two"
n = 40
batch_size = 20

[sampler]
factory = "demo"
[sampler.kwargs]
steps = {steps}

[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"

[[metrics]]
name = "fid"
extractor = "pixels-test"
reference = "digits:test"
"""


def test_two_fids_with_different_extractors_give_two_rows_and_the_gate_compares_both(tmp_path, capsys):
    EXTRACTORS.register("pixels-test", lambda device="cpu": PixelExtractor())
    try:
        paths = {}
        for steps in (8, 2):
            outcome = run_config(
                load_config(_write(tmp_path, f"s{steps}.toml", TWO_FIDS.format(steps=steps))), tmp_path / f"s{steps}"
            )
            fids = [r for r in outcome.report.rows if r["name"] == "fid"]
            assert sorted(r["label"] for r in fids) == ["fid@demo-digits:features", "fid@pixels-test:pixels"]
            assert len({r["value"] for r in fids}) == 2
            paths[steps] = str(outcome.paths["json"])
        capsys.readouterr()
        assert main(["gate", "--baseline", paths[8], "--candidate", paths[8]]) == 0
        out = capsys.readouterr().out
        assert "fid@demo-digits:features" in out and "fid@pixels-test:pixels" in out
        rules = _write(tmp_path, "r.toml", '[relative]\nfid = "+1%"\n')  # a name applies to every FID row
        assert main(["gate", "--baseline", paths[8], "--candidate", paths[2], "--rules", str(rules)]) == 1
        out = capsys.readouterr().out
        assert out.count("REGRESSION") == 2
        label_rule = _write(
            tmp_path, "l.toml", '[relative]\n"fid@pixels-test:pixels" = "+1000%"\n'
        )  # a label applies to its row only
        assert main(["gate", "--baseline", paths[8], "--candidate", paths[2], "--rules", str(label_rule)]) == 0
        assert "fid@demo-digits:features" not in capsys.readouterr().out
        dup = TWO_FIDS.format(steps=2).replace('extractor = "pixels-test"', 'extractor = "demo-digits"')
        with pytest.raises(RunFailed, match="share the label 'fid@demo-digits:features'"):
            run_config(load_config(_write(tmp_path, "dup.toml", dup)), tmp_path / "dup")
    finally:
        EXTRACTORS.unregister("pixels-test")


# -- config options come from the metric's declaration --------------------------------------------
def test_config_accepts_exactly_what_the_metric_accepts():
    cfg = parse_config(
        {
            "run": {"n": 4},
            "sampler": {"factory": "demo"},
            "metrics": [{"name": "bpd", "data": "digits:test", "clip_x0": False}],
        }
    )
    assert cfg.metrics[0].options["clip_x0"] is False  # refused by the old hand-kept table
    with pytest.raises(ConfigError, match="'subset_sise': did you mean 'subset_size'"):
        parse_config(
            {
                "run": {"n": 4},
                "sampler": {"factory": "demo"},
                "metrics": [{"name": "kid", "reference": "x", "subset_sise": 10}],
            }
        )
    with pytest.raises(ConfigError, match="unknown metric 'fidd'.*did you mean 'fid'"):
        parse_config({"run": {"n": 4}, "sampler": {"factory": "demo"}, "metrics": [{"name": "fidd"}]})
    with pytest.raises(ConfigError, match="wrong type"):
        parse_config(
            {"run": {"n": 4}, "sampler": {"factory": "demo"}, "metrics": [{"name": "inception_score", "splits": "ten"}]}
        )
    with pytest.raises(ConfigError, match="needs option 'reference'"):
        parse_config({"run": {"n": 4}, "sampler": {"factory": "demo"}, "metrics": [{"name": "fid"}]})
    with pytest.raises(ConfigError, match="'rescale_zero_snr' has the wrong type.*got 'no'"):  # not bool("no")
        parse_config({"run": {"n": 4}, "schedule": {"preset": "linear", "rescale_zero_snr": "no"}})


# -- bad statistics are refused at the boundary ----------------------------------------------------
def test_bad_statistics_are_clear_errors(tmp_path):
    from diffeval.metrics import frechet_distance
    from diffeval.stats.moments import FeatureMoments

    eye = torch.eye(4, dtype=torch.float64)
    nan = eye.clone()
    nan[0, 1] = nan[1, 0] = float("nan")
    with pytest.raises(InputError, match="sigma contains NaN or inf.*index \\(0, 1\\)") as info:
        frechet_distance(torch.zeros(4), nan, torch.zeros(4), eye)  # was 16.0
    assert "Fix:" in str(info.value)
    skew = eye.clone()
    skew[0, 1] = 0.5
    with pytest.raises(InputError, match="not symmetric"):
        frechet_distance(torch.zeros(4), skew, torch.zeros(4), eye)  # was 0.0
    with pytest.raises(InputError, match="not positive semi-definite.*smallest eigenvalue -1"):
        frechet_distance(
            torch.zeros(3), torch.diag(torch.tensor([1.0, -1.0, 1.0])), torch.zeros(3), torch.eye(3)
        )  # was 0.0
    with pytest.raises(InputError, match="mu contains NaN"):
        frechet_distance(torch.tensor([0.0, float("nan")]), torch.eye(2), torch.zeros(2), torch.eye(2))
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.diag([1.0, -1.0, 1.0]), n=10)
    with pytest.raises(InputError, match="statistics file .*bad.npz: sigma is not positive semi-definite"):
        FeatureMoments.load(tmp_path / "bad.npz")
    # a rank-deficient but valid covariance (N <= d) is fine, and float32 round-off is tolerated
    f = torch.randn(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov = torch.cov(f.T).float().double()
    assert frechet_distance(f.mean(0), cov, f.mean(0), cov).value == pytest.approx(0.0, abs=1e-6)


def test_kid_refuses_bad_reference_features_and_keeps_float64():
    from diffeval.metrics import KID, InceptionScore

    ref = torch.randn(20, 4, dtype=torch.float64)
    ref[3, 1] = float("nan")
    with pytest.raises(InputError, match="KID reference features contain NaN.*the first at 3"):
        KID(ref, "x", "f")  # was kid = nan, silently
    good = KID(torch.randn(20, 4, dtype=torch.float64), "x", "f", subsets=4, subset_size=10)
    feats = torch.randn(20, 4, dtype=torch.float64)
    good.update(Batch(features={"x": {"f": feats}}))
    assert good.chunks[0].dtype == torch.float64 and torch.equal(good.chunks[0], feats)  # was cast to float32
    logits = torch.randn(20, 5, dtype=torch.float64) * 1e-9 + 1  # differences below float32 resolution
    metric = InceptionScore("x", "f", splits=2)
    metric.update(Batch(features={"x": {"f": logits}}))
    assert torch.equal(metric.chunks[0], logits)


def test_inception_score_shuffle_option_reproduces_both_conventions():
    from diffeval.metrics import InceptionScore, inception_score

    logits = torch.randn(40, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    for shuffle in (True, False):
        metric = InceptionScore("x", "f", splits=4, shuffle=shuffle)
        metric.update(Batch(features={"x": {"f": logits}}))
        assert metric.compute().value == pytest.approx(inception_score(logits, 4, shuffle=shuffle)[0], rel=1e-12)
    unshuffled = InceptionScore("x", "f", splits=4, shuffle=False)
    unshuffled.update(Batch(features={"x": {"f": logits}}))
    assert unshuffled.compute().value != pytest.approx(inception_score(logits, 4, shuffle=True)[0], rel=1e-6)
    cfg = parse_config(
        {
            "run": {"n": 4},
            "sampler": {"factory": "demo"},
            "metrics": [{"name": "inception_score", "extractor": "demo-digits", "shuffle": False}],
        }
    )
    assert cfg.metrics[0].options["shuffle"] is False


# -- samplers are read, never written -------------------------------------------------------------
class Frozen:
    """Wraps a sampler and refuses any attribute write after construction."""

    def __init__(self, inner):
        object.__setattr__(self, "inner", inner)

    def __setattr__(self, key, value):
        raise AssertionError(f"the harness set {key!r} on the sampler")

    def describe(self):
        return self.inner.describe()

    def __call__(self, noise, cond=None, *, rng=None, timer=None):
        return self.inner(noise, cond, rng=rng, timer=timer)


def test_the_harness_never_mutates_a_sampler():
    from diffeval.checks.training import saturation_by_guidance
    from diffeval.demo.bundle import demo_sampler
    from diffeval.engine.loop import evaluate
    from diffeval.run.bench import measure_hook_overhead, measure_latency

    sampler = Frozen(demo_sampler(steps=3))
    result = evaluate(sampler, seeds=range(6), batch_size=4, step_timing=False)
    assert result.latency.nfe == 3 and math.isnan(result.latency.step_ms_median)  # whole-call timing, passed in
    assert evaluate(sampler, seeds=range(6), batch_size=4).latency.step_ms_median > 0
    measure_latency(sampler, image_shape=(1, 8, 8), batch_size=2, warmup=0, repeats=1)
    measure_hook_overhead(sampler, image_shape=(1, 8, 8), repeats=1)
    saturation_by_guidance(
        lambda w: Frozen(demo_sampler(steps=3, guidance_scale=w)),
        [2.0],
        range(4),
        (1, 8, 8),
        cond_fn=lambda s: torch.tensor(s) % 10,
    )
    assert (
        evaluate(lambda noise, cond: noise.clamp(-1, 1), seeds=range(3), image_shape=(1, 2, 2)).n == 3
    )  # a plain function is wrapped


# -- structure: one home each, no cycles, the demo is a plugin -------------------------------------
def _imports(path: Path) -> set[str]:
    """Every diffeval module a source file imports (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    here = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(here.split(".")[: -node.level] + [node.module])
            names |= {f"{base}.{a.name}" for a in node.names} | {base}
    modules = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
    }
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != "diffeval":
            found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        mod = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[mod] = _imports(path) - {mod}
    return graph


def test_the_import_graph_is_acyclic():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_only_the_demo_imports_the_demo():
    offenders = sorted(
        mod
        for mod, deps in _graph().items()
        if not mod.startswith("diffeval.demo") and any(d.startswith("diffeval.demo") for d in deps)
    )
    assert not offenders, offenders


def test_one_home_for_the_8bit_grid_and_the_seeded_noise():
    """127.5 (the uint8 <-> [-1, 1] map) appears in code only in diffeval/quantize.py; SeedRNG is defined once."""
    homes = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == 127.5:
                homes.setdefault("127.5", set()).add(path.name)
            if isinstance(node, ast.ClassDef) and node.name in ("SeedRNG", "Denoiser", "Registry"):
                homes.setdefault(node.name, set()).add(path.name)
    assert homes == {
        "127.5": {"quantize.py"},
        "SeedRNG": {"seeds.py"},
        "Denoiser": {"denoiser.py"},
        "Registry": {"registry.py"},
    }


def test_the_contributing_layout_table_matches_the_tree():
    guide = (PACKAGE.parent / "CONTRIBUTING.md").read_text()
    table = guide.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = line.split("|")
            for path in cells[1].replace("`", "").split(","):
                rows[path.strip()] = cells[2]
    for entry in rows:
        assert (PACKAGE.parent / entry).exists(), f"CONTRIBUTING layout lists {entry}, which does not exist"
    modules = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.glob("*.py")}
    rooms = {str(p.relative_to(PACKAGE.parent)) + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    missing = sorted((modules | rooms | {"docs/", "benchmarks/", "tests/", "reports/"}) - set(rows))
    assert not missing, f"not in the CONTRIBUTING layout table: {missing}"
    for room in sorted(rooms - {"diffeval/demo/"}):  # every module of a room is named in its row
        unnamed = [
            p.stem
            for p in (PACKAGE.parent / room).glob("*.py")
            if p.stem != "__init__" and f"`{p.stem}`" not in rows[room]
        ]
        assert not unnamed, f"{room} row does not name {unnamed}"


# -- exit codes and commands ------------------------------------------------------------------------
def test_one_exit_code_mapping(tmp_path, capsys, monkeypatch):
    from diffeval import cli

    np.savez(tmp_path / "stats.npz", mu=np.zeros(4), sigma=np.eye(4), n=10)
    assert (
        main(["diagnose", "--schedule", "linear", "--data", str(tmp_path / "stats.npz"), "--out", str(tmp_path / "d")])
        == 2
    )  # was a TypeError, exit 1
    assert "holds statistics, not images" in capsys.readouterr().err

    def boom(args):
        raise RuntimeError("something nobody expected")

    monkeypatch.setitem(cli.COMMANDS._items, "fid", cli.Command("fid", cli.COMMANDS.get("fid").configure, boom))
    assert main(["fid", "a", "b"]) == 2  # never 1: 1 means "regression"
    err = capsys.readouterr().err
    assert "unexpected error: RuntimeError: something nobody expected" in err

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS._items, "fid", cli.Command("fid", cli.COMMANDS.get("fid").configure, interrupt))
    assert main(["fid", "a", "b"]) == 130


def test_diagnose_is_a_checks_only_run_through_the_same_report(tmp_path, capsys):
    cfg_json = tmp_path / "scheduler_config.json"
    cfg_json.write_text(
        json.dumps(
            {
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "num_train_timesteps": 1000,
                "timestep_spacing": "leading",
                "prediction_type": "epsilon",
            }
        )
    )
    assert main(["diagnose", "--config", str(cfg_json), "--steps", "50", "--out", str(tmp_path / "o")]) == 0
    report = Report.load(tmp_path / "o" / "report.json")
    rows = {r["name"]: r for r in report.rows}
    assert rows["sampler_spacing"]["status"] == "warn"  # the config's leading spacing was applied
    assert report.provenance["config"]["schedule"]["diffusers_config"] == str(cfg_json)
    assert (tmp_path / "o" / "log_snr.png").stat().st_size > 10_000


def test_bpd_evaluates_any_configs_model(tmp_path, capsys):
    from run_helpers import analytic_sampler

    from diffeval.data.sources import open_source
    from diffeval.metrics.bpd import BitsPerDim

    cfg = _write(tmp_path, "a.toml", '[run]\nn = 8\n[sampler]\nfactory = "run_helpers:analytic_sampler"\n')
    assert main(["bpd", str(cfg), "--data", "digits:test", "--n", "16", "--strata", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    sampler = analytic_sampler()
    metric = BitsPerDim(sampler.model, sampler.schedule, "eps", "vlb", 0, strata=7)
    source = open_source("digits:test")
    metric.update(Batch(features={}, seeds=list(range(16)), images=source.load(range(16))))
    assert out["bpd"] == pytest.approx(metric.compute().value, rel=1e-12) and out["n"] == 16
    assert main(["bpd", str(cfg)]) == 2
    assert "bits/dim needs data" in capsys.readouterr().err
