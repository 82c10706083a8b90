"""Adapters for Hugging Face diffusers: a whole pipeline, or a scheduler plus a denoiser.

Both hold the foreign objects and expose diffeval's contract:
``sampler(noise, cond=None, *, rng=None, timer=None) -> images in [-1, 1]`` and
``describe()``, declaring the schedule (the scheduler's ``alphas_cumprod`` as log-SNR,
or None when the scheduler has none), the prediction type (the scheduler config's
``prediction_type``), the denoiser as ``model(x_t, t)`` and the spacing.

diffusers is imported inside the adapters only; install it with
``pip install 'diffeval[diffusers]'``.

Noise and seeds: when the pipeline takes ``latents``, diffeval's per-seed noise is
passed as the initial latents, and the scheduler's stochastic steps draw from CPU
generators seeded ``seed + STEP_NOISE_OFFSET`` (so no step redraws z_T); pipelines
without it (``DDPMPipeline``, ``DDIMPipeline``) get one CPU ``torch.Generator`` per
sample seeded with the sample's seed, which draws the initial noise (in the pipeline's
own dtype and device: equal to diffeval's draw on the CPU in float32, not on a GPU) and
then the steps' noise. Either way a sample depends on its seed only.

Outputs: pipelines are asked for ``output_type="np"`` (float [0, 1], NHWC) and mapped
exactly with ``x * 2 - 1``; a pipeline that still returns PIL images (8-bit) is
converted with ``u8 / 127.5 - 1`` — documented, lossy by the pipeline's own choice.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from diffeval.core.errors import ConfigError, SamplerError, explain
from diffeval.core.quantize import dequantize
from diffeval.core.seeds import STEP_NOISE_OFFSET
from diffeval.diffusion import schedules
from diffeval.samplers.base import RunStats, SamplerInfo, SeedRNG, StepTimer, check_sampler_output

__all__ = [
    "image_shape_of",
    "is_flow_scheduler",
    "flow_mu",
    "visited_indices",
    "DiffusersPipelineSampler",
    "DiffusersSchedulerSampler",
    "schedule_of",
    "prediction_of",
    "images_to_signed",
    "require_diffusers",
]

_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def require_diffusers() -> Any:
    """Import diffusers or fail with the install hint."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            explain(
                "diffusers is not installed",
                expected="the diffusers package",
                got="ImportError",
                fix="pip install 'diffeval[diffusers]'",
            )
        ) from None
    return diffusers


def is_flow_scheduler(scheduler: Any) -> bool:
    """A flow-matching scheduler (``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler``, ...)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def flow_mu(scheduler: Any, image_shape: Sequence[int] | None, patch_size: int = 1) -> float | None:
    """diffusers' ``mu`` for a dynamically shifted flow scheduler, from the latent image's token count
    ``(H / patch) x (W / patch)`` and the scheduler's config (None when it does not shift dynamically)."""
    config = getattr(scheduler, "config", None)
    if not getattr(config, "use_dynamic_shifting", False) or image_shape is None:
        return None
    tokens = (int(image_shape[-2]) // patch_size) * (int(image_shape[-1]) // patch_size)
    return schedules.flow_shift_mu(
        max(tokens, 1),
        int(getattr(config, "base_image_seq_len", 256)),
        int(getattr(config, "max_image_seq_len", 4096)),
        float(getattr(config, "base_shift", 0.5)),
        float(getattr(config, "max_shift", 1.15)),
    )


def schedule_of(scheduler: Any, mu: float | None = None) -> schedules.Schedule | None:
    """The scheduler's training schedule as log-SNR (None when it states none).

    Flow-matching schedulers give the ``flow`` path with their ``shift`` (or, with ``use_dynamic_shifting``, the
    shift ``exp(mu)``). Others are rebuilt from the config when the beta schedule is a known one (diffusers stores
    a zero-terminal-SNR end as ``alpha_bar_T = 2**-24`` to dodge a division by zero; the config's
    ``rescale_betas_zero_snr`` says it is really 0), else from ``alphas_cumprod``.
    """
    config = dict(getattr(scheduler, "config", {}) or {})
    if is_flow_scheduler(scheduler):
        T = int(config.get("num_train_timesteps", 1000))
        if config.get("use_dynamic_shifting", False):
            return schedules.flow(T, use_dynamic_shifting=True, mu=mu) if mu is not None else None
        return schedules.flow(T, shift=float(config.get("shift", 1.0)))
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        return None
    try:
        return schedules.from_diffusers_config(config)
    except ConfigError:
        name = f"diffusers:{type(scheduler).__name__}:{config.get('beta_schedule', 'custom')}"
        return schedules.from_alphas_cumprod(torch.as_tensor(alphas).double().cpu().numpy(), name=name)


def prediction_of(scheduler: Any) -> str | None:
    """What the scheduler's model predicts: flow-matching schedulers' models predict the velocity (``flow``)."""
    if is_flow_scheduler(scheduler):
        return "flow"
    return _PREDICTIONS.get(getattr(getattr(scheduler, "config", None), "prediction_type", None))


def visited_indices(scheduler: Any, steps: int, mu: float | None = None) -> tuple[int, ...] | None:
    """The 0-based training indices the scheduler's ``set_timesteps(steps)`` visits, noisiest first (flow
    schedulers: ``round(T * sigma) - 1`` on the training grid, whose shift the sigmas carry)."""
    try:
        if mu is not None:
            scheduler.set_timesteps(steps, mu=mu)
        else:
            scheduler.set_timesteps(steps)
    except Exception:  # a scheduler that needs more arguments: its steps stay undeclared
        return None
    T = int(getattr(scheduler.config, "num_train_timesteps", 1000))
    if is_flow_scheduler(scheduler):
        sigmas = torch.as_tensor(scheduler.sigmas).double()[:-1]  # drop the appended 0
        shifted = schedule_of(scheduler, mu).path_sigma  # the training grid t_i = i / T after its shift
        idx = torch.searchsorted(shifted, sigmas.clamp(max=1.0)).clamp(max=T - 1)  # the nearest grid step above
        return tuple(dict.fromkeys(int(i) for i in idx.tolist()))  # Heun visits each level twice: once here
    return tuple(dict.fromkeys(int(t) for t in torch.as_tensor(scheduler.timesteps).long().tolist()))


def images_to_signed(images: Any) -> torch.Tensor:
    """Pipeline output → float NCHW in [-1, 1]: torch/NumPy in [0, 1] (``x * 2 - 1``) or PIL (``u8 / 127.5 - 1``)."""
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "convert"):
        arrays = [np.asarray(im) for im in images]
        u8 = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
        return dequantize(torch.from_numpy(u8.transpose(0, 3, 1, 2).copy()))
    if isinstance(images, np.ndarray):
        array = images if images.ndim == 4 else images[..., None]
        return torch.from_numpy(array.transpose(0, 3, 1, 2).copy()).float() * 2 - 1
    if torch.is_tensor(images):
        return images.float() * 2 - 1
    raise SamplerError(
        explain(
            "unrecognized pipeline output",
            expected="PIL images, a NumPy array or a tensor in [0, 1]",
            got=type(images).__name__,
            fix="call the pipeline with output_type='np'",
        )
    )


class _ModelTimer:
    """Forward hooks on the denoiser: per-step time (pre-hook to pre-hook, CUDA-synchronized) and NFE."""

    def __init__(self, module: torch.nn.Module, timer: StepTimer) -> None:
        self.module, self.timer = module, timer
        self.batch = 1
        self.calls: list[float] = []
        self.evals = 0.0
        self.handles: list[Any] = []

    def _sync(self, device: torch.device) -> None:
        if self.timer.mode == "step" and device.type == "cuda":
            torch.cuda.synchronize(device)

    def __enter__(self) -> _ModelTimer:
        def pre(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = _model_input(args, kwargs)
            if x is not None:
                self._sync(x.device)
                self.evals += x.shape[0] / self.batch
            self.calls.append(time.perf_counter())

        def post(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            x = _model_input(args, kwargs)
            if x is not None:
                self._sync(x.device)
            self.end = time.perf_counter()

        self.handles = [
            self.module.register_forward_pre_hook(pre, with_kwargs=True),
            self.module.register_forward_hook(post, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def step_times(self) -> list[float]:
        if not self.calls:
            return []
        return [b - a for a, b in zip(self.calls, self.calls[1:], strict=False)] + [self.end - self.calls[-1]]


def _model_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The denoiser's input batch: its first positional argument, or ``sample`` / ``hidden_states`` when the pipeline
    passes it by keyword (SD3's and Flux's transformers)."""
    x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    return x if torch.is_tensor(x) else None


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` names the parameter ``name`` (a bare ``**kwargs`` does not count: it would make every pipeline
    look
    text-to-image).
    """
    return name in inspect.signature(fn).parameters


def image_shape_of(model: Any) -> tuple[int, int, int] | None:
    """The ``(C, H, W)`` a diffusers denoiser samples in, from its config (``in_channels``, ``sample_size``): the
    shape of the noise the harness draws (latents, for a latent pipeline). None when the config does not say."""
    config = getattr(model, "config", None)
    channels, size = getattr(config, "in_channels", None), getattr(config, "sample_size", None)
    if not isinstance(channels, int) or channels < 1:
        return None
    if isinstance(size, int) and size > 0:
        return (channels, size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return (channels, int(size[0]), int(size[1]))
    return None


def _dynamic_mu(scheduler: Any, mu: float | None, image_shape: Sequence[int] | None, patch: Any) -> float | None:
    """``mu`` for a dynamically shifted flow scheduler (given, or from the image size); refused where it means
    nothing."""
    dynamic = bool(getattr(getattr(scheduler, "config", None), "use_dynamic_shifting", False))
    if mu is not None and not dynamic:
        raise SamplerError(
            explain(
                "mu without dynamic shifting",
                expected="mu only for a scheduler with use_dynamic_shifting=True",
                got=f"mu={mu!r} for {type(scheduler).__name__} (use_dynamic_shifting is off)",
                fix="drop mu (the scheduler's shift applies), or enable use_dynamic_shifting in its config",
            )
        )
    if not dynamic:
        return None
    if mu is None:
        mu = flow_mu(scheduler, image_shape, patch if isinstance(patch, int) and patch > 0 else 1)
    if mu is None or not math.isfinite(float(mu)):
        raise SamplerError(
            explain(
                "a dynamically shifted flow scheduler needs mu",
                expected="mu, or an image shape to compute it from (diffusers' calculate_shift)",
                got=f"mu={mu!r}, image_shape unknown",
                fix="pass mu=..., or image_shape=(C, H, W) of the latents",
            )
        )
    return float(mu)


def _declared_shape(given: Sequence[int] | None, model: Any) -> tuple[int, ...] | None:
    if given is None:
        return image_shape_of(model)
    shape = tuple(given)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise SamplerError(
            explain(
                "invalid image_shape",
                expected="(C, H, W): three positive integers (the shape of the noise, latents for a latent pipeline)",
                got=repr(given),
                fix="drop image_shape to read it from the model's config, or pass e.g. (4, 64, 64)",
            )
        )
    return shape


def _latent_shape(pipeline: Any, kwargs: dict[str, Any], shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The latent ``(C, H, W)`` for a pipeline called with ``height`` / ``width`` (image pixels / the VAE's scale
    factor): the noise the harness draws, and the token count dynamic shifting reads (Flux, SD3.5)."""
    factor = getattr(pipeline, "vae_scale_factor", None)
    height, width = kwargs.get("height"), kwargs.get("width")
    if shape is None or not isinstance(factor, int) or factor < 1:
        return shape
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        return shape
    return (shape[0], height // factor, width // factor)


class DiffusersPipelineSampler:
    """A diffusers pipeline (``DDPMPipeline``, ``DDIMPipeline``, ``StableDiffusionPipeline``, ...) as a sampler.

    ``cond`` is a list of prompts for text-to-image pipelines (required there);
    ``guidance_scale`` is passed only to pipelines that take it (an error otherwise).
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        timing: str = "step",
        image_shape: Sequence[int] | None = None,
        **pipeline_kwargs: Any,
    ) -> None:
        require_diffusers()
        if not callable(pipeline) or not hasattr(pipeline, "scheduler"):
            raise SamplerError(
                explain(
                    "not a diffusers pipeline",
                    expected="a DiffusionPipeline with a .scheduler",
                    got=type(pipeline).__name__,
                    fix="pass the pipeline object",
                )
            )
        call = pipeline.__call__
        if guidance_scale is not None and not _accepts(call, "guidance_scale"):
            raise SamplerError(
                explain(
                    f"{type(pipeline).__name__} takes no guidance scale",
                    expected="guidance_scale only for conditional (text-to-image) pipelines",
                    got=f"guidance_scale={guidance_scale}",
                    fix="drop guidance_scale for unconditional pipelines",
                )
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise SamplerError(
                explain(
                    "invalid number of inference steps",
                    expected="an integer >= 1",
                    got=repr(num_inference_steps),
                    fix="use num_inference_steps=50",
                )
            )
        self.pipeline = pipeline
        self.num_inference_steps = num_inference_steps
        self.steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.pipeline_kwargs = pipeline_kwargs
        self.text_to_image = _accepts(call, "prompt")
        self.takes_latents = _accepts(call, "latents")
        self.denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        # default: the latents the pipeline's height/width ask for, else the denoiser's config
        self.image_shape = _declared_shape(image_shape, self.denoiser)
        if image_shape is None:
            self.image_shape = _latent_shape(pipeline, pipeline_kwargs, self.image_shape)
        patch = getattr(getattr(self.denoiser, "config", None), "patch_size", 1)
        self.mu = flow_mu(pipeline.scheduler, self.image_shape, patch if isinstance(patch, int) and patch > 0 else 1)
        self.schedule = schedule_of(pipeline.scheduler, self.mu)
        self.prediction = prediction_of(pipeline.scheduler)
        self.indices = visited_indices(pipeline.scheduler, num_inference_steps, self.mu)
        self.model = _UNetModel(self.denoiser) if self.denoiser is not None and not self.text_to_image else None
        spacing = getattr(pipeline.scheduler.config, "timestep_spacing", None)
        self.spacing = spacing if spacing in schedules.SPACINGS else None
        self.timing = StepTimer(timing).mode
        self.last_run: RunStats | None = None

    def knobs(self) -> dict[str, Any]:
        return {
            "scheduler": type(self.pipeline.scheduler).__name__,
            "steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            **{k: v for k, v in self.pipeline_kwargs.items() if isinstance(v, (int, float, str, bool))},
        }

    def describe(self) -> SamplerInfo:
        return SamplerInfo(
            name=f"diffusers:{type(self.pipeline).__name__}",
            knobs=self.knobs(),
            schedule=self.schedule,
            prediction=self.prediction,
            model=self.model,
            steps=self.num_inference_steps,
            spacing=self.spacing,
            indices=self.indices,
            image_shape=self.image_shape,
            guidance=self.guidance_scale is not None,
        )

    def __call__(
        self, noise: torch.Tensor, cond: Any = None, *, rng: SeedRNG | None = None, timer: StepTimer | None = None
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {
            "num_inference_steps": self.num_inference_steps,
            "output_type": "np",
            **self.pipeline_kwargs,
        }
        if self.text_to_image:
            if (
                not isinstance(cond, (list, tuple))
                or len(cond) != noise.shape[0]
                or not all(isinstance(p, str) for p in cond)
            ):
                raise SamplerError(
                    explain(
                        f"{type(self.pipeline).__name__} needs one prompt per sample",
                        expected=f"a list of {noise.shape[0]} prompt strings as cond",
                        got=type(cond).__name__ if not isinstance(cond, (list, tuple)) else f"{len(cond)} items",
                        fix="set [cond] prompts = 'prompts.txt' or pass prompts",
                    )
                )
            kwargs["prompt"] = list(cond)
        elif cond is not None:
            raise SamplerError(
                explain(
                    f"{type(self.pipeline).__name__} is unconditional",
                    expected="cond=None",
                    got=type(cond).__name__,
                    fix="drop the condition",
                )
            )
        else:
            kwargs["batch_size"] = noise.shape[0]
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        generators = None
        if rng is not None:
            step_rng = rng.derived(STEP_NOISE_OFFSET) if self.takes_latents else rng
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in step_rng.seeds]
        if self.takes_latents:
            kwargs["latents"] = noise
        elif generators is None:
            raise SamplerError(
                explain(
                    f"{type(self.pipeline).__name__} draws its own noise",
                    expected="rng (per-sample generators) so the noise follows the seeds",
                    got="rng=None",
                    fix="call through diffeval.engine.loop, or pass rng=SeedRNG(seeds)",
                )
            )
        if generators is not None:
            kwargs["generator"] = generators if len(generators) > 1 else generators[0]
        timer = timer if timer is not None else StepTimer(self.timing)
        timer.start(noise.device, noise.shape[0])
        hooks = _ModelTimer(self.denoiser, timer) if isinstance(self.denoiser, torch.nn.Module) else None
        with torch.no_grad():
            if hooks is not None:
                hooks.batch = noise.shape[0]
                with hooks:
                    out = self.pipeline(**kwargs)
            else:
                out = self.pipeline(**kwargs)
        stats = timer.stop()
        if hooks is not None:
            stats.nfe = round(hooks.evals)
            if timer.mode == "step":
                stats.step_s = hooks.step_times()
        self.last_run = stats
        images = out.images if hasattr(out, "images") else out[0]
        signed = images_to_signed(images).to(noise.device)
        return check_sampler_output(signed.clamp(-1, 1), noise, f"pipeline {type(self.pipeline).__name__}")


class _UNetModel(torch.nn.Module):
    """``model(x_t, t) -> prediction`` over a diffusers UNet (returns ``.sample``)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, *cond: Any) -> torch.Tensor:
        out = self.unet(x, t, *cond)
        return out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out


class DiffusersSchedulerSampler:
    """Any diffusers scheduler plus a denoiser (``UNet2DModel`` or ``model(x, t) -> prediction``).

    The loop: ``set_timesteps``, ``x = noise * init_noise_sigma``, then per timestep
    ``scale_model_input`` → model → ``scheduler.step(..., generator=per-sample generators)``.
    ``cond_fn(cond) -> extra model args`` turns a condition (e.g. prompts through a text
    encoder) into the model's extra positional arguments.
    """

    def __init__(
        self,
        scheduler: Any,
        model: Callable[..., Any],
        *,
        num_inference_steps: int = 50,
        cond_fn: Callable[[Any], Sequence[Any]] | None = None,
        timing: str = "step",
        clip: bool = True,
        image_shape: Sequence[int] | None = None,
        mu: float | None = None,
    ) -> None:
        require_diffusers()
        if not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "step"):
            raise SamplerError(
                explain(
                    "not a diffusers scheduler",
                    expected="an object with set_timesteps and step",
                    got=type(scheduler).__name__,
                    fix="pass e.g. DDIMScheduler.from_config(...)",
                )
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise SamplerError(
                explain(
                    "invalid number of inference steps",
                    expected="an integer >= 1",
                    got=repr(num_inference_steps),
                    fix="use num_inference_steps=50",
                )
            )
        self.scheduler = scheduler
        self.model = _UNetModel(model) if isinstance(model, torch.nn.Module) else model
        self.steps = num_inference_steps
        self.cond_fn = cond_fn
        self.clip = clip
        self.image_shape = _declared_shape(image_shape, model)  # default: the model's config (UNet2DModel & co.)
        self.mu = _dynamic_mu(scheduler, mu, self.image_shape, getattr(getattr(model, "config", None), "patch_size", 1))
        self.schedule = schedule_of(scheduler, self.mu)
        self.prediction = prediction_of(scheduler)
        self.indices = visited_indices(scheduler, num_inference_steps, self.mu)
        spacing = getattr(scheduler.config, "timestep_spacing", None)
        self.spacing = spacing if spacing in schedules.SPACINGS else None
        self.timing = StepTimer(timing).mode
        self.last_run: RunStats | None = None
        self._takes_generator = "generator" in inspect.signature(scheduler.step).parameters

    def knobs(self) -> dict[str, Any]:
        knobs = {"steps": self.steps, "prediction": self.prediction, "spacing": self.spacing, "clip": self.clip}
        if is_flow_scheduler(self.scheduler):
            knobs["shift"] = float(getattr(self.scheduler.config, "shift", 1.0)) if self.mu is None else None
            knobs["mu"] = self.mu
        return knobs

    def describe(self) -> SamplerInfo:
        return SamplerInfo(
            name=f"diffusers:{type(self.scheduler).__name__}",
            knobs=self.knobs(),
            schedule=self.schedule,
            prediction=self.prediction,
            model=self.model,
            steps=self.steps,
            spacing=self.spacing,
            indices=self.indices,
            image_shape=self.image_shape,
        )

    def __call__(
        self, noise: torch.Tensor, cond: Any = None, *, rng: SeedRNG | None = None, timer: StepTimer | None = None
    ) -> torch.Tensor:
        extra: Sequence[Any] = ()
        if cond is not None:
            if self.cond_fn is None:
                raise SamplerError(
                    explain(
                        "a condition was given but the sampler has no cond_fn",
                        expected="cond_fn(cond) -> model arguments",
                        got=type(cond).__name__,
                        fix="pass cond_fn, or drop the condition",
                    )
                )
            extra = self.cond_fn(cond)
        if self.mu is not None:
            self.scheduler.set_timesteps(self.steps, device=noise.device, mu=self.mu)
        else:
            self.scheduler.set_timesteps(self.steps, device=noise.device)
        generators = (
            [torch.Generator(device=noise.device).manual_seed(s) for s in rng.derived(STEP_NOISE_OFFSET).seeds]
            if rng is not None
            else None
        )
        x = noise * float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        timer = timer if timer is not None else StepTimer(self.timing)
        timer.start(noise.device, noise.shape[0])
        with torch.no_grad():
            for i, t in enumerate(self.scheduler.timesteps):
                with timer.step():
                    scale = getattr(self.scheduler, "scale_model_input", None)  # flow-matching schedulers have none
                    model_input = scale(x, t) if scale is not None else x
                    t_vec = torch.full((x.shape[0],), float(t), device=x.device)
                    out = self.model(model_input, t_vec, *extra)
                    timer.count_nfe()
                    if not torch.is_tensor(out) or out.shape != x.shape:
                        raise SamplerError(
                            explain(
                                f"model output at step {i} has the wrong shape",
                                expected=f"{tuple(x.shape)}",
                                got=f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}",
                                fix="return one prediction per pixel",
                            )
                        )
                    kwargs = (
                        {"generator": generators if len(generators) > 1 else generators[0]}
                        if self._takes_generator and generators is not None
                        else {}
                    )
                    x = self.scheduler.step(out, t, x, **kwargs).prev_sample
        self.last_run = timer.stop()
        return check_sampler_output(
            x.clamp(-1, 1) if self.clip else x, noise, f"scheduler {type(self.scheduler).__name__}"
        )
