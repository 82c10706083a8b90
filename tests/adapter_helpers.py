"""Factories for adapter tests run through the config runner."""

import torch

from diffeval.samplers.diffusers import DiffusersSchedulerSampler


def flow_sampler():
    """A diffusers scheduler without alphas_cumprod (flow matching): the SNR checks must skip, not crash."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    return DiffusersSchedulerSampler(diffusers.FlowMatchEulerDiscreteScheduler(), unet, num_inference_steps=3)
