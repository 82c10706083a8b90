"""The S2N family (gamma, delta) in the generalized sampler, and sweeps over grids of knobs."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch
from test_samplers import S2, OneHotNoise, OptimalEps, TinyNet  # noqa: E402, I001

from diffeval import schedules
from diffeval.cli.main import main
from diffeval.core.errors import ConfigError, SamplerError
from diffeval.core.points import point_text, sweep_table
from diffeval.run.config import load_config
from diffeval.run.runner import RunFailed, run_config
from diffeval.run.sweeps import parse_sweep
from diffeval.samplers import GeneralizedSampler, SeedRNG, seeded_noise
from diffeval.samplers.generic import _alpha_sigma


def _net():
    return TinyNet().double()


def _sample(sch, seeds=range(6), **knobs):
    sampler = GeneralizedSampler(_net(), sch, steps=12, clip_x0=False, **knobs)
    noise = seeded_noise(seeds, (1, 6, 6), dtype=torch.float64)
    return sampler(noise, rng=SeedRNG(list(seeds)))


# -- the family's special cases -----------------------------------------------------------------
@pytest.mark.parametrize("delta", [0.0, 0.5, 1.0, 2.0])
def test_gamma_zero_is_ddim_whatever_delta(delta):
    sch = schedules.cosine()
    assert torch.equal(_sample(sch, gamma=0.0, delta=delta), _sample(sch, eta=0.0))


def test_gamma_one_delta_one_is_ddpm_ancestral():
    sch = schedules.linear()
    assert torch.equal(_sample(sch, gamma=1.0, delta=1.0), _sample(sch, eta=1.0))
    assert not torch.equal(_sample(sch, gamma=1.0, delta=1.0), _sample(sch, eta=0.0))


def test_the_gamma_one_step_is_the_ddpm_posterior():
    """beta^2 = sigma_s^2 (1 - e^-h) and the mean are q(z_s | z_t, x0_hat) in closed form."""
    sampler = GeneralizedSampler(TinyNet(), schedules.linear(), gamma=1.0, delta=1.0)
    g = torch.Generator().manual_seed(0)
    z_t, x0 = torch.randn(2, 50, generator=g, dtype=torch.float64)
    lam_t, lam_s = -1.3, 0.4
    (a_t, s_t), (a_s, s_s) = _alpha_sigma(lam_t), _alpha_sigma(lam_s)
    eps = (z_t - a_t * x0) / s_t
    mean = sampler.step(z_t, x0, eps, lam_t, lam_s, torch.zeros_like)
    a_ts, s2_ts = a_t / a_s, s_t**2 - (a_t / a_s) ** 2 * s_s**2
    posterior_mean = a_ts * s_s**2 / s_t**2 * z_t + a_s * s2_ts / s_t**2 * x0
    torch.testing.assert_close(mean, posterior_mean, rtol=1e-12, atol=1e-12)
    assert sampler.noise_variance(lam_t, lam_s) == pytest.approx(s2_ts * s_s**2 / s_t**2, rel=1e-12)


def test_gamma_infinite_renoises_from_x0_hat_and_delta_zero_is_deterministic():
    sampler = GeneralizedSampler(TinyNet(), schedules.linear(), gamma=math.inf, delta=1.0)
    g = torch.Generator().manual_seed(1)
    z_t, x0, xi = torch.randn(3, 40, generator=g, dtype=torch.float64)
    lam_t, lam_s = -2.0, 1.5
    (_, s_t), (a_s, s_s) = _alpha_sigma(lam_t), _alpha_sigma(lam_s)
    out = sampler.step(z_t, x0, (z_t - 0.3 * x0) / s_t, lam_t, lam_s, lambda z: xi)
    torch.testing.assert_close(out, a_s * x0 + s_s * xi, rtol=1e-12, atol=1e-12)
    large = GeneralizedSampler(TinyNet(), schedules.linear(), gamma=1e6)
    assert large.noise_variance(lam_t, lam_s) == pytest.approx(s_s**2, rel=1e-12)
    sch = schedules.cosine()
    det_a = _sample(sch, seeds=range(6), gamma=0.7, delta=0.0)
    sampler = GeneralizedSampler(_net(), sch, steps=12, clip_x0=False, gamma=0.7, delta=0.0)
    noise = seeded_noise(range(6), (1, 6, 6), dtype=torch.float64)
    det_b = sampler(noise, rng=SeedRNG(list(range(100, 106))))  # other injected noise: no effect
    assert torch.equal(det_a, det_b) and not torch.equal(det_a, _sample(sch, eta=0.0))


def _expected_variance(sch, steps, gamma, delta):
    """Var of the output for N(0, S2) data under the exact eps*: Var_s = A^2 Var_t + delta^2 beta^2, step by step."""
    sampler = GeneralizedSampler(OptimalEps(sch), sch, steps=steps, spacing="linspace")
    lam, idx = sch.log_snr.tolist(), sampler.indices.tolist()
    var = 1.0
    for i, t in enumerate(idx):
        a_t, s_t = _alpha_sigma(lam[t])
        c = s_t / (a_t**2 * S2 + s_t**2)  # eps_hat = c z_t
        x0_coef = (1 - s_t * c) / a_t
        if i + 1 == len(idx):
            return x0_coef**2 * var
        lam_s = lam[idx[i + 1]]
        a_s, s_s = _alpha_sigma(lam_s)
        h = lam_s - lam[t]
        beta_sq = s_s**2 * (1 - math.exp(-gamma * h)) if math.isfinite(gamma) else s_s**2
        coef = a_s * x0_coef + math.sqrt(s_s**2 - beta_sq) * c
        var = coef**2 * var + delta**2 * beta_sq


@pytest.mark.parametrize(
    "gamma, delta, want",
    [(0.0, 1.0, 0.2484975472), (1.0, 1.0, 0.2461252114), (0.3, 0.0, None), (2.0, 0.5, None), (math.inf, 1.0, None)],
)
def test_variance_propagation_of_the_family(gamma, delta, want):
    """The sampler is linear in (z_T, xi_1..xi_K): its output variance equals the closed-form recursion to 1e-8
    (and THEORY.md §6's values for DDIM and DDPM)."""
    sch = schedules.linear()
    steps = 200
    sampler = GeneralizedSampler(
        OptimalEps(sch), sch, steps=steps, gamma=gamma, delta=delta, spacing="linspace", clip_x0=False
    )
    z = torch.zeros(steps + 1, 1, 1, 1, dtype=torch.float64)
    z[0] = 1.0
    variance = float((sampler(z, rng=OneHotNoise()).double() ** 2).sum())
    assert variance == pytest.approx(_expected_variance(sch, steps, gamma, delta), rel=1e-8)
    if want is not None:
        full = GeneralizedSampler(
            OptimalEps(sch), sch, steps=1000, gamma=gamma, delta=delta, spacing="linspace", clip_x0=False
        )
        z = torch.zeros(1001, 1, 1, 1, dtype=torch.float64)
        z[0] = 1.0
        assert float((full(z, rng=OneHotNoise()).double() ** 2).sum()) == pytest.approx(want, rel=1e-8)


def test_family_keeps_the_sampler_contract_with_guidance_and_batch_independence():
    from diffeval.testing import assert_conforms

    sch = schedules.cosine()

    class Conditional(torch.nn.Module):
        def forward(self, x, t, cond=None):
            shift = 0.0 if cond is None else cond.double().view(-1, 1, 1, 1) / 10
            return torch.tanh(x) * 0.5 + shift

    sampler = GeneralizedSampler(Conditional(), sch, steps=6, gamma=2.0, delta=0.8, guidance_scale=3.0)
    assert_conforms(sampler, image_shape=(1, 6, 6), cond_fn=lambda seeds: torch.tensor([s % 10 for s in seeds]))
    knobs = sampler.describe().knobs
    assert knobs["gamma"] == 2.0 and knobs["delta"] == 0.8 and "gamma=2.0, delta=0.8" in sampler.describe().label()
    whole = _sample(sch, seeds=range(8), gamma=0.5, delta=1.2)
    parts = torch.cat(
        [_sample(sch, seeds=range(0, 3), gamma=0.5, delta=1.2), _sample(sch, range(3, 8), gamma=0.5, delta=1.2)]
    )
    torch.testing.assert_close(whole, parts, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"gamma": -0.1}, "option 'gamma' is too small"),
        ({"gamma": float("nan")}, "option 'gamma' must be a number, not NaN"),
        ({"gamma": "1"}, "option 'gamma' has the wrong type"),
        ({"gamma": True}, "option 'gamma' has the wrong type"),
        ({"delta": -1.0}, "option 'delta' is too small"),
        ({"delta": math.inf}, "option 'delta' must be finite"),
        ({"gamma": 1.0, "eta": 0.5}, "eta and gamma both set"),
    ],
)
def test_bad_knobs(knobs, message):
    with pytest.raises(SamplerError, match=message):
        GeneralizedSampler(TinyNet(), schedules.linear(), **knobs)


# -- against k-diffusion on the same denoiser -------------------------------------------------------
def _kdiffusion_pair(steps=10):
    K = pytest.importorskip("k_diffusion", reason="k-diffusion is tested in its own environment (tox -e kdiffusion)")  # noqa: N806
    sch = schedules.linear()
    model = OptimalEps(sch)
    denoiser = K.external.DiscreteEpsDDPMDenoiser(model, sch.alpha_bar, quantize=True)
    sampler = GeneralizedSampler(model, sch, steps=steps, clip_x0=False)
    ab = sch.alpha_bar[sampler.indices]
    sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=torch.float64)])
    noise = seeded_noise(range(4), (1, 5, 5), dtype=torch.float64)
    return K, denoiser, sampler, sigmas, noise, float(ab[0].sqrt())


@pytest.mark.kdiffusion
def test_gamma_zero_equals_kdiffusion_sample_euler():
    K, denoiser, sampler, sigmas, noise, alpha_T = _kdiffusion_pair()  # noqa: N806
    ours = sampler.replace(gamma=0.0, delta=0.7)(noise)
    theirs = K.sampling.sample_euler(denoiser, noise / alpha_T, sigmas, disable=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.kdiffusion
def test_gamma_one_delta_one_equals_kdiffusion_sample_euler_ancestral():
    K, denoiser, sampler, sigmas, noise, alpha_T = _kdiffusion_pair()  # noqa: N806
    xis = [torch.randn(noise.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in range(9)]

    class Replay:
        def __init__(self):
            self.k = 0

        def randn_like(self, x):
            self.k += 1
            return xis[self.k - 1]

    ours = sampler.replace(gamma=1.0, delta=1.0)(noise, rng=Replay())
    replay = iter(xis)
    theirs = K.sampling.sample_euler_ancestral(
        denoiser, noise / alpha_T, sigmas, disable=True, noise_sampler=lambda s, t: next(replay)
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


# -- sweeps -------------------------------------------------------------------------------------
def test_sweep_forms_and_order():
    grid = parse_sweep({"grid": {"gamma": [0, 1], "delta": [0.5, 1]}})
    assert [point_text(p) for p in grid.points] == [
        "gamma=0, delta=0.5",
        "gamma=0, delta=1",
        "gamma=1, delta=0.5",
        "gamma=1, delta=1",
    ]
    union = parse_sweep(
        {"grid": [{"steps": [10], "delta": [0], "gamma": [0, 1]}, {"steps": [10], "gamma": [1], "delta": [0, 1]}]}
    )
    assert len(union.points) == 3 and union.knobs == ("steps", "delta", "gamma")  # (10, 0, 1) listed once
    listed = parse_sweep({"points": [{"gamma": 0}, {"gamma": 1, "delta": 1}], "knob": "steps", "values": [5]})
    assert [point_text(p) for p in listed.points] == ["steps=5", "gamma=0", "gamma=1, delta=1"]
    assert isinstance(listed.points[0]["steps"], int)


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({}, "has no points"),
        ({"grid": {}}, "must be a table of knob"),
        ({"grid": []}, "grid is empty"),
        ({"grid": {"gamma": []}}, "non-empty list"),
        ({"points": []}, "non-empty list of tables"),
        ({"points": [{}]}, "not a table of knobs"),
        ({"grid": {"spacing": ["trailing", "leading"]}}, "not a number"),
        ({"grid": {"clip_x0": [True, False]}}, "not a number"),
        ({"knob": "steps"}, "knob and values together"),
        ({"knobs": "steps", "values": [1]}, "unknown key"),
    ],
)
def test_bad_sweeps(sweep, message):
    with pytest.raises(ConfigError, match=message):
        parse_sweep(sweep)


GRID = """
[run]
name = "grid"
n = 40
batch_size = 20

[sampler]
factory = "demo"
[sampler.kwargs]
steps = 4

[[metrics]]
name = "fid"
extractor = "demo-digits"
reference = "digits:test"
allow_unmatched = true
blocks = 5

[sweep.grid]
gamma = [0.0, 1.0]
delta = {deltas}
"""


def _grid(tmp_path, deltas="[0.5, 1.0]", name="g.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(GRID.format(deltas=deltas)))
    return path


def test_grid_run_rows_heatmap_and_lines(tmp_path):
    out = run_config(load_config(_grid(tmp_path)), tmp_path / "out")
    table = sweep_table(out.report.to_frame())
    fid = table[table["name"] == "fid"]
    assert sorted(zip(fid["gamma"], fid["delta"], strict=True)) == [(0, 0.5), (0, 1), (1, 0.5), (1, 1)]
    assert fid["stderr"].notna().all() and (fid["n_gen"] == 40).all()
    ddim = fid[fid["gamma"] == 0]["value"].tolist()
    assert ddim[0] == ddim[1]  # gamma = 0: delta has no effect, to the last bit
    nfe = sweep_table(out.report.to_frame(), kind="latency").query("name == 'nfe'")
    assert (nfe["value"] == 4).all() and len(nfe) == 4
    assert all("gamma=" in s and "delta=" in s for s in fid["sampler"])
    pivot = fid.pivot_table(index="delta", columns="gamma", values="value")
    assert pivot.shape == (2, 2)
    for key in ("heatmap_fid_demo-digits_features_png", "sweep_fid_demo-digits_features_gamma_png"):
        assert out.paths[key].stat().st_size > 5000
    html = out.paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 4 and "gamma=1, delta=0.5" in html


@pytest.mark.parametrize(
    "deltas, message",
    [("[-0.5, 1.0]", "option 'delta' is too small"), ("[1.0]\nbeta = [0.1]", "not knobs of the sampler")],
)
def test_bad_knobs_in_a_grid_stop_the_run_before_any_work(tmp_path, capsys, deltas, message):
    cfg = _grid(tmp_path, deltas)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err
    rows = json.loads((tmp_path / "o" / "report.json").read_text())["rows"] if (tmp_path / "o").exists() else []
    assert not [r for r in rows if r["kind"] == "metric"]  # nothing was sampled


def test_a_grid_over_a_non_numeric_sampler_knob_is_refused(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(GRID.format(deltas="[1.0]").replace("gamma = [0.0, 1.0]", "schedule = [1.0]")))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "is not numeric for this sampler" in capsys.readouterr().err


def test_an_interrupted_grid_resumes_keeping_the_points_done(tmp_path, monkeypatch):
    from diffeval.samplers import factories

    cfg = load_config(_grid(tmp_path, "[0.5, 1.0]"))
    full = run_config(cfg, tmp_path / "full").report.to_frame()
    built = []
    real = factories.build_sampler

    def counting(spec, kwargs, **kw):
        built.append(dict(kwargs))
        if kwargs.get("gamma") == 1.0 and kwargs.get("delta") == 0.5 and not (tmp_path / "flag").exists():
            (tmp_path / "flag").write_text("died once")
            raise KeyboardInterrupt
        return real(spec, kwargs, **kw)

    monkeypatch.setattr("diffeval.run.subjects.build_sampler", counting)
    monkeypatch.setenv("DIFFEVAL_CHECKPOINT_S", "0")
    with pytest.raises(RunFailed):
        run_config(cfg, tmp_path / "cut")
    done_before = [k for k in built if "gamma" in k]
    built.clear()
    resumed = run_config(cfg, tmp_path / "cut", resume=True).report.to_frame()
    swept = [k for k in built if "gamma" in k]
    assert [(k["gamma"], k["delta"]) for k in done_before] == [(0.0, 0.5), (0.0, 1.0), (1.0, 0.5)]
    assert [(k["gamma"], k["delta"]) for k in swept] == [(1.0, 0.5), (1.0, 1.0)]  # the first two are kept
    a, b = (sweep_table(f).query("name == 'fid'").sort_values(["gamma", "delta"]) for f in (full, resumed))
    np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=1e-9)


def test_the_shipped_s2n_config_parses_into_the_experiment():
    cfg = load_config("s2n")
    points = cfg.sweep.points
    deterministic = [p for p in points if p["gamma"] == 0.0]
    stochastic = [p for p in points if p["gamma"] > 0]
    # deterministic mode is the probability-flow ODE (gamma = 0: DDIM) over the step count, nothing else
    assert sorted(p["steps"] for p in deterministic) == [5, 10, 20, 50]
    assert not [p for p in points if p["delta"] == 0 and p["gamma"] > 0]  # no point that collapses by construction
    assert len(stochastic) == 2 * 5 * 4 and {p["steps"] for p in stochastic} == {10, 50}
    assert {"steps": 10, "gamma": 1.0, "delta": 1.0} in stochastic  # DDPM in the stochastic grid


def test_delta_zero_with_gamma_shrinks_the_noise_direction_by_the_stated_factor():
    """The dropped deterministic points: delta = 0, gamma > 0 keeps sqrt(sigma_s^2 - beta^2) / sigma_s =
    exp(-gamma h / 2) of the noise direction per step, exp(-gamma * span / 2) over the trajectory (0.27 at
    gamma = 0.1 on the demo's schedule at 50 steps)."""
    schedule = schedules.cosine()
    sampler = GeneralizedSampler(lambda x, t: torch.zeros_like(x), schedule, steps=50, gamma=0.1, delta=0.0)
    lam = schedule.log_snr[sampler.indices].tolist()
    kept = 1.0
    for lam_t, lam_s in zip(lam, lam[1:], strict=False):
        sigma_s_sq = float(torch.sigmoid(torch.tensor(-lam_s, dtype=torch.float64)))
        kept *= math.sqrt(1 - sampler.noise_variance(lam_t, lam_s) / sigma_s_sq)
    assert kept == pytest.approx(math.exp(-0.1 * (lam[-1] - lam[0]) / 2), rel=1e-12)
    assert kept == pytest.approx(0.270, abs=0.001)


def test_reports_from_before_multi_knob_sweeps_still_load(tmp_path):
    """A report.json / report.csv with the old knob / knob_value columns reads back with the point column."""
    from diffeval.report.report import Report, make_row, read_csv

    row = make_row("fid", "metric", 12.0, n_gen=10, n_ref=10, extractor="x:f", direction="lower", point={"steps": 8})
    old = {k: v for k, v in row.items() if k != "point"} | {"knob": "steps", "knob_value": 8.0}
    plain = {k: v for k, v in row.items() if k != "point"} | {"knob": "", "knob_value": None, "name": "kid"}
    (tmp_path / "report.json").write_text(json.dumps({"run_id": "old", "rows": [old, plain], "provenance": {}}))
    frame = Report.load(tmp_path / "report.json").to_frame()
    assert frame["point"].tolist() == ['{"steps": 8.0}', ""]
    assert sweep_table(frame)["steps"].tolist() == [8.0]
    csv = frame.drop(columns=["point"]).assign(knob=["steps", ""], knob_value=["8.0", ""])
    csv.to_csv(tmp_path / "report.csv", index=False)
    assert read_csv(tmp_path / "report.csv")["point"].tolist() == ['{"steps": 8.0}', ""]
    from diffeval.core.points import point_key

    assert point_key('{"steps": 8.0}') == point_key({"steps": 8}) == point_key('{"steps": 8}')
    assert point_key({"gamma": 1, "delta": 0.5}) == point_key({"delta": 0.5, "gamma": 1.0})


def test_gamma_zero_is_eta_zero_bit_for_bit_on_a_zero_terminal_snr_schedule():
    zero = schedules.rescale_zero_terminal_snr(schedules.linear())

    def velocity(x, t):
        return 0.5 * x

    noise = seeded_noise(range(4), (1, 4, 4))
    by_gamma = GeneralizedSampler(velocity, zero, prediction="v", steps=10, gamma=0.0)(noise)
    by_eta = GeneralizedSampler(velocity, zero, prediction="v", steps=10, eta=0.0)(noise)
    assert torch.isfinite(by_gamma).all() and torch.equal(by_gamma, by_eta)  # was NaN at the first step
    stochastic = GeneralizedSampler(velocity, zero, prediction="v", steps=10, gamma=0.5)
    assert stochastic.noise_variance(-math.inf, 2.0) == pytest.approx(float(torch.sigmoid(torch.tensor(-2.0))))


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0, 4.0])
def test_the_step_is_the_first_order_sa_solver_step_with_tau_squared_gamma(gamma):
    """The stated identity: with x0_hat fixed over the step, the exact solution of the generalized backward SDE
    (tau^2 = gamma) keeps (sigma_s / sigma_t) exp(-gamma h / 2) of z_t, puts alpha_s (1 - exp(-(1 + gamma) h / 2)) on
    x0_hat and draws sigma_s^2 (1 - exp(-gamma h)) of fresh noise (SA-Solver's first-order step, h in log-SNR)."""
    sampler = GeneralizedSampler(lambda x, t: x, schedules.cosine(), steps=10, gamma=gamma, delta=0.0)
    lam_t, lam_s = -1.3, 0.7
    h = lam_s - lam_t
    (alpha_t, sigma_t), (alpha_s, sigma_s) = _alpha_sigma(lam_t), _alpha_sigma(lam_s)
    gen = torch.Generator().manual_seed(0)
    z_t, x0_hat = (
        torch.randn(64, generator=gen, dtype=torch.float64),
        torch.randn(64, generator=gen, dtype=torch.float64),
    )
    eps_hat = (z_t - alpha_t * x0_hat) / sigma_t
    z_s = sampler.step(z_t, x0_hat, eps_hat, lam_t, lam_s, torch.randn_like)
    closed = (sigma_s / sigma_t) * math.exp(-gamma * h / 2) * z_t + alpha_s * -math.expm1(-(1 + gamma) * h / 2) * x0_hat
    torch.testing.assert_close(z_s, closed, rtol=1e-12, atol=1e-12)
    assert sampler.noise_variance(lam_t, lam_s) == pytest.approx(sigma_s**2 * -math.expm1(-gamma * h), rel=1e-12)
