"""Worker processes for the torch.distributed (gloo) tests."""

import json
import traceback

import torch.distributed as dist


def metrics_for_demo():
    from diffeval.demo.bundle import DigitsFeatureExtractor
    from diffeval.demo.data import load_digits
    from diffeval.demo.run import reference_moments
    from diffeval.metrics import FID, KID, InceptionScore

    extractor = DigitsFeatureExtractor()
    reference = reference_moments(extractor, n=32)
    features = extractor(load_digits("test").images[:64])["features"]
    metrics = [
        FID(reference, "demo-digits", "features"),
        InceptionScore("demo-digits", "logits", splits=4),
        KID(features, "demo-digits", "features", subsets=10, subset_size=16),
    ]
    return extractor, metrics


def worker(rank, world_size, init_file, out_file, mode):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        from diffeval.demo.bundle import demo_sampler
        from diffeval.engine.distributed import RankFailed, evaluate_sharded

        sampler = demo_sampler(steps=4, eta=1.0)
        if mode == "fail" and rank == 1:

            def broken(x, t, *cond):
                raise RuntimeError("simulated CUDA error on this rank")

            sampler = sampler.replace(model=broken)
        extractor, metrics = metrics_for_demo()
        try:
            result = evaluate_sharded(
                sampler, seeds=range(32), image_shape=(1, 8, 8), extractors=[extractor], metrics=metrics, batch_size=8
            )
            if rank == 0:
                json.dump(
                    {
                        "metrics": {
                            label.split("@")[0]: {"value": r.value, "stderr": r.stderr}
                            for label, r in result.metrics.items()
                        },
                        "n": result.n,
                        "nfe": result.latency.nfe,
                    },
                    open(out_file, "w"),
                    default=str,
                )
        except RankFailed as error:
            if rank == 0:
                json.dump({"error": str(error)}, open(out_file, "w"))
    except Exception:
        if rank == 0:
            json.dump({"crash": traceback.format_exc()}, open(out_file, "w"))
        raise
    finally:
        dist.destroy_process_group()


def evaluator_worker(rank, world_size, init_file, out_file):
    """A user's own DDP-style loop: each rank samples its seeds and feeds an Evaluator; compute() gathers."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        from diffeval import Evaluator
        from diffeval.core.seeds import SeedRNG
        from diffeval.demo.bundle import demo_sampler

        sampler = demo_sampler(steps=4)
        ev = Evaluator(EVALUATOR_METRICS, reference="digits:test", extractor="demo-digits", n=64)
        mine = list(range(rank, 64, world_size))  # rank r's seeds: r, r + world, ...
        for lo in range(0, len(mine), 16):
            seeds = mine[lo : lo + 16]
            rng = SeedRNG(seeds, "cpu")
            ev.update(sampler(rng.randn((1, 8, 8)), None, rng=rng), seeds=seeds, value_range="[-1, 1]")
        results = ev.compute()
        out = {label: {"value": r.value, "stderr": r.stderr} for label, r in results.items()}
        json.dump(out, open(f"{out_file}.{rank}", "w"))
    finally:
        dist.destroy_process_group()


EVALUATOR_METRICS = ["fid", {"name": "kid", "subsets": 20, "subset_size": 32}, {"name": "inception_score", "splits": 4}]
