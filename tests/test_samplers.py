"""Samplers: THEORY.md §6 variance propagation, seeds, batch-size independence, NFE, bad input."""

import math

import pytest
import torch

from diffeval import schedules
from diffeval.core.errors import ConfigError, SamplerError
from diffeval.diffusion.denoiser import to_x0_eps
from diffeval.samplers import CallableSampler, GeneralizedSampler, SeedRNG, StepTimer, seeded_noise

S2 = 0.25  # data variance of the 1-D Gaussian toy


class OptimalEps(torch.nn.Module):
    """Exact eps* for data N(0, s^2 I) on a discrete schedule: sigma_t z / (alpha_t^2 s^2 + sigma_t^2)."""

    def __init__(self, schedule, s2=S2):
        super().__init__()
        self.alpha_bar = schedule.alpha_bar
        self.s2 = s2

    def forward(self, x, t):
        ab = self.alpha_bar[t.long().cpu()].to(x.device, x.dtype)[:, None, None, None]
        return (1 - ab).sqrt() * x / (ab * self.s2 + (1 - ab))


class OneHotNoise:
    """A stand-in rng: sample 0 gets no injected noise; sample k >= 1 gets xi = 1 at injection k only.

    The sampler is linear in (z_T, xi_1..xi_K), so with z_T = [1, 0, ..., 0] the final
    variance is the sum of squared outputs: Var_s = A^2 Var_t + c^2, propagated exactly.
    """

    def __init__(self):
        self.calls = 0

    def randn_like(self, x):
        self.calls += 1
        out = torch.zeros_like(x)
        if self.calls < x.shape[0]:
            out[self.calls] = 1.0
        return out


@pytest.mark.parametrize("eta, want", [(0.0, 0.2484975472), (1.0, 0.2461252114)])
def test_theory_section6_variance_propagation(eta, want):
    sch = schedules.linear()
    sampler = GeneralizedSampler(OptimalEps(sch), sch, steps=1000, eta=eta, spacing="linspace", clip_x0=False)
    k = 1000
    z = torch.zeros(k + 1, 1, 1, 1, dtype=torch.float64)
    z[0] = 1.0
    out = sampler(z, rng=OneHotNoise())
    variance = float((out.double() ** 2).sum())
    assert variance == pytest.approx(want, rel=1e-8)
    assert sampler.last_run.nfe == 1000
    assert len(sampler.last_run.step_s) == 1000


def test_equivalent_predictions_give_the_same_samples():
    """An eps model, its x0 form and its v form are one denoiser: samples must agree."""
    sch = schedules.cosine()
    eps_model = OptimalEps(sch)

    def as_x0(x, t):
        ab = sch.alpha_bar[t.long()].to(x.dtype)[:, None, None, None]
        return (x - (1 - ab).sqrt() * eps_model(x, t)) / ab.sqrt()

    def as_v(x, t):
        ab = sch.alpha_bar[t.long()].to(x.dtype)[:, None, None, None]
        return ab.sqrt() * eps_model(x, t) - (1 - ab).sqrt() * as_x0(x, t)

    noise = seeded_noise(range(6), (1, 4, 4), dtype=torch.float64)
    outs = [
        GeneralizedSampler(m, sch, prediction=p, steps=25, clip_x0=False)(noise)
        for m, p in ((eps_model, "eps"), (as_x0, "x0"), (as_v, "v"))
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-7, atol=1e-7)


def test_prediction_conversions_are_inverse():
    z, x0, eps = torch.randn(3, 5, dtype=torch.float64)
    alpha, sigma = 0.6, 0.8
    zt = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    for kind, out in (("eps", eps), ("x0", x0), ("v", v)):
        x0_hat, eps_hat = to_x0_eps(kind, out, zt, alpha, sigma)
        torch.testing.assert_close(x0_hat, x0)
        torch.testing.assert_close(eps_hat, eps)


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) * (1 + t[:, None, None, None] / 1000)


@pytest.mark.parametrize("knobs", [{"eta": 0.0}, {"eta": 1.0}, {"eta": 0.5, "churn": 10.0}])
def test_batch_size_independence_and_determinism(knobs):
    sch = schedules.linear()
    sampler = GeneralizedSampler(TinyNet(), sch, steps=20, **knobs)
    seeds = list(range(100, 116))
    rng = SeedRNG(seeds)
    together = sampler(rng.randn((1, 6, 6)), rng=rng)
    singles = []
    for s in seeds:
        one = SeedRNG([s])
        singles.append(sampler(one.randn((1, 6, 6)), rng=one))
    torch.testing.assert_close(together, torch.cat(singles), rtol=1e-5, atol=1e-6)
    again = SeedRNG(seeds)
    torch.testing.assert_close(sampler(again.randn((1, 6, 6)), rng=again), together, rtol=0, atol=0)
    other = SeedRNG([s + 1000 for s in seeds])
    assert not torch.allclose(sampler(other.randn((1, 6, 6)), rng=other), together)


def test_seeded_noise_depends_on_seed_only():
    a = seeded_noise([3, 4, 5], (2, 3, 3))
    b = seeded_noise([5], (2, 3, 3))
    torch.testing.assert_close(a[2:], b, rtol=0, atol=0)
    assert abs(float(seeded_noise(range(200), (1, 16, 16)).std()) - 1) < 0.02


def test_leading_spacing_never_visits_T_and_trailing_does():
    sch = schedules.linear()
    lead = GeneralizedSampler(TinyNet(), sch, steps=10, spacing="leading")
    trail = GeneralizedSampler(TinyNet(), sch, steps=10, spacing="trailing")
    assert int(lead.indices[0]) == 900 and int(trail.indices[0]) == 999


def test_guidance_counts_two_evaluations():
    calls = []

    def model(x, t, cond=None):
        calls.append(cond)
        return torch.zeros_like(x) if cond is None else 0.1 * torch.ones_like(x)

    sch = schedules.linear()
    sampler = GeneralizedSampler(model, sch, steps=5, guidance_scale=3.0)
    sampler(seeded_noise(range(2), (1, 2, 2)), cond=torch.tensor([1, 2]))
    assert sampler.last_run.nfe == 10
    assert sum(c is None for c in calls) == 5
    GeneralizedSampler(model, sch, steps=5)(seeded_noise(range(2), (1, 2, 2)))
    assert calls[-1] is None


def test_zero_terminal_snr_needs_v_prediction():
    z = schedules.rescale_zero_terminal_snr(schedules.linear())
    noise = seeded_noise(range(2), (1, 2, 2))
    with pytest.raises(SamplerError, match="v-prediction"):
        GeneralizedSampler(lambda x, t: torch.zeros_like(x), z, steps=10)(noise)
    out = GeneralizedSampler(lambda x, t: torch.zeros_like(x), z, prediction="v", steps=10)(noise)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eta": -0.1}, "option 'eta' is too small"),
        ({"eta": 1.5}, "option 'eta' is too large"),
        ({"steps": 0}, "option 'steps' is too small"),
        ({"steps": 1001}, "steps out of range"),
        ({"spacing": "uniform"}, "spacing"),
        ({"churn": -1.0}, "churn"),
        ({"stpes": 3}, "did you mean 'steps'"),
    ],
)
def test_bad_knobs(kwargs, match):
    with pytest.raises(SamplerError, match=match) as info:
        GeneralizedSampler(TinyNet(), schedules.linear(), **kwargs)
    assert "Fix:" in str(info.value)


def test_unknown_prediction_is_one_error_type_everywhere():
    """The prediction type is validated in one place (diffeval.diffusion.denoiser) with one exception type."""
    from diffeval.checks import check_snr_endpoints, check_terminal_eps_variance
    from diffeval.metrics.bpd import BitsPerDim, vlb_nll

    sch = schedules.linear(T=10)
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    calls = [
        lambda: GeneralizedSampler(TinyNet(), sch, prediction="score"),
        lambda: CallableSampler(lambda n, c: n, prediction="score"),
        lambda: BitsPerDim(TinyNet(), sch, "score"),
        lambda: vlb_nll(TinyNet(), sch, x, "score", rng=SeedRNG([0, 1])),
        lambda: check_snr_endpoints(sch, prediction="score"),
        lambda: check_terminal_eps_variance(TinyNet(), sch, x, "score"),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="unknown prediction type") as info:
            call()
        assert "Fix:" in str(info.value)


def test_the_caller_owns_the_timer_and_the_sampler_is_not_modified():
    sampler = GeneralizedSampler(TinyNet(), schedules.linear(), steps=4, timing="off")
    before = dict(vars(sampler))
    timer = StepTimer("step")
    sampler(seeded_noise(range(2), (1, 4, 4)), timer=timer)
    assert timer.stats.nfe == 4 and len(timer.stats.step_s) == 4  # the caller's mode, not the sampler's default
    assert {k: id(v) for k, v in vars(sampler).items() if k != "last_run"} == {
        k: id(v) for k, v in before.items() if k != "last_run"
    }
    info = sampler.describe()
    assert (
        info.steps == 4
        and info.prediction == "eps"
        and info.indices == tuple(int(i) for i in sampler.indices)
        and info.guidance
        and not info.problems()
    )
    faster = sampler.replace(steps=2)
    assert faster.steps == 2 and sampler.steps == 4 and faster.model is sampler.model
    with pytest.raises(SamplerError, match="unknown knob"):
        sampler.replace(stepz=3)


def test_model_wrong_shape_or_nan():
    noise = seeded_noise(range(2), (1, 4, 4))
    with pytest.raises(SamplerError, match="wrong shape"):
        GeneralizedSampler(lambda x, t: x[:, :, :2], schedules.linear(), steps=3)(noise)

    def nan_late(x, t):
        return torch.full_like(x, math.nan) if float(t[0]) < 500 else torch.zeros_like(x)

    with pytest.raises(SamplerError, match="NaN/inf at sampling step 5"):
        GeneralizedSampler(nan_late, schedules.linear(), steps=10, clip_x0=False)(noise)

    def inf_late(x, t):  # an fp16 overflow: clipping x0_hat must not turn it into a flat image
        return torch.full_like(x, math.inf) if float(t[0]) < 500 else torch.zeros_like(x)

    for clip in (True, False):
        with pytest.raises(SamplerError, match="NaN/inf at sampling step 5"):
            GeneralizedSampler(inf_late, schedules.linear(), steps=10, clip_x0=clip)(noise)


def test_callable_sampler():
    s = CallableSampler(lambda noise, cond: noise.clamp(-1, 1), name="clamp", nfe=1)
    out = s(seeded_noise(range(3), (1, 4, 4)))
    assert out.shape == (3, 1, 4, 4) and s.last_run.nfe == 1 and len(s.last_run.step_s) == 1
    with pytest.raises(SamplerError, match="wrong shape"):
        CallableSampler(lambda noise, cond: noise[:1])(seeded_noise(range(3), (1, 4, 4)))
    with pytest.raises(SamplerError, match="non-finite"):
        CallableSampler(lambda noise, cond: noise * math.nan)(seeded_noise(range(3), (1, 4, 4)))
    with pytest.raises(SamplerError, match="needs a function"):
        CallableSampler(3)


def test_bad_seeds():
    with pytest.raises(SamplerError, match="invalid seed"):
        SeedRNG([-1])
    with pytest.raises(SamplerError, match="no seeds"):
        SeedRNG([])
