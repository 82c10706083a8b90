"""Schedules: THEORY.md §1 reference values, the zero-terminal-SNR rescale, converters, bad input."""

import math
from decimal import Decimal

import numpy as np
import pytest
import torch

from diffeval import schedules
from diffeval.core.errors import ConfigError, ScheduleError

# (alpha_bar_T, logSNR_1, logSNR_T) from THEORY.md §1
REFERENCE = {
    "linear": (4.03582976538e-05, 9.210240367, -10.11767318),
    "cosine": (2.42876690703e-09, 10.09498881, -19.83588215),
    "scaled_linear": (0.00466009851308, 7.069423847, -5.3640477),
    "vdm": (0.006692850924, 13.3, -5.0),
    "edm": (1.562255898e-4, 12.4292162, -8.764053269),
}


def _written_tolerance(value: float) -> float:
    """Half a unit in the last digit the reference was written with (absolute)."""
    return 0.5 * 10 ** Decimal(repr(value)).as_tuple().exponent


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_values(name):
    s = schedules.get(name)
    alpha_bar_T, lam_1, lam_T = REFERENCE[name]
    for got, want in (
        (float(s.alpha_bar[-1]), alpha_bar_T),
        (float(s.log_snr[0]), lam_1),
        (float(s.log_snr[-1]), lam_T),
    ):
        # 1e-8 relative, or the precision the reference was written with when that is coarser
        assert got == pytest.approx(want, rel=1e-8, abs=_written_tolerance(want)), (name, got, want)
    assert s.T == 1000
    assert not s.zero_terminal_snr


def test_reference_values_tight_where_given_to_12_digits():
    assert float(schedules.linear().alpha_bar[-1]) == pytest.approx(4.03582976538e-05, rel=1e-10)
    assert float(schedules.cosine().alpha_bar[-1]) == pytest.approx(2.42876690703e-09, rel=1e-10)
    assert float(schedules.scaled_linear().alpha_bar[-1]) == pytest.approx(0.00466009851308, rel=1e-10)


def test_linear_betas_are_the_definition():
    s = schedules.linear()
    np.testing.assert_allclose(s.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-10)


def test_cosine_betas_are_clipped_at_0999():
    s = schedules.cosine()
    assert float(s.betas.max()) == pytest.approx(0.999, rel=1e-12)
    assert float(s.betas[-1]) == pytest.approx(0.999, rel=1e-12)


def test_sd_scaled_linear_betas():
    s = schedules.scaled_linear()
    want = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000) ** 2
    np.testing.assert_allclose(s.betas.numpy(), want, rtol=1e-10)


def test_edm_is_ve_with_vp_equivalent_alpha_bar():
    s = schedules.edm()
    assert float(s.ve_sigma[0]) == pytest.approx(0.002, rel=1e-12)
    assert float(s.ve_sigma[-1]) == pytest.approx(80.0, rel=1e-12)
    np.testing.assert_allclose(s.alpha_bar.numpy(), 1 / (1 + s.ve_sigma.numpy() ** 2), rtol=1e-12)
    np.testing.assert_allclose(s.model_times.numpy(), s.ve_sigma.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_converters_round_trip(name):
    s = schedules.get(name)
    np.testing.assert_allclose((s.alpha**2 + s.sigma**2).numpy(), 1.0, rtol=1e-14)
    np.testing.assert_allclose(s.snr.numpy(), (s.alpha**2 / s.sigma**2).numpy(), rtol=1e-10)
    np.testing.assert_allclose(s.ve_sigma.numpy(), (s.sigma / s.alpha).numpy(), rtol=1e-12)
    from_ab = schedules.from_alphas_cumprod(s.alpha_bar)
    np.testing.assert_allclose(from_ab.log_snr.numpy(), s.log_snr.numpy(), rtol=1e-9, atol=1e-9)
    from_b = schedules.from_betas(s.betas)
    np.testing.assert_allclose(from_b.log_snr.numpy(), s.log_snr.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(torch.cumprod(1 - s.betas, 0).numpy(), s.alpha_bar.numpy(), rtol=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_zero_terminal_snr_rescale(name):
    s = schedules.get(name)
    z = schedules.rescale_zero_terminal_snr(s)
    assert z.zero_terminal_snr
    assert float(z.alpha_bar[-1]) == 0.0
    assert float(z.log_snr[-1]) == -math.inf
    assert float(z.betas[-1]) == pytest.approx(1.0, abs=1e-15)
    assert float(z.betas[0]) == pytest.approx(float(s.betas[0]), rel=1e-9)
    assert float(z.alpha_bar[0]) == pytest.approx(float(s.alpha_bar[0]), rel=1e-12)
    assert torch.all(z.log_snr[1:] < z.log_snr[:-1])
    # sqrt(alpha_bar) is an affine map of the original one
    a, b = s.alpha.numpy(), z.alpha.numpy()
    slope = (b[0] - b[-2]) / (a[0] - a[-2])
    np.testing.assert_allclose(b, slope * (a - a[-1]), rtol=1e-9, atol=1e-15)


def test_diffusers_config():
    sd = schedules.from_diffusers_config(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    )
    np.testing.assert_allclose(sd.log_snr.numpy(), schedules.scaled_linear().log_snr.numpy(), rtol=1e-12)
    zt = schedules.from_diffusers_config(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True}
    )
    assert zt.zero_terminal_snr
    cos = schedules.from_diffusers_config({"beta_schedule": "squaredcos_cap_v2"})
    np.testing.assert_allclose(cos.log_snr.numpy(), schedules.cosine().log_snr.numpy())
    with pytest.raises(ConfigError, match="beta_schedule"):
        schedules.from_diffusers_config({"beta_schedule": "sigmoid"})


def test_spacings():
    assert schedules.sampling_indices(1000, 10, "trailing").tolist() == [
        999,
        899,
        799,
        699,
        599,
        499,
        399,
        299,
        199,
        99,
    ]
    assert schedules.sampling_indices(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert schedules.sampling_indices(1000, 10, "linspace").tolist()[0] == 999
    assert schedules.sampling_indices(1000, 1000, "linspace").tolist() == list(range(999, -1, -1))
    with pytest.raises(ConfigError, match="spacing"):
        schedules.sampling_indices(1000, 10, "uniform")


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.1, float("nan"), 0.2], "out of range at t=2"),
        ([0.1, -0.01, 0.2], "out of range at t=2"),
        ([0.1, 1.5], "out of range at t=2"),
        ([0.1, 1.0, 0.2], "out of range at t=2"),
        ([[0.1, 0.2]], "1-D"),
    ],
)
def test_bad_betas(betas, match):
    with pytest.raises(ScheduleError, match=match) as info:
        schedules.from_betas(betas)
    assert "Fix:" in str(info.value)


def test_bad_log_snr():
    with pytest.raises(ScheduleError, match="not strictly decreasing at t=2->3"):
        schedules.from_log_snr([5.0, 4.0, 4.5])
    with pytest.raises(ScheduleError, match="NaN"):
        schedules.from_log_snr([5.0, float("nan"), 1.0])
    with pytest.raises(ScheduleError, match="infinite"):
        schedules.from_log_snr([5.0, -math.inf, -math.inf])
    with pytest.raises(ScheduleError, match="out of range"):
        schedules.from_alphas_cumprod([0.9, 0.0, 0.0])
    assert schedules.from_alphas_cumprod([0.9, 0.5, 0.0]).zero_terminal_snr


def test_unknown_preset_and_option():
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        schedules.get("cosin")
    with pytest.raises(ConfigError, match="unknown option"):
        schedules.get("linear", beta_stat=1e-4)
    with pytest.raises(ScheduleError, match="integer >= 1"):
        schedules.linear(T=0)
