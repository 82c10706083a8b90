"""Flow matching as a model family: the flow path and its shifts, the flow prediction type, GeneralizedSampler against
diffusers' flow Euler on an exact Gaussian flow model, the diffusers flow adapters (scheduler, SD3-style pipeline)
declaring what they wrap, and the checks reading the flow declaration."""

import json
import math

import pytest
import torch

from diffeval import schedules
from diffeval.checks import check_snr_endpoints, check_xt_normality
from diffeval.checks.training import check_prediction_fit
from diffeval.cli.main import main
from diffeval.core.errors import ScheduleError
from diffeval.diffusion.denoiser import Denoiser, to_x0_eps
from diffeval.samplers import GeneralizedSampler, seeded_noise

S2 = 0.25  # data N(0, S2 I): the exact flow model below is its optimal velocity


def exact_velocity(z, t):
    """u*(z, t) = E[eps - x0 | z_t = z] on the flow path z = (1 - t) x0 + t eps, x0 ~ N(0, S2 I), model time 1000 t:
    E[x0 | z] = (1 - t) S2 z / D and E[eps | z] = t z / D with D = (1 - t)^2 S2 + t^2."""
    t = (t.double() / 1000.0).view(-1, *[1] * (z.ndim - 1))
    d = (1 - t) ** 2 * S2 + t**2
    return ((t - (1 - t) * S2) * z.double() / d).to(z.dtype)


def exact_eps(schedule):
    """eps*(z) = sigma z / (alpha^2 S2 + sigma^2) on the vp path, model time = the training index."""

    def model(z, t):
        lam = schedule.log_snr[t.long()].view(-1, *[1] * (z.ndim - 1))
        alpha_sq, sigma_sq = torch.sigmoid(lam), torch.sigmoid(-lam)
        return (sigma_sq.sqrt() * z.double() / (alpha_sq * S2 + sigma_sq)).to(z.dtype)

    return model


# -- the flow path -----------------------------------------------------------------------------------------------
def test_flow_schedule_is_the_rectified_flow_path_and_a_shift_is_a_log_snr_offset():
    f = schedules.flow(T=1000)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(f.path_alpha, 1 - t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.path_sigma, t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.log_snr[:-1], 2 * torch.log((1 - t[:-1]) / t[:-1]), rtol=1e-12, atol=1e-12)
    assert f.log_snr[-1] == -math.inf and f.zero_terminal_snr and f.path == "flow"
    for s in (3.0, 0.5):
        shifted = schedules.flow(T=1000, shift=s)
        torch.testing.assert_close(shifted.log_snr[:-1], f.log_snr[:-1] - 2 * math.log(s), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(shifted.model_times, 1000 * s * t / (1 + (s - 1) * t), rtol=1e-12, atol=1e-9)
    mu = 1.1
    dynamic = schedules.flow(T=1000, use_dynamic_shifting=True, mu=mu)
    torch.testing.assert_close(dynamic.log_snr, schedules.flow(T=1000, shift=math.exp(mu)).log_snr)


def test_flow_shift_mu_is_diffusers_calculate_shift():
    calculate_shift = pytest.importorskip("diffusers.pipelines.flux.pipeline_flux").calculate_shift
    for tokens in (16, 256, 1024, 4096):
        assert schedules.flow_shift_mu(tokens) == pytest.approx(calculate_shift(tokens), rel=1e-12)
        assert schedules.flow_shift_mu(tokens, 64, 1024, 0.3, 0.9) == pytest.approx(
            calculate_shift(tokens, 64, 1024, 0.3, 0.9), rel=1e-12
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shift": 0.0}, "invalid flow shift"),
        ({"shift": -3.0}, "invalid flow shift"),
        ({"shift": math.nan}, "invalid flow shift"),
        ({"shift": math.inf}, "invalid flow shift"),
        ({"shift": True}, "invalid flow shift"),
        ({"mu": 0.5}, "mu without dynamic shifting"),
        ({"use_dynamic_shifting": True}, "dynamic shifting needs mu"),
        ({"use_dynamic_shifting": True, "mu": math.inf}, "invalid mu"),
        ({"use_dynamic_shifting": True, "mu": 0.5, "shift": 3.0}, "shift with dynamic shifting"),
    ],
)
def test_bad_flow_schedules_are_refused_before_any_sampling(kwargs, match):
    with pytest.raises(ScheduleError, match=match) as error:
        schedules.flow(**kwargs)
    assert "expected" in str(error.value) and "Fix:" in str(error.value)


def test_a_schedule_that_does_not_start_at_data_is_refused():
    for bad in (
        lambda: schedules.from_log_snr([-0.5, -2.0, -4.0]),  # SNR < 1 at t = 1: half noise already
        lambda: schedules.from_flow_sigmas([1.0, 0.8, 0.6]),  # a flow grid that starts at t = 0.6
        lambda: schedules.from_alphas_cumprod([0.4, 0.2, 0.1]),
    ):
        with pytest.raises(ScheduleError, match="does not start at data") as error:
            bad()
        assert "Fix:" in str(error.value)
    assert schedules.from_flow_sigmas([1.0, 0.5, 0.01]).T == 3  # t_1 = 0.01: fine


def test_flow_prediction_converts_to_x0_and_eps_on_any_path():
    gen = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(8, 3, generator=gen, dtype=torch.float64),
        torch.randn(8, 3, generator=gen, dtype=torch.float64),
    )
    u = eps - x0
    for alpha, sigma in ((0.7, 0.3), (0.6, 0.8)):  # a flow point (alpha + sigma = 1) and a vp point
        z = alpha * x0 + sigma * eps
        x0_hat, eps_hat = to_x0_eps("flow", u, z, alpha, sigma)
        torch.testing.assert_close(x0_hat, x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(eps_hat, eps, rtol=1e-12, atol=1e-12)
    # the denoiser view feeds a flow model its own path's z_t and reads its velocity
    f = schedules.flow(T=1000)
    index = torch.full((8,), 399)
    denoiser = Denoiser(lambda z, t: exact_velocity(z, t) * 0 + (eps - x0).float().view_as(z), f, "flow")
    x0_hat, _ = denoiser.predict(denoiser.noised(x0.view(8, 1, 1, 3), index, eps.view(8, 1, 1, 3)), index)
    torch.testing.assert_close(x0_hat.view(8, 3), x0, rtol=1e-5, atol=1e-5)


# -- GeneralizedSampler over a flow model == diffusers' flow Euler ------------------------------------------------
def _diffusers_flow_euler(noise, shift, steps):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(exact_velocity(x, t.expand(x.shape[0]).float()), t, x).prev_sample
    return x, scheduler.sigmas


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_generalized_sampler_over_a_flow_model_equals_diffusers_flow_euler(shift):
    """The identity: the flow path is linear in t, so DDIM's step with x0_hat and eps_hat held fixed,
    z_s = (1 - s) x0_hat + s eps_hat, is z_t + (s - t) u: Euler in t. On diffusers' own grid the two agree to float32
    rounding. (diffusers' set_timesteps spaces its grid between 1 and the *shifted* sigma_min and shifts it again, so at
    shift != 1 its grid is not a subset of the training grid: from_flow_sigmas(scheduler.sigmas) takes it as is.)"""
    noise = seeded_noise(range(256), (1, 4, 4))
    for steps in (10, 50):
        reference, sigmas = _diffusers_flow_euler(noise, shift, steps)
        grid = schedules.from_flow_sigmas(sigmas)
        ours = GeneralizedSampler(exact_velocity, grid, prediction="flow", steps=steps, clip_x0=False)(noise)
        assert float((ours - reference).abs().max()) < 1e-5
    if shift == 1.0:  # unshifted, the preset's linspace grid at 10 steps is diffusers' grid exactly
        preset = GeneralizedSampler(
            exact_velocity, schedules.flow(), prediction="flow", steps=10, spacing="linspace", clip_x0=False
        )
        assert float((preset(noise) - _diffusers_flow_euler(noise, 1.0, 10)[0]).abs().max()) < 1e-5


def test_flow_sample_variance_approaches_the_data_variance_as_steps_grow():
    noise = seeded_noise(range(2000), (1, 4, 4))
    variances = {}
    for shift in (1.0, 3.0):
        for steps in (10, 100, 1000):
            sampler = GeneralizedSampler(
                exact_velocity, schedules.flow(shift=shift), prediction="flow", steps=steps, clip_x0=False
            )
            variances[shift, steps] = float(sampler(noise).double().var())
        v = [variances[shift, k] for k in (10, 100, 1000)]
        assert v[0] < v[1] < v[2] and abs(v[2] - S2) < 0.003  # measured: 0.2500 (shift 1), 0.2492 (shift 3)
    assert variances[1.0, 10] == pytest.approx(0.186, abs=0.01) and variances[3.0, 10] == pytest.approx(0.137, abs=0.01)


# -- checks that know flow models ---------------------------------------------------------------------------------
def test_a_flow_network_declared_as_v_is_caught_with_the_fix_and_an_eps_network_declared_as_flow_too():
    """On Gaussian data every reading is a linear shrinkage of z, so readings differ by at most ~(1 + s^2): the exact
    flow net read as v is 1.5 x its flow reading here (caught); real images separate them further (the demo's eps
    net read as flow: 2 x)."""
    gen = torch.Generator().manual_seed(1)
    x0 = math.sqrt(S2) * torch.randn(512, 1, 4, 4, generator=gen)
    flow = schedules.flow()
    ok = check_prediction_fit(exact_velocity, flow, x0, "flow")
    assert ok.status == "pass" and "flow path" in ok.message and ok.value == pytest.approx(0.921, abs=0.01)
    bad = check_prediction_fit(exact_velocity, flow, x0, "v")
    assert bad.status == "fail" and bad.value == pytest.approx(1.49, abs=0.02)
    assert "reads best as flow-prediction" in bad.message and "Fix: declare prediction = 'flow'" in bad.message
    from diffeval.demo.bundle import load_denoiser
    from diffeval.demo.data import load_digits

    digits, cosine = load_digits("test").as_float(), schedules.cosine()
    assert check_prediction_fit(load_denoiser(), cosine, digits, "eps").status == "pass"
    reverse = check_prediction_fit(load_denoiser(), cosine, digits, "flow")
    assert reverse.status == "fail" and "Fix: declare prediction = 'eps'" in reverse.message


def test_snr_endpoint_verdicts_name_the_flow_case():
    by = {r.name: r for r in check_snr_endpoints(schedules.flow(shift=3.0), "flow", steps=10, spacing="trailing")}
    assert all(r.status in ("pass", "warn") for r in by.values())
    assert by["terminal_snr"].status == "pass" and "flow path t = 1 is pure noise" in by["terminal_snr"].message
    assert by["zero_terminal_snr_prediction"].status == "pass" and "flow" in by["zero_terminal_snr_prediction"].message
    # the shifted grid's first step: t' = 3 t / (1 + 2 t) at t = 0.001, log-SNR 2 log((1 - t')/t') = 11.62
    assert by["start_snr"].value == pytest.approx(2 * math.log((1 - 0.003 / 1.002) / (0.003 / 1.002)), rel=1e-9)
    assert by["start_snr"].status == "warn" and "flow path" in by["start_snr"].message
    assert "flow path" in by["sampler_spacing"].message
    eps = {r.name: r for r in check_snr_endpoints(schedules.flow(), "eps")}["zero_terminal_snr_prediction"]
    assert eps.status == "fail" and "flow path" in eps.message and "prediction = 'flow'" in eps.message
    v = {r.name: r for r in check_snr_endpoints(schedules.flow(), "v")}["zero_terminal_snr_prediction"]
    assert v.status == "warn" and "v-prediction declared on a flow path" in v.message


def test_x_t_checks_run_under_the_flow_forward_process_and_catch_0_255():
    gen = torch.Generator().manual_seed(2)
    signed = torch.rand(400, 1, 8, 8, generator=gen) * 2 - 1
    good = {r.name: r for r in check_xt_normality(signed, schedules.flow())}
    assert all(r.status == "pass" for r in good.values()), {n: r.message for n, r in good.items()}
    assert "flow path" in good["mid_t_energy"].message and "flow path" in good["xT_mean"].message
    # half-way on the flow path (t = 0.5): E[x_t^2] = 0.25 E[x0^2] + 0.25 <= 0.5 for data in [-1, 1]
    assert good["mid_t_energy"].value == pytest.approx(0.25 * float((signed**2).mean()) + 0.25, abs=0.01)
    raw = {r.name: r for r in check_xt_normality((signed + 1) * 127.5, schedules.flow())}
    assert raw["x0_range"].status == "fail" and raw["mid_t_energy"].status == "fail"
    assert (
        "flow path" in raw["mid_t_energy"].message and "Fix: scale the data to [-1, 1]" in raw["mid_t_energy"].message
    )


def test_diagnose_runs_every_check_on_a_flow_schedule_and_a_flow_scheduler_config(tmp_path, capsys):
    code = main(
        ["diagnose", "--schedule", "flow", "--shift", "3", "--prediction", "flow", "--steps", "10", "--spacing",
         "trailing", "--data", "digits", "--out", str(tmp_path / "a"), "--json"]
    )  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows and not [r for r in rows if r["status"] in ("skip", "fail")]
    assert {"terminal_snr", "start_snr", "sampler_spacing", "mid_t_energy", "xT_mean"} <= {r["name"] for r in rows}
    config = tmp_path / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}))
    code = main(["diagnose", "--config", str(config), "--out", str(tmp_path / "b"), "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 0 and rows["zero_terminal_snr_prediction"]["status"] == "pass"  # the config's prediction: flow
    assert rows["start_snr"]["value"] == pytest.approx(11.6163, abs=1e-3)
    assert main(["diagnose", "--schedule", "flow", "--prediction", "eps", "--out", str(tmp_path / "c")]) == 1
    assert "flow path" in capsys.readouterr().out
    assert main(["diagnose", "--schedule", "cosine", "--shift", "3", "--out", str(tmp_path / "d")]) == 2
    assert "shift / mu apply to flow schedules only" in capsys.readouterr().err


# -- the diffusers flow adapters ----------------------------------------------------------------------------------
FLOW_SCHEDULERS = [
    ("FlowMatchEulerDiscreteScheduler", 1.0),
    ("FlowMatchEulerDiscreteScheduler", 3.0),
    ("FlowMatchHeunDiscreteScheduler", 3.0),
]


@pytest.mark.parametrize(("cls", "shift"), FLOW_SCHEDULERS)
def test_diffusers_flow_schedulers_declare_schedule_prediction_and_steps(cls, shift):
    diffusers = pytest.importorskip("diffusers")
    from adapter_helpers import tiny_unet

    from diffeval.samplers.diffusers import DiffusersSchedulerSampler
    from diffeval.testing import check_sampler

    sampler = DiffusersSchedulerSampler(getattr(diffusers, cls)(shift=shift), tiny_unet(), num_inference_steps=4)
    info = sampler.describe()
    assert info.prediction == "flow" and info.schedule.path == "flow"
    torch.testing.assert_close(info.schedule.log_snr, schedules.flow(shift=shift).log_snr)
    assert info.indices[0] == 999 and len(info.indices) == 4
    results = {r.name: r for r in check_sampler(sampler, image_shape=(1, 8, 8))}
    assert results["declaration"].status == "pass", results["declaration"].message


def test_dynamic_shifting_works_and_mu_without_it_is_refused():
    diffusers = pytest.importorskip("diffusers")
    from adapter_helpers import tiny_unet

    from diffeval.core.errors import SamplerError
    from diffeval.samplers.diffusers import DiffusersSchedulerSampler

    config = {"use_dynamic_shifting": True, "base_image_seq_len": 16, "max_image_seq_len": 256}
    sampler = DiffusersSchedulerSampler(
        diffusers.FlowMatchEulerDiscreteScheduler(**config), tiny_unet(), num_inference_steps=4
    )
    expected_mu = schedules.flow_shift_mu(64, 16, 256)  # 8 x 8 latent tokens (patch 1)
    assert sampler.mu == pytest.approx(expected_mu) and sampler.schedule.name.startswith("flow[shift=")
    noise = seeded_noise(range(3), (1, 8, 8))
    ours = sampler(noise)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(4, mu=expected_mu)
    x, unet = noise.clone(), tiny_unet()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    torch.testing.assert_close(ours, x.clamp(-1, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(SamplerError, match="mu without dynamic shifting"):
        DiffusersSchedulerSampler(diffusers.FlowMatchEulerDiscreteScheduler(), tiny_unet(), mu=0.5)


def test_check_sampler_fails_an_adapter_that_hides_what_it_wraps():
    diffusers = pytest.importorskip("diffusers")
    import dataclasses

    from adapter_helpers import tiny_unet

    from diffeval.samplers.diffusers import DiffusersSchedulerSampler
    from diffeval.testing import assert_sampler_conforms, check_sampler

    class Hiding(DiffusersSchedulerSampler):
        def describe(self):
            return dataclasses.replace(super().describe(), schedule=None, prediction=None)

    sampler = Hiding(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), tiny_unet(), num_inference_steps=3)
    declaration = {r.name: r for r in check_sampler(sampler, image_shape=(1, 8, 8))}["declaration"]
    assert declaration.status == "fail"
    assert "FlowMatchEulerDiscreteScheduler, which has a schedule, but declares none" in declaration.message
    with pytest.raises(AssertionError, match="declaration"):
        assert_sampler_conforms(sampler, image_shape=(1, 8, 8))


def test_an_sd3_style_pipeline_declares_its_flow_schedule_and_every_snr_check_runs(tmp_path):
    pytest.importorskip("diffusers")
    from adapter_helpers import build_tiny_sd3_pipeline

    from diffeval.samplers.diffusers import DiffusersPipelineSampler
    from diffeval.testing import check_sampler

    pipe = build_tiny_sd3_pipeline(tmp_path)
    sampler = DiffusersPipelineSampler(pipe, num_inference_steps=3, guidance_scale=2.0, height=16, width=16)
    info = sampler.describe()
    assert info.prediction == "flow" and info.schedule.name == "flow[shift=3]" and info.image_shape == (4, 8, 8)
    assert info.indices[0] == 999 and len(info.indices) == 3
    prompts = lambda seeds: ["a cat" if s % 2 else "a dog" for s in seeds]  # noqa: E731
    results = {r.name: r for r in check_sampler(sampler, image_shape=(4, 8, 8), cond_fn=prompts, expected_nfe=6)}
    assert all(r.status == "pass" for n, r in results.items() if n != "shape_and_range"), results  # latents in, RGB out
    checks = check_snr_endpoints(info.schedule, info.prediction, steps=info.steps, spacing="trailing")
    assert [r.status for r in checks if r.name != "start_snr"] == ["pass"] * 4


# -- the bundled flow model ---------------------------------------------------------------------------------------
def test_the_bundled_flow_model_read_as_eps_or_v_fails_prediction_fit_naming_flow():
    from diffeval.demo.bundle import load_flow_model
    from diffeval.demo.data import load_digits

    model, digits, flow = load_flow_model(), load_digits("test").as_float(), schedules.flow()
    assert check_prediction_fit(model, flow, digits, "flow").status == "pass"
    for wrong in ("eps", "v"):
        bad = check_prediction_fit(model, flow, digits, wrong)
        assert bad.status == "fail" and "Fix: declare prediction = 'flow'" in bad.message, bad.message


def test_diffeval_run_flow_evaluates_the_bundled_flow_model_with_every_check(tmp_path, capsys):
    code = main(["run", "flow", "--out", str(tmp_path / "flow"), "--no-progress"])
    assert code == 0, capsys.readouterr().err[-3000:]
    rows = json.loads((tmp_path / "flow" / "report.json").read_text())["rows"]
    checks = {r["name"]: r["status"] for r in rows if r["kind"] == "check"}
    assert "skip" not in checks.values() and "fail" not in checks.values(), checks
    expected = {"terminal_snr", "start_snr", "zero_terminal_snr_prediction", "sampler_spacing", "x0_range",
                "mid_t_energy", "xT_mean", "terminal_eps_variance", "prediction_fit", "output_range"}  # fmt: skip
    assert expected <= set(checks)
    metrics = {r["name"]: r for r in rows if r["kind"] == "metric"}
    assert {"fid", "inception_score", "kid"} <= set(metrics)
    assert 5 < metrics["fid"]["value"] < 30 and metrics["fid"]["stderr"] > 0  # measured: 15.9 +- 3.7 at 20 steps
    assert metrics["inception_score"]["value"] > 7  # of 10 classes; measured 8.09
