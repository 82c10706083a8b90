"""Test-session guards: nothing downloads, and no user cache is read or written."""

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    home = tmp_path_factory.getbasetemp() / "torch-home"
    monkeypatch.setenv("DIFFEVAL_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("DIFFEVAL_WEIGHTS_DIR", raising=False)
    # and whatever a test unsets, a download fails loudly instead of reaching the network
    import urllib.request

    import torch.hub

    def _no_network(*args, **kwargs):
        raise AssertionError(f"a test tried to download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)


def pytest_report_header(config):
    """The stack this run used (recorded in every CI log)."""
    import importlib.metadata as md

    versions = []
    for dist in (
        "numpy",
        "pandas",
        "torch",
        "scipy",
        "diffusers",
        "transformers",
        "open-clip-torch",
        "torch-fidelity",
        "k-diffusion",
        "setuptools",
    ):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    return "stack: " + ", ".join(versions)
