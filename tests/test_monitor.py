"""The training monitor: the classic failures caught while training, on the demo's own training loop."""

from __future__ import annotations

import warnings

import pytest
import torch

from diffeval import CheckFailed, DiffevalWarning, schedules
from diffeval.core.errors import InputError
from diffeval.demo.data import load_digits
from diffeval.demo.train import SCHEDULE, train_denoiser
from diffeval.run.monitor import TrainingMonitor, lightning_callback


def test_the_demo_training_loop_fed_0_255_pixels_is_flagged_at_the_first_batch():
    monitor = TrainingMonitor(schedules.get(SCHEDULE), "eps", window=2)
    raw = load_digits("train").images.float()  # the trap: 0-255 pixels where the model expects [-1, 1]
    with pytest.warns(DiffevalWarning, match=r"x0_range failed.*Fix: these look like raw 0-255 pixels"):
        train_denoiser(1, log_every=0, monitor=monitor, data=raw)
    by_name = {r.name: r for r in monitor.batch_checks}
    assert by_name["x0_range"].status == "fail" and by_name["x0_range"].value == 255
    strict = TrainingMonitor(schedules.get(SCHEDULE), "eps", strict=True)
    with pytest.raises(CheckFailed, match="x0_range"):
        train_denoiser(1, log_every=0, monitor=strict, data=raw)


def test_the_demo_training_loop_with_correct_data_passes_and_writes_its_loss_plot(tmp_path):
    monitor = TrainingMonitor(schedules.get(SCHEDULE), "eps", window=10, bands=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffevalWarning)  # no check fails on [-1, 1] data
        train_denoiser(40, log_every=0, monitor=monitor)
    assert not [r for r in monitor.batch_checks if r.failed]
    assert len(monitor.windows) == 4 and all(w.count.sum() == 10 * 128 for w in monitor.windows)
    paths = monitor.report().write(tmp_path / "monitor")
    assert paths["loss_by_log_snr_png"].stat().st_size > 1000
    frame = monitor.report().to_frame()
    losses = frame[frame["name"].str.startswith("loss[")]
    assert len(losses) == 4 and (losses["value"] > 0).all() and (losses["direction"] == "lower").all()


def _fed(monitor, curve):
    """Feed ``curve(step, band) -> loss`` for every band, one sample per band per step."""
    lam = torch.tensor([(hi + lo) / 2 if lo > -1e9 else hi - 1 for hi, lo in monitor.band_ranges()])
    for step in range(monitor.window * 5):
        monitor.observe_loss(lam, torch.tensor([curve(step, b) for b in range(monitor.n_bands)]))
    return {r.name: r for r in monitor.loss_checks()}


def test_loss_verdicts_name_the_band_that_never_learns_or_diverges():
    schedule = schedules.cosine()
    learning = _fed(TrainingMonitor(schedule, "eps", bands=4, window=5), lambda s, b: 1.0 / (1 + s))
    assert learning["loss_bands"].status == "pass" and "loss_band_diverging" not in learning
    with pytest.warns(DiffevalWarning, match="loss_band_diverging"):
        checks = _fed(  # band 0 never learns; band 2 learns, then climbs back up
            TrainingMonitor(schedule, "eps", bands=4, window=5),
            lambda s, b: 1.0 if b == 0 else 1.0 / (1 + s) + (max(0, s - 12) / 5 if b == 2 else 0.0),
        )
    assert checks["loss_bands"].status == "warn" and "band 0" in checks["loss_bands"].message
    assert checks["loss_band_diverging"].status == "fail" and "band 2" in checks["loss_band_diverging"].message
    early = TrainingMonitor(schedule, "eps", window=100)
    early.observe_loss(torch.tensor([3, 7]), torch.tensor([0.1, 0.2]))
    assert early.loss_checks()[0].status == "skip"


def test_eps_prediction_at_zero_terminal_snr_is_flagged_from_the_declaration():
    zero = schedules.rescale_zero_terminal_snr(schedules.linear())
    with pytest.warns(DiffevalWarning, match="zero_terminal_snr_prediction"):
        TrainingMonitor(zero, "eps")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffevalWarning)
        TrainingMonitor(zero, "v")  # v-prediction is what a zero-terminal-SNR schedule needs


def test_bad_monitor_input_is_refused():
    monitor = TrainingMonitor(schedules.cosine(), "eps")
    with pytest.raises(InputError, match="one timestep"):
        monitor.observe_loss(torch.tensor([1, 2, 3]), torch.tensor([0.1, 0.2]))
    with pytest.raises(InputError, match="training schedule"):
        TrainingMonitor("cosine", "eps")
    with pytest.raises(Exception, match="unknown prediction type"):
        TrainingMonitor(schedules.cosine(), "score")


def test_the_lightning_callback_feeds_the_monitor_when_lightning_is_installed():
    try:
        import lightning  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="pip install lightning"):
            lightning_callback(TrainingMonitor(schedules.cosine(), "eps"))
        pytest.skip("PyTorch Lightning is not installed (optional): the callback's install hint was checked")
    monitor = TrainingMonitor(schedules.cosine(), "eps", window=1)
    callback = lightning_callback(monitor)
    outputs = {"loss": torch.tensor(0.5), "diffeval": {"t": torch.tensor([1, 2]), "loss": torch.tensor([0.4, 0.6])}}
    callback.on_train_batch_end(None, None, outputs, None, 0)
    assert len(monitor.windows) == 1
