"""torch.distributed: two gloo processes on CPU give the single-process metric values; a failing rank is named."""

import json

import pytest
import torch.multiprocessing as mp
from dist_helpers import metrics_for_demo, worker

from diffeval.engine.distributed import shard
from diffeval.engine.loop import evaluate


def test_shard_blocks():
    assert (
        shard(range(10), 0, 3) == [0, 1, 2, 3]
        and shard(range(10), 1, 3) == [4, 5, 6]
        and shard(range(10), 2, 3) == [7, 8, 9]
    )
    assert sum((shard(range(7), r, 4) for r in range(4)), []) == list(range(7))


def _spawn(tmp_path, mode):
    out = tmp_path / f"{mode}.json"
    mp.spawn(worker, args=(2, str(tmp_path / f"init-{mode}"), str(out), mode), nprocs=2, join=True)
    return json.loads(out.read_text())


def test_two_gloo_ranks_equal_single_process(tmp_path):
    from diffeval.demo.bundle import demo_sampler

    got = _spawn(tmp_path, "ok")
    assert "crash" not in got, got.get("crash")
    extractor, metrics = metrics_for_demo()
    single = evaluate(
        demo_sampler(steps=4, eta=1.0),
        seeds=range(32),
        image_shape=(1, 8, 8),
        extractors=[extractor],
        metrics=metrics,
        batch_size=8,
    )
    assert got["n"] == 32 and got["nfe"] == 4
    assert got["metrics"]["fid"]["value"] == pytest.approx(single["fid"].value, rel=1e-9)
    assert got["metrics"]["inception_score"]["value"] == pytest.approx(single["inception_score"].value, rel=1e-12)
    assert got["metrics"]["kid"]["value"] == pytest.approx(single["kid"].value, rel=1e-12)
    # merged shards == single pass, standard errors included (FID's is a spread of leave-one-block-out FIDs of
    # 32 samples in 64-d: the merge's float64 rounding shows at 1e-8)
    for name, rel in (("fid", 1e-7), ("inception_score", 1e-12), ("kid", 1e-12)):
        assert got["metrics"][name]["stderr"] == pytest.approx(single[name].stderr, rel=rel), name


def test_a_failing_rank_is_named(tmp_path):
    got = _spawn(tmp_path, "fail")  # every rank raises RankFailed (the worker records rank 0's message)
    assert (
        "rank 1 failed" in got["error"]
        and "simulated CUDA error" in got["error"]
        and "no report was written as complete" in got["error"]
    )
