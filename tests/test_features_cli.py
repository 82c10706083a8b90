"""Extractors, weight resolution, image sources and the fid / ref / is / clip-score commands."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from inception_fixture import save_random_inception
from PIL import Image

from diffeval.api import fid_between
from diffeval.cli.main import main
from diffeval.core.errors import ConfigError, InputError, WeightsError
from diffeval.data.sources import FolderSource, NpzImageSource, open_input
from diffeval.features import INCEPTION_WEIGHTS, InceptionV3Extractor, get_extractor
from diffeval.features.weights import resolve
from diffeval.stats.moments import FeatureMoments


def test_unknown_extractor_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'inception-v3'"):
        get_extractor("inception-v4")


def test_offline_missing_weights_names_the_flag():
    with pytest.raises(WeightsError, match="DIFFEVAL_OFFLINE") as info:
        InceptionV3Extractor()
    assert "DIFFEVAL_WEIGHTS_DIR" in str(info.value)


def test_weights_dir_is_searched_and_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFEVAL_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / INCEPTION_WEIGHTS.filename).write_bytes(b"not the real file")
    with pytest.raises(WeightsError, match="failed its hash check"):
        resolve(INCEPTION_WEIGHTS)


def test_pickle_bearing_inception_file_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2), "payload": Path("/")}, path)  # a non-tensor object needs full pickle
    with pytest.raises(WeightsError, match="weights_only=True"):
        InceptionV3Extractor(weights=str(path))


def test_wrong_network_weights_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="do not fit"):
        InceptionV3Extractor(weights=str(path))


# -- sources ---------------------------------------------------------------------------------
def _write_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    return folder


def test_folder_and_npz_sources_agree(tmp_path):
    from diffeval.demo.data import load_digits

    images = load_digits("test").images[:20].numpy()
    folder = _write_folder(tmp_path / "f", images)
    np.savez(tmp_path / "b.npz", arr_0=images.transpose(0, 2, 3, 1))
    a, b = open_input(folder), open_input(tmp_path / "b.npz")
    assert isinstance(a, FolderSource) and isinstance(b, NpzImageSource) and len(a) == len(b) == 20
    torch.testing.assert_close(a.load(range(20)), b.load(range(20)))
    torch.testing.assert_close(a.load([3]), torch.from_numpy(images[3:4]))


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_input(tmp_path / "missing")
    np.savez(tmp_path / "odd.npz", foo=np.zeros(3))
    with pytest.raises(InputError, match="neither images nor statistics"):
        open_input(tmp_path / "odd.npz")
    np.savez(tmp_path / "musigma_bad.npz", mu=np.zeros(3), sigma=np.eye(4), n=10)
    with pytest.raises(InputError, match="shapes do not match"):
        open_input(tmp_path / "musigma_bad.npz")
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(3), n=10)
    with pytest.raises(InputError, match="lacks keys"):
        open_input(tmp_path / "nosigma.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_input(tmp_path / "empty")


# -- matched counts and the commands -----------------------------------------------------------
@pytest.fixture
def digit_sets(tmp_path):
    from diffeval.demo.data import load_digits

    test = load_digits("test").images.numpy()
    train = load_digits("train").images.numpy()
    gen = _write_folder(tmp_path / "gen", train[:100])
    np.savez(tmp_path / "ref.npz", arr_0=test.transpose(0, 2, 3, 1))
    return gen, tmp_path / "ref.npz"


def test_fid_subsamples_a_larger_reference_to_match(digit_sets):
    gen, ref = digit_sets
    out = fid_between(str(gen), str(ref), features="demo-digits")
    assert out["n_gen"] == out["n_ref"] == 100 and out["matched"] is True
    again = fid_between(str(gen), str(ref), features="demo-digits")
    assert again["fid"] == out["fid"]  # the subset is seeded
    other = fid_between(str(gen), str(ref), features="demo-digits", seed=1)
    assert other["fid"] != out["fid"]


def test_fid_refuses_unmatched_statistics_and_too_few_images(digit_sets, tmp_path, capsys):
    gen, ref = digit_sets
    assert (
        main(
            [
                "ref",
                str(ref),
                "--out",
                str(tmp_path / "ref_stats.npz"),
                "--features",
                "demo-digits",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    stats = FeatureMoments.load(tmp_path / "ref_stats.npz")
    assert stats.n == 360 and stats.meta["extractor"] == "demo-digits" and stats.meta["layer"] == "features"
    capsys.readouterr()
    assert main(["fid", str(gen), str(tmp_path / "ref_stats.npz"), "--features", "demo-digits", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "d(d+5)/(2N)" in err and "--allow-unmatched" in err
    assert (
        main(
            [
                "fid",
                str(gen),
                str(tmp_path / "ref_stats.npz"),
                "--features",
                "demo-digits",
                "--no-progress",
                "--allow-unmatched",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (
        out["matched"] is False
        and out["n_gen"] == 100
        and out["n_ref"] == 360
        and out["features"] == "demo-digits:features"
    )
    # statistics of another extractor are refused
    assert main(["fid", str(tmp_path / "ref_stats.npz"), str(tmp_path / "ref_stats.npz"), "--no-progress"]) == 2
    assert "another feature extractor" in capsys.readouterr().err
    # too few reference images for the generated count
    assert main(["fid", str(ref), str(gen), "--features", "demo-digits", "--no-progress"]) == 2
    assert "sample counts do not match" in capsys.readouterr().err


def test_fid_of_a_set_with_itself_is_zero_and_stats_equal_images(digit_sets, tmp_path, capsys):
    gen, ref = digit_sets
    assert main(["fid", str(gen), str(gen), "--features", "demo-digits", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["fid"]) < 1e-8
    assert main(["ref", str(gen), "--out", str(tmp_path / "g.npz"), "--features", "demo-digits", "--no-progress"]) == 0
    capsys.readouterr()
    images = fid_between(str(gen), str(ref), features="demo-digits", n=80)
    main(
        ["ref", str(gen), "--out", str(tmp_path / "g40.npz"), "--features", "demo-digits", "--n", "80", "--no-progress"]
    )
    main(
        ["ref", str(ref), "--out", str(tmp_path / "r40.npz"), "--features", "demo-digits", "--n", "80", "--no-progress"]
    )
    capsys.readouterr()
    stats = fid_between(str(tmp_path / "g40.npz"), str(tmp_path / "r40.npz"), features="demo-digits")
    assert stats["fid"] == pytest.approx(images["fid"], rel=1e-9)


def test_is_command_on_digits(digit_sets, capsys):
    _, ref = digit_sets
    assert main(["is", str(ref), "--features", "demo-digits", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 7.0 < out["inception_score"] <= 10.0  # ten well-separated classes, near-balanced
    assert out["features"] == "demo-digits:logits"


def test_inception_cli_with_explicit_random_weights(tmp_path, capsys):
    weights = save_random_inception(tmp_path / "inception.pt", seed=1)
    g = np.random.RandomState(0)
    np.savez(tmp_path / "a.npz", arr_0=g.randint(0, 256, (12, 16, 16, 3)).astype(np.uint8))
    np.savez(tmp_path / "b.npz", arr_0=g.randint(0, 128, (12, 16, 16, 3)).astype(np.uint8))
    assert (
        main(
            [
                "fid",
                str(tmp_path / "a.npz"),
                str(tmp_path / "b.npz"),
                "--weights",
                str(weights),
                "--json",
                "--no-progress",
                "--batch-size",
                "6",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["fid"] > 0 and out["n_gen"] == 12
    from diffeval.features.weights import sha256_file

    assert (
        out["features"] == f"inception-v3[sha256:{sha256_file(weights)[:12]}]:2048"
    )  # the weight file is named in the output


# -- CLIP ---------------------------------------------------------------------------------------
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("clipcfg")
    (folder / "diffeval-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "diffeval-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("diffeval-tiny-clip", pretrained=None)
    path = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return path


def test_clip_score_command_matches_manual_computation(tmp_path, tiny_clip, capsys):
    import open_clip

    images = np.random.RandomState(1).randint(0, 256, (6, 3, 40, 48)).astype(np.uint8)
    folder = _write_folder(tmp_path / "imgs", images)
    prompts = ["a red cube", "a dog", "two cats", "a tree", "the sea", "a digit seven"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert (
        main(
            [
                "clip-score",
                str(folder),
                str(tmp_path / "prompts.txt"),
                "--model",
                "diffeval-tiny-clip",
                "--pretrained",
                str(tiny_clip),
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    # manual: open_clip's own preprocessing on PIL images, then cosine
    model, _, preprocess = open_clip.create_model_and_transforms("diffeval-tiny-clip", pretrained=str(tiny_clip))
    tok = open_clip.get_tokenizer("diffeval-tiny-clip")
    with torch.no_grad():
        img = torch.stack([preprocess(Image.open(folder / f"{i:04d}.png")) for i in range(6)])
        cos = torch.nn.functional.cosine_similarity(
            model.encode_image(img).double(), model.encode_text(tok(prompts)).double()
        )
    assert out["clip_score"] == pytest.approx(
        max(float(100 * cos.mean()), 0.0), abs=0.5
    )  # tensor vs PIL bicubic resize
    assert out["clip_score_hessel"] == pytest.approx(float((2.5 * cos.clamp_min(0)).mean()), abs=0.02)
    assert out["n_gen"] == 6


def test_clip_prompt_count_mismatch(tmp_path, tiny_clip, capsys):
    folder = _write_folder(tmp_path / "imgs", np.zeros((3, 3, 8, 8), dtype=np.uint8))
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    assert (
        main(
            [
                "clip-score",
                str(folder),
                str(tmp_path / "p.txt"),
                "--model",
                "diffeval-tiny-clip",
                "--pretrained",
                str(tiny_clip),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "prompt count differs" in capsys.readouterr().err


def test_clip_tag_offline_is_a_clear_error(monkeypatch, capsys, tmp_path):
    from diffeval.features import ClipExtractor

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsError, match="downloads are off \\(DIFFEVAL_OFFLINE=1\\)") as info:
        ClipExtractor(model="ViT-B-32", pretrained="openai")
    assert "--weights PATH" in str(info.value) and "open_clip-ViT-B-32-openai" in str(info.value)
    folder = _write_folder(tmp_path / "g", np.zeros((2, 3, 8, 8), dtype=np.uint8))
    assert main(["fid", str(folder), str(folder), "--features", "clip", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith("or unset DIFFEVAL_OFFLINE")  # one message, not cut mid-word


def test_cached_clip_tag_is_used_without_any_network_request(tmp_path, monkeypatch, tiny_clip):
    import huggingface_hub
    import open_clip
    from open_clip import pretrained as oc

    from diffeval.features import ClipExtractor

    monkeypatch.setitem(oc._PRETRAINED, "diffeval-tiny-clip", {"test": oc._pcfg(hf_hub="diffeval/tiny-clip/")})

    def no_network(*args, **kwargs):
        raise AssertionError("a network request was made")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(oc, "hf_hub_download", no_network)
    monkeypatch.setenv("DIFFEVAL_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("DIFFEVAL_OFFLINE")  # downloads allowed: the local file must still win
    (tmp_path / "open_clip-diffeval-tiny-clip-test.bin").write_bytes(tiny_clip.read_bytes())
    ex = ClipExtractor(model="diffeval-tiny-clip", pretrained="test")
    ref = open_clip.create_model("diffeval-tiny-clip", pretrained=str(tiny_clip))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        want = torch.nn.functional.normalize(ref.eval().encode_image(ex._preprocess(x)).float(), dim=-1)
    torch.testing.assert_close(ex(x)["image"], want)
    assert ex.key == "clip:diffeval-tiny-clip:test" and len(ex.identity["weights_sha256"]) == 64


def test_weights_option_is_honoured_for_clip_in_fid(tmp_path, tiny_clip, capsys):
    g = np.random.RandomState(0)
    a = _write_folder(tmp_path / "a", g.randint(0, 256, (6, 3, 16, 16)).astype(np.uint8))
    b = _write_folder(tmp_path / "b", g.randint(0, 128, (6, 3, 16, 16)).astype(np.uint8))
    args = ["fid", str(a), str(b), "--features", "clip", "--weights", str(tiny_clip), "--allow-unmatched"]
    with pytest.raises(WeightsError, match="diffeval-tiny-clip|ViT-B-32"):
        from diffeval.features import get_extractor

        get_extractor("clip", weights=str(tiny_clip))  # the tiny weights do not fit the default ViT-B-32
    assert main(args + ["--no-progress", "--json"]) == 2
    err = capsys.readouterr().err
    assert f"with weights {tiny_clip}" in err  # the --weights file was used (it used to be ignored for clip)
