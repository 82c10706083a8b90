"""Bits per dimension: decoder references, the Gaussian closed form (THEORY.md §4), invariants, bad input."""

import math

import numpy as np
import pytest
import torch

from diffeval import schedules
from diffeval.cli.main import main
from diffeval.core.errors import ConfigError, InputError, SamplerError
from diffeval.metrics import Batch
from diffeval.metrics.bpd import (
    BitsPerDim,
    discretized_gaussian_log_likelihood,
    gaussian_decoder_nll,
    prior_kl,
    vdm_nll,
    vdm_weight,
    vlb_nll,
)
from diffeval.samplers import SeedRNG

S2 = 0.25  # data N(0, s^2 I), s = 0.5
LN2 = math.log(2)


def test_decoder_reference_values():
    x = torch.zeros(1, dtype=torch.float64)
    log_scale = torch.full((1,), math.log(1 / 255), dtype=torch.float64)
    assert float(discretized_gaussian_log_likelihood(x, x, log_scale, "tanh")) == pytest.approx(-0.3821627573, abs=1e-9)
    assert float(discretized_gaussian_log_likelihood(x, x, log_scale, "exact")) == pytest.approx(
        -0.3817151463, abs=1e-9
    )


def test_decoder_is_a_distribution_over_the_256_levels():
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean in (-0.93, 0.0, 0.41):
        logp = discretized_gaussian_log_likelihood(
            grid, torch.full_like(grid, mean), torch.full_like(grid, math.log(0.05))
        )
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)


# -- the Gaussian closed form, continuous time --------------------------------------------------
def _vdm_eps_star(schedule):
    def model(z, u):
        lam = schedule.log_snr_fn(u.double()).view(-1, *[1] * (z.ndim - 1))
        a2, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        return s2.sqrt() * z.double() / (a2 * S2 + s2)

    return model


def _vdm_analytic():
    snr_max, snr_min = math.exp(13.3), math.exp(-5.0)
    a1, s1 = 1 / (1 + math.exp(5.0)), 1 / (1 + math.exp(-5.0))
    l_diff = 0.5 * (math.log1p(S2 * snr_max) - math.log1p(S2 * snr_min))
    l_prior = 0.5 * (s1 + a1 * S2 - 1 - math.log(s1))
    l_recon = 0.5 * math.log(2 * math.pi * math.e / snr_max)
    return l_diff, l_prior, l_recon


def test_vdm_components_deterministic_midpoint_rule():
    """Our lambda(u), autograd -dlambda/du, prior and decoder against THEORY's closed form, to 1e-8."""
    sch = schedules.vdm()
    l_diff, l_prior, l_recon = _vdm_analytic()
    k = 200_000
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    lam, weight = vdm_weight(sch, u)
    a2 = torch.sigmoid(lam)
    mse = a2 * S2 / (a2 * S2 + (1 - a2))  # E||eps - eps*||^2 per dim = Var(eps | z_u)
    ours_diff = float((0.5 * weight * mse).mean())
    ours_prior = float(
        prior_kl(
            torch.tensor(math.sqrt(S2), dtype=torch.float64),
            float(torch.sigmoid(sch.log_snr_fn(torch.tensor(1.0, dtype=torch.float64)))),
        )
    )
    lam_0 = float(sch.log_snr_fn(torch.tensor(0.0, dtype=torch.float64)))
    ours_recon = float(
        gaussian_decoder_nll(
            torch.zeros(1, dtype=torch.float64), torch.full((1,), math.exp(-lam_0 / 2), dtype=torch.float64), lam_0
        )
    )
    assert ours_diff == pytest.approx(l_diff, abs=1e-8)
    assert ours_prior == pytest.approx(l_prior, abs=1e-12)
    assert ours_recon == pytest.approx(l_recon, abs=1e-12)
    assert (ours_diff + ours_prior + ours_recon) / LN2 == pytest.approx(1.0471095351, abs=1e-8)
    assert 0.5 * math.log(2 * math.pi * math.e * S2) / LN2 == pytest.approx(1.0470955852, abs=1e-9)


def test_vdm_monte_carlo_within_4_standard_errors():
    sch = schedules.vdm()
    n = 3000
    x0 = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(S2)
    est = vdm_nll(_vdm_eps_star(sch), sch, x0, "eps", rng=SeedRNG(range(n)), n_t=4, decoder="gaussian")
    bpd = est.bpd
    mean, se = float(bpd.mean()), float(bpd.std() / math.sqrt(n))
    assert abs(mean - 1.0471095351) < 4 * se, (mean, se)
    assert se < 0.05


def test_vdm_antithetic_batch_of_one_is_correct():
    sch = schedules.vdm()
    x0 = torch.randn(400, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * math.sqrt(S2)
    values = [
        float(
            vdm_nll(
                _vdm_eps_star(sch),
                sch,
                x0[i : i + 1],
                "eps",
                rng=SeedRNG([i]),
                t_sampling="antithetic",
                decoder="gaussian",
            ).bpd
        )
        for i in range(400)
    ]
    mean, se = np.mean(values), np.std(values) / math.sqrt(len(values))
    assert abs(mean - 1.0471095351) < 4 * se


# -- the Gaussian closed form, discrete time ------------------------------------------------
def _discrete_eps_star(schedule):
    def model(z, t):
        ab = schedule.alpha_bar[t.long().cpu()].view(-1, *[1] * (z.ndim - 1))
        return (1 - ab).sqrt() * z.double() / (ab * S2 + (1 - ab))

    return model


def _discrete_analytic(schedule):
    """Analytic VLB for data N(0, s^2) with the exact posterior-mean predictor, fixed-small variances, Gaussian
    decoder.
    """
    ab = schedule.alpha_bar.numpy()
    snr = ab / (1 - ab)
    post_var = S2 * (1 - ab) / (ab * S2 + (1 - ab))  # E(x0 - E[x0|x_t])^2
    prior = 0.5 * (ab[-1] * S2 + 1 - ab[-1] - 1 - math.log(1 - ab[-1]))
    diffusion = float(np.sum(0.5 * (snr[:-1] - snr[1:]) * post_var[1:]))
    var_dec = (1 - ab[1] / ab[0]) * (1 - ab[0]) / (1 - ab[1])
    decoder = 0.5 * math.log(2 * math.pi * var_dec) + post_var[0] / (2 * var_dec)
    return (prior + diffusion + decoder) / LN2


def test_discrete_vlb_matches_its_analytic_value():
    sch = schedules.linear()
    want = _discrete_analytic(sch)
    n = 1500
    x0 = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * math.sqrt(S2)
    est = vlb_nll(
        _discrete_eps_star(sch), sch, x0, "eps", rng=SeedRNG(range(n)), strata=40, decoder="gaussian", clip_x0=False
    )
    mean, se = float(est.bpd.mean()), float(est.bpd.std() / math.sqrt(n))
    assert abs(mean - want) < 3 * se, (mean, se, want)
    assert (
        want > 1.0470955852
    )  # a bound: above the exact NLL 0.5 log2(2 pi e s^2) (the linear schedule starts at log-SNR 9.2, a loose decoder)


def test_discrete_vlb_all_terms_and_stratified_agree_with_the_analytic_value():
    sch = schedules.linear(T=50)
    want = _discrete_analytic(sch)
    n = 600
    x0 = torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * math.sqrt(S2)
    full = vlb_nll(
        _discrete_eps_star(sch), sch, x0, "eps", rng=SeedRNG(range(n)), strata=None, decoder="gaussian", clip_x0=False
    )
    assert full.terms.shape == (n, 49)
    torch.testing.assert_close(full.terms.sum(1), full.components["diffusion"])
    for est in (
        full,
        vlb_nll(
            _discrete_eps_star(sch), sch, x0, "eps", rng=SeedRNG(range(n)), strata=7, decoder="gaussian", clip_x0=False
        ),
    ):
        mean, se = float(est.bpd.mean()), float(est.bpd.std() / math.sqrt(n))
        assert abs(mean - want) < 3 * se, (mean, se, want)


# -- streaming invariants and the bundled model -----------------------------------------------------------
@pytest.fixture(scope="module")
def demo_parts():
    from diffeval.demo.bundle import load_denoiser
    from diffeval.demo.data import load_digits

    return load_denoiser(), load_digits("test").images[:48]


def test_bpd_metric_batch_size_independent_and_mergeable(demo_parts):
    model, images = demo_parts
    sch = schedules.cosine()

    def run(chunks):
        metric = BitsPerDim(model, sch, "eps", "vlb", strata=8)
        for lo, hi in chunks:
            metric.update(Batch(features={}, seeds=list(range(lo, hi)), images=images[lo:hi]))
        return metric

    one = run([(0, 48)])
    split = run([(0, 5), (5, 30), (30, 48)])
    assert split.compute().value == pytest.approx(one.compute().value, rel=1e-6)
    a, b = run([(0, 20)]), run([(20, 48)])
    assert a.merge(b).compute().value == pytest.approx(one.compute().value, rel=1e-6)
    out = one.compute()
    assert out["prior_bpd"] + out["diffusion_bpd"] + out["decoder_bpd"] == pytest.approx(out.value, rel=1e-9)
    assert 2.0 < out.value < 8.0 and out.stderr > 0 and out.n_ref == 48


def test_bpd_bad_input(demo_parts):
    model, images = demo_parts
    sch = schedules.cosine()
    x = images.double() / 127.5 - 1
    with pytest.raises(InputError, match="outside"):
        vlb_nll(model, sch, x * 255, rng=SeedRNG(range(48)))
    with pytest.raises(InputError, match="8-bit grid"):
        vlb_nll(model, sch, x * 0.999, rng=SeedRNG(range(48)))

    def nan_at_high_noise(z, t):
        return torch.where(t.view(-1, 1, 1, 1) > 500, torch.full_like(z, math.nan), torch.zeros_like(z))

    with pytest.raises(SamplerError, match=r"NaN/inf at training step t=\d+ \(log-SNR"):
        vlb_nll(nan_at_high_noise, sch, x, rng=SeedRNG(range(48)), strata=10)
    with pytest.raises(InputError, match="no differentiable"):
        vdm_nll(model, sch, x, rng=SeedRNG(range(48)))
    with pytest.raises(ConfigError, match=r"\['n_t'\] do not apply to the vlb estimator"):
        BitsPerDim(model, sch, strata=5, n_t=2)
    with pytest.raises(InputError, match="not differentiable"):
        broken = schedules.from_log_snr(
            schedules.vdm().log_snr,
            name="kinked",
            model_times=schedules.vdm().model_times,
            log_snr_fn=lambda u: -13.3 + 18.3 * u.detach(),
            model_time_fn=lambda u: u,
        )
        vdm_weight(broken, torch.tensor([0.5]))


def test_bpd_cli(capsys):
    import json

    assert main(["bpd", "--n", "24", "--strata", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["estimator"] == "vlb" and out["n"] == 24 and "discretized Gaussian" in out["convention"]
    assert main(["bpd", "--estimator", "vdm", "--n", "4"]) == 2
    assert "continuous-time models only" in capsys.readouterr().err
