"""Ecosystem adapters on tiny random-weight models: diffusers pipelines and schedulers, k-diffusion samplers."""

import numpy as np
import pytest
import torch

from diffeval.checks import check_snr_endpoints
from diffeval.core.errors import SamplerError
from diffeval.core.seeds import STEP_NOISE_OFFSET
from diffeval.engine.loop import evaluate
from diffeval.run.bench import measure_latency
from diffeval.samplers import SeedRNG
from diffeval.testing import assert_conforms, check_sampler

diffusers = pytest.importorskip("diffusers")

from adapter_helpers import EpsModel, build_tiny_sd_pipeline, tiny_unet  # noqa: E402, I001
from diffeval.samplers.diffusers import DiffusersPipelineSampler, DiffusersSchedulerSampler  # noqa: E402
from diffeval.samplers.diffusers import images_to_signed  # noqa: E402

SHAPE = (1, 8, 8)


SCHEDULERS = {
    "ddpm": lambda **kw: diffusers.DDPMScheduler(num_train_timesteps=1000, **kw),
    "ddim": lambda **kw: diffusers.DDIMScheduler(num_train_timesteps=1000, **kw),
    "euler": lambda **kw: diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, **kw),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_sampler_conforms(name):
    sampler = DiffusersSchedulerSampler(SCHEDULERS[name](), tiny_unet(), num_inference_steps=6)
    assert_conforms(sampler, image_shape=SHAPE, expected_nfe=6)
    assert sampler.prediction == "eps" and sampler.schedule.T == 1000


@pytest.mark.parametrize("pipeline_cls", ["DDPMPipeline", "DDIMPipeline"])
def test_pipeline_sampler_conforms_and_equals_the_pipeline(pipeline_cls):
    scheduler = SCHEDULERS["ddpm" if pipeline_cls == "DDPMPipeline" else "ddim"]()
    pipe = getattr(diffusers, pipeline_cls)(unet=tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    sampler = DiffusersPipelineSampler(pipe, num_inference_steps=5)
    assert_conforms(sampler, image_shape=SHAPE, expected_nfe=5)
    seeds = [5, 6, 7]
    rng = SeedRNG(seeds)
    ours = sampler(rng.randn(SHAPE), rng=rng)
    direct = pipe(
        batch_size=3,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        num_inference_steps=5,
        output_type="np",
    ).images
    torch.testing.assert_close(ours, torch.from_numpy(direct).permute(0, 3, 1, 2).float() * 2 - 1, rtol=0, atol=0)
    assert len(sampler.last_run.step_s) == 5


def test_pil_output_is_converted():
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=SCHEDULERS["ddpm"]())
    pipe.set_progress_bar_config(disable=True)
    rng = SeedRNG([1, 2])
    as_np = DiffusersPipelineSampler(pipe, num_inference_steps=3)(rng.randn(SHAPE), rng=rng)
    rng = SeedRNG([1, 2])
    as_pil = DiffusersPipelineSampler(pipe, num_inference_steps=3, output_type="pil")(rng.randn(SHAPE), rng=rng)
    assert float((as_np - as_pil).abs().max()) <= 1 / 127.5 + 1e-6  # PIL is 8-bit


def test_metrics_checks_and_latency_through_adapters():
    from diffeval.demo.bundle import DigitsFeatureExtractor
    from diffeval.demo.run import reference_moments
    from diffeval.metrics import FID, InceptionScore

    extractor = DigitsFeatureExtractor()
    sampler = DiffusersSchedulerSampler(SCHEDULERS["ddim"](), tiny_unet(), num_inference_steps=4)
    metrics = [
        FID(reference_moments(extractor, n=32), "demo-digits", "features"),
        InceptionScore("demo-digits", "logits", splits=2),
    ]
    result = evaluate(
        sampler, seeds=range(32), image_shape=SHAPE, extractors=[extractor], metrics=metrics, batch_size=16
    )
    assert np.isfinite(result["fid"].value) and result["fid"].value > 0
    assert 1.0 <= result["inception_score"].value <= 10.0
    assert result.latency.nfe == 4
    lat = measure_latency(sampler, image_shape=SHAPE, batch_size=2, warmup=1, repeats=2)
    assert lat.nfe == 4 and lat.step_ms_median > 0


def test_snr_checks_through_scheduler_configs():
    sd = DiffusersSchedulerSampler(
        SCHEDULERS["ddpm"](beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        tiny_unet(),
        num_inference_steps=4,
    )
    assert {r.name: r.status for r in check_snr_endpoints(sd.schedule, prediction=sd.prediction)}[
        "terminal_snr"
    ] == "warn"
    zero = DiffusersSchedulerSampler(
        SCHEDULERS["ddim"](
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            rescale_betas_zero_snr=True,
            prediction_type="epsilon",
        ),
        tiny_unet(),
        num_inference_steps=4,
    )
    assert zero.schedule.zero_terminal_snr  # diffusers stores 2**-24; the config says zero
    statuses = {r.name: r.status for r in check_snr_endpoints(zero.schedule, prediction=zero.prediction)}
    assert statuses["zero_terminal_snr_prediction"] == "fail" and statuses["terminal_snr"] == "pass"


def test_a_flow_scheduler_declares_its_schedule_and_every_check_runs(tmp_path):
    from diffeval.run.config import parse_config
    from diffeval.run.runner import run_config

    cfg = parse_config(
        {
            "run": {"n": 4, "batch_size": 4, "image_shape": [1, 8, 8]},
            "sampler": {"factory": "adapter_helpers:flow_sampler"},
            "checks": {"snr_endpoints": True, "xt_normality": {"data": "digits:test"}},
        }
    )
    outcome = run_config(cfg, tmp_path)
    rows = {r["name"]: r for r in outcome.report.rows if r["kind"] == "check"}
    assert not [name for name, r in rows.items() if r["status"] == "skip"]  # was: both skipped, no schedule
    assert (
        rows["zero_terminal_snr_prediction"]["status"] == "pass"
        and "flow" in rows["zero_terminal_snr_prediction"]["details"]
    )
    assert {"terminal_snr", "xT_mean", "mid_t_energy"} <= set(rows)


def test_bad_input():
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=SCHEDULERS["ddpm"]())
    with pytest.raises(SamplerError, match="takes no guidance scale"):
        DiffusersPipelineSampler(pipe, guidance_scale=7.5)
    sampler = DiffusersPipelineSampler(pipe, num_inference_steps=2)
    with pytest.raises(SamplerError, match="draws its own noise"):
        sampler(torch.zeros(2, *SHAPE))
    with pytest.raises(SamplerError, match="unconditional"):
        sampler(torch.zeros(2, *SHAPE), ["a prompt", "another"], rng=SeedRNG([0, 1]))
    with pytest.raises(SamplerError, match="not a diffusers scheduler"):
        DiffusersSchedulerSampler(object(), tiny_unet())
    with pytest.raises(SamplerError, match="unrecognized pipeline output"):
        images_to_signed({"not": "images"})


def test_conditional_unet_with_stub_text_encoder():
    """Text-to-image path: a conditional UNet2DConditionModel and a stub text encoder, prompts as cond."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=4,
    ).eval()

    def encode(prompts):  # stub text encoder: a deterministic embedding per prompt
        gens = [torch.Generator().manual_seed(sum(map(ord, p))) for p in prompts]
        return (torch.stack([torch.randn(3, 16, generator=g) for g in gens]),)

    sampler = DiffusersSchedulerSampler(SCHEDULERS["ddim"](), unet, num_inference_steps=4, cond_fn=encode)
    prompts = lambda seeds: ["a seven" if s % 2 else "a zero" for s in seeds]  # noqa: E731
    assert_conforms(sampler, image_shape=SHAPE, cond_fn=prompts, expected_nfe=4)
    rng = SeedRNG([0, 1])
    a = sampler(rng.randn(SHAPE), ["a seven", "a seven"], rng=rng)
    rng = SeedRNG([0, 1])
    b = sampler(rng.randn(SHAPE), ["a zero", "a zero"], rng=rng)
    assert not torch.equal(a, b)  # the prompt reaches the model
    with pytest.raises(SamplerError, match="no cond_fn"):
        DiffusersSchedulerSampler(SCHEDULERS["ddim"](), tiny_unet(), num_inference_steps=2)(
            rng.randn(SHAPE), ["x", "y"]
        )


# -- k-diffusion ---------------------------------------------------------------------------------------
KDIFFUSION_ELSEWHERE = (
    "k-diffusion is tested in its own environment (its dctorch dependency needs numpy<2):"
    " tox -e kdiffusion, or step 2 of .ci/run"
)


def _kdiffusion():
    return pytest.importorskip("k_diffusion", reason=KDIFFUSION_ELSEWHERE)


@pytest.mark.parametrize(
    "fn, nfe", [("sample_euler", 5), ("sample_euler_ancestral", 5), ("sample_heun", 9), ("sample_dpmpp_2m", 5)]
)
@pytest.mark.kdiffusion
def test_kdiffusion_samplers_conform(fn, nfe):
    K = _kdiffusion()  # noqa: N806
    from diffeval.samplers.kdiffusion import KDiffusionSampler

    alphas = diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    denoiser = K.external.DiscreteEpsDDPMDenoiser(EpsModel().eval(), alphas, quantize=True)
    sampler = KDiffusionSampler(getattr(K.sampling, fn), denoiser, steps=5)
    assert_conforms(sampler, image_shape=SHAPE, expected_nfe=nfe)
    assert sampler.prediction == "eps" and sampler.schedule.T == 1000
    assert {r.name: r.status for r in check_snr_endpoints(sampler.schedule)}["terminal_snr"] == "pass"
    assert len(sampler.last_run.step_s) == 5


@pytest.mark.kdiffusion
def test_kdiffusion_bad_input():
    _kdiffusion()
    from diffeval.samplers.kdiffusion import KDiffusionSampler

    with pytest.raises(SamplerError, match="not a k-diffusion sampler"):
        KDiffusionSampler(lambda model, x: x, object())


def test_conformance_reports_a_broken_adapter():
    class Broken:
        schedule, prediction, last_run = None, "eps", None

        def __call__(self, noise, cond=None, *, rng=None):
            return noise + torch.randn_like(noise)  # ignores the seeds, leaves [-1, 1]

        def config(self):
            return {"sampler": "broken"}

    statuses = {r.name: r.status for r in check_sampler(Broken(), image_shape=SHAPE)}
    assert statuses["shape_and_range"] == "fail" and statuses["nfe_counted"] == "fail"


@pytest.fixture(scope="module")
def tiny_sd_pipeline(tmp_path_factory):
    pytest.importorskip("transformers")
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tok"))


def test_text_to_image_pipeline(tiny_sd_pipeline):
    pipe = tiny_sd_pipeline
    latent = (4, 8, 8)
    prompts = lambda seeds: ["a cat" if s % 2 else "a dog" for s in seeds]  # noqa: E731
    sampler = DiffusersPipelineSampler(pipe, num_inference_steps=3, guidance_scale=3.0, height=16, width=16)
    results = {
        r.name: r for r in check_sampler(sampler, image_shape=latent, cond_fn=prompts, expected_nfe=6)
    }  # CFG: 2 evaluations per step
    assert all(r.status == "pass" for n, r in results.items() if n != "shape_and_range"), results
    seeds = [3, 4]
    rng = SeedRNG(seeds)
    noise = rng.randn(latent)
    ours = sampler(noise, prompts(seeds), rng=rng)
    assert ours.shape == (2, 3, 16, 16)  # latents in, decoded images out
    direct = pipe(
        prompt=prompts(seeds),
        latents=noise.clone(),
        num_inference_steps=3,
        guidance_scale=3.0,
        height=16,
        width=16,
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in SeedRNG(seeds).derived(STEP_NOISE_OFFSET).seeds],
    ).images
    torch.testing.assert_close(ours, torch.from_numpy(direct).permute(0, 3, 1, 2).float() * 2 - 1, rtol=0, atol=0)
    with pytest.raises(SamplerError, match="needs one prompt per sample"):
        sampler(noise, None, rng=SeedRNG(seeds))
    statuses = {
        r.name: r.status
        for r in check_snr_endpoints(sampler.schedule, prediction=sampler.prediction, steps=3, spacing=sampler.spacing)
    }
    assert statuses["terminal_snr"] == "warn"  # SD keeps SNR_T = 0.0047
    assert statuses["sampler_spacing"] == "fail"  # leading spacing, 3 steps: sampling starts at t = 667 of 1000


@pytest.mark.kdiffusion
def test_kdiffusion_prediction_comes_from_the_wrapper_not_its_name():
    K = _kdiffusion()  # noqa: N806
    from diffeval.samplers.kdiffusion import KDiffusionSampler

    alphas = diffusers.DDPMScheduler(num_train_timesteps=1000).alphas_cumprod

    class EpsAlikeName(K.external.DiscreteVDDPMDenoiser):  # a v-wrapper whose name says "Eps"
        pass

    class VeryCustomDenoiser(torch.nn.Module):  # not a k-diffusion wrapper, name starts with "V"
        sigma_min, sigma_max = 0.01, 80.0

        def forward(self, x, sigma, **kwargs):
            return torch.zeros_like(x)

    v = KDiffusionSampler(K.sampling.sample_euler, EpsAlikeName(EpsModel().eval(), alphas, quantize=True), steps=3)
    assert v.prediction == "v" and v.describe().model is not None
    custom = KDiffusionSampler(K.sampling.sample_euler, VeryCustomDenoiser(), steps=3)
    assert custom.prediction is None and custom.describe().model is None  # the old name rule said "v"
    assert KDiffusionSampler(K.sampling.sample_euler, VeryCustomDenoiser(), steps=3, prediction="x0").prediction == "x0"
    with pytest.raises(SamplerError, match="contradicts the denoiser"):
        KDiffusionSampler(
            K.sampling.sample_euler, EpsAlikeName(EpsModel().eval(), alphas, quantize=True), steps=3, prediction="eps"
        )
