"""Gate-grade statistics: seed blocks, FID's jackknife SE and FID∞, pairing records, paired gate verdicts."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch

from diffeval.cli.main import main
from diffeval.core.errors import ConfigError, InputError
from diffeval.gate import evaluate_gate, parse_rules
from diffeval.metrics import FID, KID, InceptionScore
from diffeval.metrics.base import Batch
from diffeval.metrics.fid import FLUSH_ROWS, frechet_distance
from diffeval.metrics.kid import kid_with_jackknife
from diffeval.report.report import Report, make_row
from diffeval.run.config import load_config
from diffeval.run.runner import run_config
from diffeval.stats.moments import FeatureMoments
from diffeval.stats.uncertainty import (
    SeedBlocks,
    block_se,
    extrapolate,
    jackknife_se,
    loo_means,
    paired_se,
    pairing,
    pairing_problem,
)


def _gaussian(n, d, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def _feed(metric, features, seeds, batch=37):
    for lo in range(0, features.shape[0], batch):
        metric.update(Batch(features={"x": {"f": features[lo : lo + batch]}}, seeds=list(seeds[lo : lo + batch])))
    return metric


def _reference(d=6, seed=99):
    ref = FeatureMoments()
    ref.update(_gaussian(4000, d, seed))
    return ref


# -- the arithmetic ---------------------------------------------------------------------------
def test_jackknife_and_block_standard_errors_closed_forms():
    x = [1.0, 1.2, 0.8, 1.0]
    assert jackknife_se(x) == pytest.approx(math.sqrt(3 / 4 * 0.08), rel=1e-15)
    assert block_se(x) == pytest.approx(float(np.std(x, ddof=1)) / 2, rel=1e-15)
    # the jackknife of leave-one-out means is the usual SE of a mean over equal blocks
    block_means = np.array([2.0, 3.0, 7.0, 4.0, 9.0])
    loo = (block_means.sum() - block_means) / 4
    assert jackknife_se(loo) == pytest.approx(block_se(block_means), rel=1e-12)
    assert math.isnan(jackknife_se([1.0])) and math.isnan(jackknife_se([1.0, float("nan")]))
    sums = torch.tensor([[10.0], [20.0], [30.0]], dtype=torch.float64)
    assert loo_means(sums, [2, 3, 5]).flatten().tolist() == pytest.approx([50 / 8, 40 / 7, 30 / 5])
    a, b = extrapolate([100, 200, 400], [1 + 5 / 100, 1 + 5 / 200, 1 + 5 / 400])
    assert (a, b) == (pytest.approx(1.0, abs=1e-12), pytest.approx(5.0, rel=1e-10))
    with pytest.raises(InputError, match="two sample sizes"):
        extrapolate([100, 100], [1.0, 2.0])


def test_seed_blocks_fingerprint_ignores_batching_and_order_and_merges():
    seeds = list(range(1000, 1100))
    one = SeedBlocks(10)
    one.assign(seeds, 100)
    a, b = SeedBlocks(10), SeedBlocks(10)
    a.assign(seeds[60:], 40)
    b.assign(seeds[:60][::-1], 60)
    assert a.merge(b) == one and one.counts == [10] * 10
    assert one.fingerprint.startswith(f"100:{sum(seeds)}:{sum(s * s for s in seeds)}:")
    other = SeedBlocks(10)
    other.assign(range(1001, 1101), 100)
    assert other.fingerprint != one.fingerprint
    big = SeedBlocks(3)
    big.assign([2**62, 2**62 + 1], 2)  # exact Python integers: no int64 overflow in the squares
    assert big.fingerprint.startswith(f"2:{2**63 + 1}:{2**124 + 2**124 + 2**63 + 1}:")
    # the sums alone collide ({1, 5, 6} and {2, 3, 7}: 3:12:62); the splitmix64 sum tells them apart
    x, y = SeedBlocks(2), SeedBlocks(2)
    x.assign([1, 5, 6], 3), y.assign([2, 3, 7], 3)
    assert x.fingerprint.rsplit(":", 1)[0] == y.fingerprint.rsplit(":", 1)[0] == "3:12:62"
    assert x.fingerprint != y.fingerprint
    assert (
        pairing_problem(x.record("jackknife", [1.0, 2.0]), y.record("jackknife", [1.0, 2.0]))
        == "the runs used different seeds"
    )
    old = x.record("jackknife", [1.0, 2.0]) | {"seeds": "3:12:62"}
    assert "older report" in pairing_problem(old, x.record("jackknife", [1.0, 2.0]))
    with pytest.raises(InputError, match="seeds do not match its samples"):
        SeedBlocks(2).assign([1, 2], 3)
    unseeded = SeedBlocks(4)
    unseeded.assign([], 8)
    assert unseeded.fingerprint is None and unseeded.counts == [2, 2, 2, 2]
    with pytest.raises(InputError, match="different seed blocks"):
        SeedBlocks(4).merge(SeedBlocks(5))


def test_pairing_records_pair_only_on_the_same_seeds_reference_and_blocks():
    base = pairing("jackknife", [1.0, 2.0, 3.0], 3, seeds="3:3:5", reference="r")
    assert pairing_problem(base, dict(base)) is None
    assert "different seeds" in pairing_problem(base, {**base, "seeds": "3:6:14"})
    assert "reference differs" in pairing_problem(base, {**base, "reference": "s"})
    assert "number of blocks differs" in pairing_problem(base, {**base, "k": 4})
    assert "without seeds" in pairing_problem(base, {**base, "seeds": None})
    assert "records no seed blocks" in pairing_problem(None, base)
    cand = {**base, "values": [1.5, 2.0, 3.9]}
    assert paired_se(base, cand) == pytest.approx(jackknife_se([0.5, 0.0, 0.9]), rel=1e-15)
    with pytest.raises(InputError, match="do not pair"):
        paired_se(base, {**cand, "seeds": "other"})
    with pytest.raises(InputError, match="unknown pairing kind"):
        pairing("bootstrap", [1.0], 1)


# -- FID --------------------------------------------------------------------------------------
def test_fid_standard_error_is_the_delete_a_block_jackknife_recomputed_by_hand():
    ref = _reference()
    feats = _gaussian(503, 6, 1, shift=0.3, scale=1.2)
    seeds = np.arange(7000, 7503)
    result = _feed(
        FID(ref, "x", "f", allow_unmatched=True, blocks=5, infinity_se="leave-two-out"), feats, seeds
    ).compute()
    fast = _feed(FID(ref, "x", "f", allow_unmatched=True, blocks=5), feats, seeds).compute()

    def fid(rows):
        f = feats[rows]
        return frechet_distance(f.mean(0), torch.cov(f.T), ref.mean, ref.cov).raw_value

    assert result.value == pytest.approx(fid(np.arange(503)), rel=1e-11)
    loo = [fid(seeds % 5 != b) for b in range(5)]
    assert result["pairing"]["values"] == pytest.approx(loo, rel=1e-10)
    assert result.stderr == pytest.approx(jackknife_se(loo), rel=1e-9)
    assert result["pairing"]["counts"] == [101, 101, 101, 100, 100]
    assert result["pairing"]["seeds"].startswith(f"503:{int(seeds.sum())}:{int((seeds.astype(object) ** 2).sum())}:")
    # FID∞: the line in 1/N through N and the leave-one-out unions, and its jackknife from leave-two-out FIDs
    n_loo = 1 / np.mean([1 / (503 - c) for c in (101, 101, 101, 100, 100)])
    expected, _ = extrapolate([503, n_loo], [result.value, np.mean(loo)])
    assert result["fid_infinity"] == pytest.approx(expected, rel=1e-10)
    replicates = []
    for b in range(5):
        keep = seeds % 5 != b
        others = [c for c in range(5) if c != b]
        two = [fid(keep & (seeds % 5 != c)) for c in others]
        n_b = int(keep.sum())
        n_two = 1 / np.mean([1 / int((keep & (seeds % 5 != c)).sum()) for c in others])
        replicates.append(extrapolate([n_b, n_two], [loo[b], np.mean(two)])[0])
    assert result["fid_infinity_stderr"] == pytest.approx(jackknife_se(replicates), rel=1e-9)
    assert result["fid_infinity_se"] == "leave-two-out" and "leave-two-out FIDs" in result["fid_infinity_is"]
    # the default, first order: FID's own jackknife SE (the same FID, pairing and FID∞ value)
    assert fast["fid_infinity_se"] == "first-order" and fast["fid_infinity_stderr"] == fast.stderr == result.stderr
    assert fast.value == result.value and fast["fid_infinity"] == result["fid_infinity"]
    assert fast["fid_infinity_stderr"] == pytest.approx(result["fid_infinity_stderr"], rel=0.25)  # simulation: ~3 %


def test_fid_blocks_merge_across_shards_and_ignore_batch_size_and_order():
    ref = _reference()
    feats, seeds = _gaussian(400, 6, 2, shift=0.2), np.arange(400)
    one = _feed(FID(ref, "x", "f", allow_unmatched=True), feats, seeds, batch=400).compute()
    small = _feed(FID(ref, "x", "f", allow_unmatched=True), feats, seeds, batch=7).compute()
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0)).numpy()
    shuffled = _feed(FID(ref, "x", "f", allow_unmatched=True), feats[perm], seeds[perm], batch=50).compute()
    a = _feed(FID(ref, "x", "f", allow_unmatched=True), feats[:130], seeds[:130])
    b = _feed(FID(ref, "x", "f", allow_unmatched=True), feats[130:], seeds[130:])
    a.merge_state(b.state())
    merged = a.compute()
    for other in (small, shuffled, merged):
        assert other.value == pytest.approx(one.value, rel=1e-10)
        assert other.stderr == pytest.approx(one.stderr, rel=1e-8)
        assert other["pairing"]["values"] == pytest.approx(one["pairing"]["values"], rel=1e-10)
        assert other["pairing"]["seeds"] == one["pairing"]["seeds"]
        assert other["fid_infinity"] == pytest.approx(one["fid_infinity"], rel=1e-8)


def test_fid_standard_error_matches_the_spread_over_repetitions():
    """200 repetitions at d = 8: the mean jackknife SE is within 25 % of the empirical SD of FID."""
    d, n = 8, 600
    ref = FeatureMoments.from_mean_cov(torch.zeros(d), torch.eye(d, dtype=torch.float64), 10**9)
    scale = torch.linspace(0.8, 1.3, d, dtype=torch.float64)
    values, ses = [], []
    for rep in range(200):
        f = _gaussian(n, d, 1000 + rep, shift=0.15) * scale
        r = _feed(FID(ref, "x", "f", allow_unmatched=True, extrapolate=False), f, range(n), batch=n).compute()
        values.append(r.value)
        ses.append(r.stderr)
    ratio = np.mean(ses) / np.std(values, ddof=1)
    assert 0.75 <= ratio <= 1.25, ratio


def test_fid_infinity_removes_the_bias_in_n():
    """Over 40 repetitions FID at N = 400 is biased upward; FID∞ is within 2 Monte-Carlo SE of the population FID."""
    d, n = 8, 400
    ref = FeatureMoments.from_mean_cov(torch.zeros(d), torch.eye(d, dtype=torch.float64), 10**9)
    population = frechet_distance(torch.full((d,), 0.15), torch.eye(d), torch.zeros(d), torch.eye(d)).value
    at_n, inf = [], []
    for rep in range(40):
        f = _gaussian(n, d, 5000 + rep, shift=0.15)
        r = _feed(FID(ref, "x", "f", allow_unmatched=True), f, range(n), batch=n).compute()
        at_n.append(r.value)
        inf.append(r["fid_infinity"])
    mc = np.std(inf, ddof=1) / math.sqrt(len(inf))
    assert abs(np.mean(inf) - population) <= 2 * mc
    assert np.mean(at_n) - population > 5 * np.std(at_n, ddof=1) / math.sqrt(len(at_n))  # the bias it removes


def test_fid_without_blocks_or_from_statistics_has_no_standard_error():
    ref = _reference()
    feats = _gaussian(100, 6, 3)
    r = _feed(FID(ref, "x", "f", allow_unmatched=True, blocks=1), feats, range(100)).compute()
    assert r.stderr is None and "pairing" not in r.details and r["stderr_is"].startswith("none")
    metric = FID(ref, "x", "f", allow_unmatched=True)
    stats = FeatureMoments()
    stats.update(feats)
    metric.add_statistics(stats)
    r2 = metric.compute()
    assert r2.value == pytest.approx(r.value, rel=1e-12) and r2.stderr is None and "fid_infinity" not in r2.details
    tiny = _feed(FID(ref, "x", "f", allow_unmatched=True), feats[:15], range(15)).compute()
    assert tiny.stderr is None and "sizes" in tiny["stderr_is"]  # blocks of 1 or 2 samples: no SE, said why


def test_fid_state_is_k_blocks_of_moments():
    ref = _reference(d=16)
    metric = FID(ref, "x", "f", allow_unmatched=True, blocks=4)
    numel, buffered = [], []
    for i in range(5):
        metric.update(Batch(features={"x": {"f": _gaussian(500, 16, i)}}, seeds=list(range(500 * i, 500 * i + 500))))
        state = metric.state()  # the sums, and the rows waiting for their block's next GEMM (bounded, never all N)
        buffered.append(sum(r.shape[0] for r in state["pending"]))
        sums = [t for m in state["blocks_moments"] for t in (m.shift, m.sum, m.sum_outer) if t is not None]
        numel.append(sum(t.numel() for t in sums))
    assert max(numel) == 4 * (16 + 16 + 16 * 16) and metric.generated.n == 2500  # O(K d^2), whatever N
    assert max(buffered) <= 4 * FLUSH_ROWS and sum(metric._pending_rows) == 0  # generated flushed them


# -- KID, IS, CLIP-like means --------------------------------------------------------------------
def test_kid_blocks_follow_seeds_and_rows_are_taken_in_seed_order():
    g = torch.Generator().manual_seed(4)
    ref, feats = torch.randn(80, 5, generator=g), torch.randn(90, 5, generator=g) + 0.2
    seeds = np.arange(300, 390)
    perm = torch.randperm(90, generator=g).numpy()
    straight = _feed(KID(ref, "x", "f", subsets=15, subset_size=40, blocks=6), feats, seeds).compute()
    shuffled = _feed(KID(ref, "x", "f", subsets=15, subset_size=40, blocks=6), feats[perm], seeds[perm], 11).compute()
    assert shuffled.value == pytest.approx(straight.value, rel=1e-12)
    assert shuffled.stderr == pytest.approx(straight.stderr, rel=1e-12)
    direct = kid_with_jackknife(
        feats.double(), ref.double(), 15, 40, 2020, 6, torch.as_tensor(seeds % 6, dtype=torch.int64)
    )
    assert straight["pairing"]["values"] == pytest.approx(list(direct.left_out), rel=1e-12)
    assert straight.stderr == pytest.approx(jackknife_se(direct.left_out), rel=1e-12)


def test_inception_score_splits_follow_seed_order_and_are_its_pairing_record():
    logits = torch.randn(120, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    seeds = np.arange(120)
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(6)).numpy()
    a = _feed(InceptionScore("x", "f", splits=4), logits, seeds).compute()
    b = _feed(InceptionScore("x", "f", splits=4), logits[perm], seeds[perm], 13).compute()
    assert b.value == pytest.approx(a.value, rel=1e-12) and b["pairing"] == a["pairing"]
    assert a["pairing"]["kind"] == "blocks" and block_se(a["pairing"]["values"]) == pytest.approx(a.stderr)


def test_bpd_pairing_values_are_leave_one_block_out_means():
    from diffeval.demo.bundle import IMAGE_SHAPE
    from diffeval.demo.gaussian import GaussianDigits
    from diffeval.metrics.bpd import BitsPerDim

    model = GaussianDigits()
    metric = BitsPerDim(model, model.schedule, "eps", "vdm", 0, blocks=3)
    images = torch.randint(0, 256, (12, *IMAGE_SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    per_sample = []
    for lo in range(0, 12, 5):
        metric.update(Batch(features={}, seeds=list(range(lo, min(lo + 5, 12))), images=images[lo : lo + 5]))
    single = BitsPerDim(model, model.schedule, "eps", "vdm", 0, blocks=3)
    for i in range(12):
        single.reset()
        single.update(Batch(features={}, seeds=[i], images=images[i : i + 1]))
        per_sample.append(single.sums[0].item())
    r = metric.compute()
    x = np.array(per_sample)
    expected = [x[np.arange(12) % 3 != b].mean() for b in range(3)]
    assert r["pairing"]["values"] == pytest.approx(expected, rel=1e-10)
    assert r["pairing"]["reference"].endswith("noise seed 0; vdm []")  # estimator settings pair only with their own
    unseeded = BitsPerDim(model, model.schedule, "eps", "vdm", 0, blocks=3)
    unseeded.update(Batch(features={}, seeds=[], images=images))
    assert unseeded.seed_blocks.fingerprint is None  # invented noise indices are not seeds: never paired


# -- the gate ---------------------------------------------------------------------------------
def _fid_report(features, seeds, ref, *, blocks=10, extrapolate=True):
    metric = _feed(FID(ref, "x", "f", blocks=blocks, extrapolate=extrapolate, allow_unmatched=True), features, seeds)
    from diffeval.report.report import metric_row

    return Report([metric_row(metric, metric.compute())], {"world_size": 1})


def _paths(tmp_path, **reports):
    out = {}
    for name, report in reports.items():
        report.write(tmp_path / name)
        out[name] = str(tmp_path / name / "report.json")
    return out


def test_gate_pairs_on_shared_seeds_and_falls_back_to_unpaired(tmp_path):
    ref = _reference()
    z = _gaussian(500, 6, 7)
    base = _fid_report(z + 0.1, range(500), ref)
    retrained = _fid_report(0.9 * z + math.sqrt(1 - 0.81) * _gaussian(500, 6, 8) + 0.1, range(500), ref)
    other_seeds = _fid_report(_gaussian(500, 6, 9) + 0.1, range(500, 1000), ref)
    rules = parse_rules({})
    (paired,) = evaluate_gate(base, retrained, rules)
    bd, cd = (json.loads(r.to_frame()["details"][0]) for r in (base, retrained))
    diffs = np.array(cd["pairing"]["values"]) - np.array(bd["pairing"]["values"])
    assert paired.mode == "paired" and paired.stderr == pytest.approx(jackknife_se(diffs), rel=1e-12)
    assert paired.difference == pytest.approx(cd["raw_value"] - bd["raw_value"], rel=1e-12)
    worse = paired.difference
    assert paired.z == pytest.approx(worse / paired.stderr, rel=1e-12)
    (unpaired,) = evaluate_gate(base, other_seeds, rules)
    se_b, se_c = (r.to_frame()["stderr"][0] for r in (base, other_seeds))
    assert unpaired.mode == "unpaired" and unpaired.stderr == pytest.approx(math.hypot(se_b, se_c), rel=1e-12)
    assert "different seeds" in unpaired.note
    assert paired.stderr < 0.6 * math.hypot(*(r.to_frame()["stderr"][0] for r in (base, retrained)))
    with pytest.raises(InputError, match="paired = true"):
        evaluate_gate(base, other_seeds, parse_rules({"noise": {"paired": True}}))
    assert evaluate_gate(base, retrained, parse_rules({"noise": {"paired": True}}))[0].mode == "paired"
    bare = Report([make_row("fid", "metric", 1.0, n_gen=500, n_ref=4000, extractor="x:f", direction="lower")], {})
    bare2 = Report([make_row("fid", "metric", 1.1, n_gen=500, n_ref=4000, extractor="x:f", direction="lower")], {})
    (none,) = evaluate_gate(bare, bare2, rules)
    assert none.mode == "none" and none.status == "regression" and math.isnan(none.z)


def test_gate_shows_difference_se_z_and_mode_in_table_markdown_and_junit(tmp_path, monkeypatch, capsys):
    ref = _reference()
    z = _gaussian(500, 6, 7)
    paths = _paths(
        tmp_path,
        base=_fid_report(z + 0.1, range(500), ref),
        worse=_fid_report(z + 0.6, range(500), ref),
    )
    summary, junit = tmp_path / "summary.md", tmp_path / "gate.xml"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["gate", "--baseline", paths["base"], "--candidate", paths["worse"], "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:10] == [
        "rule",
        "metric",
        "baseline",
        "candidate",
        "difference",
        "SE",
        "z",
        "mode",
        "limit",
        "verdict",
    ]
    row = next(line for line in out.splitlines() if line.startswith("relative"))
    assert "paired" in row and "REGRESSION" in row and "z = " in row
    md = summary.read_text()
    assert "| difference | SE | z | mode |" in md and "❌ regression" in md and "paired" in md
    xml = junit.read_text()
    assert "z +" in xml and "mode paired" in xml and "<failure" in xml and "<system-out>" in xml


def test_gate_refuses_different_n_unless_told_to_compare_fid_infinity(tmp_path, capsys):
    ref = _reference()
    paths = _paths(
        tmp_path,
        small=_fid_report(_gaussian(400, 6, 10) + 0.1, range(400), ref),
        large=_fid_report(_gaussian(800, 6, 11) + 0.1, range(800), ref),
        plain=_fid_report(_gaussian(800, 6, 11) + 0.1, range(800), ref, extrapolate=False),
    )
    assert main(["gate", "--baseline", paths["small"], "--candidate", paths["large"]]) == 2
    assert 'different_n = "infinity"' in capsys.readouterr().err
    rules = tmp_path / "rules.toml"
    rules.write_text('[relative]\nfid = "+0%"\n[compare]\ndifferent_n = "infinity"\n')
    code = main(["gate", "--baseline", paths["small"], "--candidate", paths["large"], "--rules", str(rules)])
    out = capsys.readouterr().out
    assert code == 0 and "FID∞ (N 400 vs 800)" in out and "unpaired" in out
    assert main(["gate", "--baseline", paths["small"], "--candidate", paths["plain"], "--rules", str(rules)]) == 2
    assert "has no FID∞" in capsys.readouterr().err


@pytest.mark.parametrize(
    "rules, message",
    [
        ({"noise": {"pairde": True}}, "unknown key in \\[noise\\]"),
        ({"noise": {"paired": "yes"}}, "bad \\[noise\\] paired"),
        ({"noise": {"k": True}}, "bad \\[noise\\] k"),
        ({"compare": {"different_n": "extrapolate"}}, "bad \\[compare\\] different_n"),
        ({"compare": {"n": 1}}, "unknown key in \\[compare\\]"),
        ({"noise": {"k": math.nan}}, "bad \\[noise\\] k"),
        ({"noise": {"k": math.inf}}, "bad \\[noise\\] k"),
        ({"noise": 2}, "\\[noise\\] in gate rules is not a table"),
        ({"relative": 5}, "\\[relative\\] in gate rules is not a table"),
        ({"noise": {"paired": True}, "compare": {"different_n": "infinity"}}, "cannot be paired"),
    ],
)
def test_bad_noise_and_compare_rules(rules, message):
    with pytest.raises(ConfigError, match=message):
        parse_rules(rules)


def _bare(value, label="fid", name="fid"):
    return make_row(name, "metric", value, n_gen=500, n_ref=4000, extractor="x:f", direction="lower", label=label)


def test_gate_fails_closed_on_non_finite_values_duplicates_and_a_nan_k(tmp_path, capsys):
    rules = parse_rules({})
    for base, cand in ((10.0, math.nan), (math.nan, 10.0), (math.inf, math.inf)):
        with pytest.raises(InputError, match="not a finite number"):
            evaluate_gate(Report([_bare(base)], {}), Report([_bare(cand)], {}), rules)
    with pytest.raises(InputError, match="not a finite number"):
        evaluate_gate(
            Report([_bare(1.0)], {}), Report([_bare(math.nan)], {}), parse_rules({"absolute": {"fid": "<= 5"}})
        )
    with pytest.raises(InputError, match="two rows for fid in the candidate"):
        evaluate_gate(Report([_bare(10.0)], {}), Report([_bare(50.0), _bare(-50.0)], {}), rules)
    # a rule key that is one row's label and another's name gates both rows
    base = Report([_bare(10.0), _bare(10.0, label="fid@clip:x")], {})
    cand = Report([_bare(10.0), _bare(50.0, label="fid@clip:x")], {})
    verdicts = evaluate_gate(base, cand, parse_rules({"relative": {"fid": "+2%"}}))
    assert [v.status for v in verdicts] == ["pass", "regression"]
    paths = _paths(tmp_path, b=Report([_bare(10.0)], {}), c=Report([_bare(50.0)], {}))
    assert main(["gate", "--baseline", paths["b"], "--candidate", paths["c"], "--k", "nan"]) == 2
    assert "bad --k" in capsys.readouterr().err


CONFIG = """
[run]
name = "paired"
n = 60
batch_size = 30

[sampler]
factory = "demo"
[sampler.kwargs]
steps = {steps}

[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"
allow_unmatched = true
blocks = 5
"""


def test_demo_runs_twice_pass_and_a_fewer_steps_sampler_fails_with_z(tmp_path, capsys):
    def run(name, steps):
        path = tmp_path / f"{name}.toml"
        path.write_text(textwrap.dedent(CONFIG.format(steps=steps)))
        return str(run_config(load_config(path), tmp_path / name).paths["json"])

    a, b, worse = run("a", 8), run("b", 8), run("worse", 2)
    assert main(["gate", "--baseline", a, "--candidate", b]) == 0
    assert "paired" in capsys.readouterr().out
    assert main(["gate", "--baseline", a, "--candidate", worse]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("relative"))
    z = float(row.split("z = ")[1].split()[0])
    assert z > 2 and "paired" in row
