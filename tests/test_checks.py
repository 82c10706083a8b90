"""Diagnostics: SNR-endpoint verdicts (THEORY.md §2), the 0-255 trap (§3), training diagnostics, diagnose CLI."""

import json
import math

import numpy as np
import pytest
import torch

from diffeval import schedules
from diffeval.checks import (
    CheckResult,
    check_snr_endpoints,
    check_terminal_eps_variance,
    check_xt_batch,
    check_xt_normality,
    loss_profile,
    preprocessing,
    saturation_by_guidance,
    worst,
)
from diffeval.checks.xt_normality import forward_samples
from diffeval.cli.main import main
from diffeval.core.errors import InputError, SamplerError, ScheduleError
from diffeval.demo.bundle import demo_sampler, load_denoiser
from diffeval.demo.data import load_digits
from diffeval.report.report import check_row


def _by_name(results):
    return {r.name: r for r in results}


# -- SNR endpoints -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, bits, status",
    [
        ("linear", 2.911e-5, "pass"),
        ("cosine", 1.75e-9, "pass"),
        ("edm", 1.127e-4, "pass"),
        ("scaled_linear", 3.369e-3, "warn"),
        ("vdm", 4.844e-3, "warn"),
    ],
)
def test_terminal_verdicts_match_theory(name, bits, status):
    r = _by_name(check_snr_endpoints(schedules.get(name)))
    assert r["terminal_snr"].status == status
    assert r["terminal_snr"].value == pytest.approx(bits, rel=2e-3)
    assert r["schedule_validity"].status == "pass"


def test_b2_thresholds_are_the_stated_log_snr():
    # THEORY.md §2: pass iff log-SNR_T <= -6.58043, warn iff <= -4.27160
    def verdict(lam_T):  # noqa: N803
        return _by_name(check_snr_endpoints(schedules.from_log_snr([5.0, lam_T])))["terminal_snr"].status

    assert (verdict(-6.58043), verdict(-6.58042), verdict(-4.27160), verdict(-4.27159)) == (
        "pass",
        "warn",
        "warn",
        "fail",
    )


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_zero_terminal_snr_needs_v_prediction(name):
    z = schedules.rescale_zero_terminal_snr(schedules.get(name))
    eps = _by_name(check_snr_endpoints(z, prediction="eps"))
    v = _by_name(check_snr_endpoints(z, prediction="v"))
    assert eps["terminal_snr"].status == "pass" and v["terminal_snr"].status == "pass"
    assert (
        eps["zero_terminal_snr_prediction"].status == "fail"
        and "v-prediction" in eps["zero_terminal_snr_prediction"].message
    )
    assert v["zero_terminal_snr_prediction"].status == "pass"
    assert _by_name(check_snr_endpoints(z))["zero_terminal_snr_prediction"].status == "warn"


def test_start_snr_b3():
    assert _by_name(check_snr_endpoints(schedules.vdm()))["start_snr"].status == "pass"  # 13.3 >= 13.2876
    assert _by_name(check_snr_endpoints(schedules.linear()))["start_snr"].status == "warn"
    assert _by_name(check_snr_endpoints(schedules.from_log_snr([16.0, 0.0, -8.0])))["start_snr"].status == "warn"


def test_sampler_spacing():
    lin = schedules.linear()
    assert _by_name(check_snr_endpoints(lin, steps=50, spacing="trailing"))["sampler_spacing"].status == "pass"
    leading = _by_name(check_snr_endpoints(lin, steps=50, spacing="leading"))["sampler_spacing"]
    assert leading.status == "warn" and leading.value == 981 and "trailing" in leading.message
    z = schedules.rescale_zero_terminal_snr(schedules.scaled_linear())
    assert (
        _by_name(check_snr_endpoints(z, prediction="v", steps=50, spacing="leading"))["sampler_spacing"].status
        == "fail"
    )
    with pytest.raises(InputError, match="both steps and spacing"):
        check_snr_endpoints(lin, steps=50)


def test_raw_inputs_and_b1():
    sd = schedules.scaled_linear()
    from_array = _by_name(check_snr_endpoints(sd.alpha_bar.numpy()))
    assert from_array["terminal_snr"].status == "warn"
    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    assert _by_name(check_snr_endpoints(cfg))["terminal_snr"].value == pytest.approx(
        from_array["terminal_snr"].value, rel=1e-9
    )
    non_monotone = np.array([0.9, 0.8, 0.85, 0.1])
    r = check_snr_endpoints(non_monotone)
    assert r[0].name == "schedule_validity" and r[0].status == "fail" and "t=2->3" in r[0].message
    nan = check_snr_endpoints(np.array([0.9, np.nan, 0.1]))
    assert len(nan) == 1 and nan[0].status == "fail" and "NaN" in nan[0].message
    with pytest.raises(InputError, match="wrong shape"):
        check_snr_endpoints(np.zeros((3, 3)))
    with pytest.raises(InputError, match="at least 2 steps"):
        check_snr_endpoints(schedules.from_log_snr([1.0]))


# -- the 0-255 trap ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_digits("all").images


XT_CHECKS = ("xT_mean", "xT_variance", "mid_t_energy", "xT_radius", "xT_neighbour_correlation")


@pytest.mark.parametrize("schedule_name", ["linear", "scaled_linear"])
def test_raw_pixels_fail_the_terminal_moments(digits, schedule_name):
    r = _by_name(check_xt_normality(digits, schedules.get(schedule_name), preprocessing("raw")))
    assert r["x0_range"].status == "fail"
    assert r["xT_mean"].status == "fail" and r["xT_variance"].status == "fail"


def test_raw_pixels_under_cosine_caught_by_mid_t_only(digits):
    r = _by_name(check_xt_normality(digits, schedules.cosine(), preprocessing("raw")))
    assert r["xT_mean"].status == "pass" and r["xT_variance"].status == "pass"  # invisible at T (THEORY §3)
    assert r["mid_t_energy"].status == "fail" and r["mid_t_energy"].value > 1000


def test_zero_terminal_snr_trap_caught_by_mid_t(digits):
    z = schedules.rescale_zero_terminal_snr(schedules.linear())
    r = _by_name(check_xt_normality(digits, z, preprocessing("raw")))
    assert r["mid_t_energy"].status == "fail"


def test_unit_range_data_warns_via_range_guard(digits):
    r = _by_name(check_xt_normality(digits, schedules.linear(), preprocessing("unit")))
    assert r["x0_range"].status == "warn" and "[0, 1]" in r["x0_range"].message


def test_theory_trap_values_for_uniform_data():
    """U[0, 255] under the linear schedule: E[x_T] = 0.809984, Var = 1.218651 (THEORY.md §3)."""
    x0 = torch.rand(20000, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    fs = forward_samples(x0, schedules.linear(), seed=1)
    assert float(fs.x_T.mean()) == pytest.approx(0.809984, abs=0.01)
    assert float(fs.x_T.var()) == pytest.approx(1.218651, abs=0.02)


def test_shapiro_alone_misses_the_trap_and_the_check_does_not():
    from scipy import stats

    x0 = torch.rand(20000, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    fs = forward_samples(x0, schedules.linear(), seed=1)
    sample = fs.x_T.flatten().numpy()[:5000]
    assert stats.shapiro(sample).pvalue > 1e-3  # shape-only: x_T is Gaussian-shaped, just shifted and scaled
    r = _by_name(check_xt_normality(x0, schedules.linear()))
    assert r["xT_mean"].status == "fail" and r["xT_variance"].status == "fail"


def test_correct_data_passes_in_at_least_99_of_100_repetitions(digits):
    prep = preprocessing("signed")
    x0 = prep(digits).double()
    failures = 0
    for seed in range(100):
        results = check_xt_normality(x0, schedules.linear(), seed=seed)
        failures += any(r.status != "pass" for r in results)
    assert failures <= 1, failures


def test_too_few_scalars_warns_with_the_number_needed(digits):
    r = _by_name(check_xt_normality(digits[:100], schedules.linear(), preprocessing("signed")))
    assert r["xT_mean"].status == "warn" and "20000" in r["xT_mean"].message and "313 samples" in r["xT_mean"].message


def test_bad_data():
    with pytest.raises(InputError, match="NaN"):
        check_xt_normality(torch.tensor([[0.1, float("nan")]]), schedules.linear())
    with pytest.raises(InputError, match="no data"):
        check_xt_normality(torch.zeros(0, 3), schedules.linear())
    with pytest.raises(InputError, match="at least 2 steps"):
        check_xt_normality(torch.zeros(4, 3), schedules.from_log_snr([1.0]))


def test_user_supplied_xt_batch():
    g = torch.Generator().manual_seed(0)
    good = torch.randn(500, 3, 8, 8, generator=g)
    assert worst(check_xt_batch(good)) == "pass"
    shifted = good * 1.2 + 0.3
    r = _by_name(check_xt_batch(shifted))
    assert r["xT_mean"].status == "fail" and r["xT_variance"].status == "fail"


def test_check_result_validation_and_row():
    with pytest.raises(InputError, match="invalid check status"):
        CheckResult("x", "maybe", 1.0, "t", "m")
    row = check_row(CheckResult("x", "warn", 2.0, "<= 1", "fix it"))
    assert row["kind"] == "check" and row["status"] == "warn" and json.loads(row["details"])["message"] == "fix it"


# -- training diagnostics ------------------------------------------------------------------------------
def test_terminal_eps_variance_healthy_and_broken(digits):
    x0 = preprocessing("signed")(digits[:512])
    assert check_terminal_eps_variance(load_denoiser(), schedules.cosine(), x0).status == "pass"
    from diffeval.demo.networks import DigitsDenoiser

    torch.manual_seed(0)
    assert check_terminal_eps_variance(DigitsDenoiser(), schedules.cosine(), x0).status == "fail"


def test_loss_profile_beats_trivial_predictors(digits):
    x0 = preprocessing("signed")(digits[:512])
    rows = loss_profile(load_denoiser(), schedules.cosine(), x0, buckets=5, per_bucket=64)
    assert len(rows) == 5
    assert all(row["eps_mse"] < row["trivial_eps_mse"] for row in rows)
    assert rows[-1]["x0_mse"] < 0.05 * rows[-1]["trivial_x0_mse"]  # high-SNR bucket: x0 well predicted
    assert all(row["vdm_weighted"] > 0 for row in rows)
    with pytest.raises(SamplerError, match="NaN/inf at training step"):
        loss_profile(lambda z, t: z * float("nan"), schedules.cosine(), x0, buckets=2, per_bucket=4)


def test_saturation_grows_with_guidance():
    results = saturation_by_guidance(
        lambda w: demo_sampler(steps=20, guidance_scale=w),
        [1.0, 4.0, 10.0],
        range(48),
        (1, 8, 8),
        cond_fn=lambda s: torch.tensor([x % 10 for x in s]),
    )
    values = [r.value for r in results]
    assert values[0] < values[1] < values[2] and results[0].status == "pass"
    assert results[2].name == "x0_saturation[guidance=10]"
    from diffeval.samplers import CallableSampler

    foreign = saturation_by_guidance(  # a sampler that does not report x0: a skip row, not an aborted run
        lambda w: CallableSampler(lambda noise, cond: noise.clamp(-1, 1), name="clamp"), [1.0, 4.0], range(4), (1, 8, 8)
    )
    assert [(r.name, r.status) for r in foreign] == [("x0_saturation", "skip")] and "x0_outside" in foreign[0].message


# -- CLI -----------------------------------------------------------------------------------------------------
def test_diagnose_digits_passes_signed_and_fails_raw(tmp_path, capsys):
    assert main(["diagnose", "--schedule", "linear", "--data", "digits", "--out", str(tmp_path / "ok")]) == 0
    for png in ("log_snr.png", "xt_histogram.png", "xt_qq.png"):
        assert (tmp_path / "ok" / png).stat().st_size > 10_000
    assert (
        main(
            [
                "diagnose",
                "--schedule",
                "linear",
                "--data",
                "digits",
                "--preprocess",
                "raw",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "[FAIL] xT_mean" in out and "divide by 127.5" in out


def test_diagnose_schedule_sources_and_bad_files(tmp_path, capsys):
    np.save(tmp_path / "ab.npy", schedules.scaled_linear().alpha_bar.numpy())
    assert main(["diagnose", "--alphas", str(tmp_path / "ab.npy"), "--out", str(tmp_path / "a"), "--json"]) == 0
    assert {r["name"]: r["status"] for r in json.loads(capsys.readouterr().out)}["terminal_snr"] == "warn"
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True}
        )
    )
    assert (
        main(["diagnose", "--config", str(tmp_path / "cfg.json"), "--prediction", "eps", "--out", str(tmp_path / "c")])
        == 1
    )
    np.save(tmp_path / "bad.npy", np.zeros((4, 4)))
    assert main(["diagnose", "--alphas", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b")]) == 2
    assert "wrong shape" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["diagnose", "--schedule", "linear", "--alphas", "x.npy"])
    assert info.value.code == 2


def test_demo_raw_pixels_bug_is_caught(tmp_path, capsys):
    assert (
        main(["demo", "--out", str(tmp_path), "--n", "40", "--steps", "10", "--no-progress", "--bug", "raw-pixels"])
        == 1
    )
    assert "FAILED checks: x0_range, mid_t_energy" in capsys.readouterr().err


def test_schedule_errors_stay_errors():
    with pytest.raises(ScheduleError):
        schedules.from_alphas_cumprod([0.5, 0.6])
    assert math.isfinite(check_snr_endpoints(schedules.linear())[1].value)
