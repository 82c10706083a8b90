"""Factories for adapter tests run through the config runner."""

import torch

from diffeval.samplers.diffusers import DiffusersSchedulerSampler


def flow_sampler():
    """A diffusers flow-matching scheduler (no alphas_cumprod): it declares the flow schedule, and every check runs."""
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


def tiny_unet(seed=0, **extra):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        **extra,
    ).eval()


class EpsModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unet = tiny_unet()

    def forward(self, x, t, **kwargs):
        return self.unet(x, t).sample


def _tiny_clip_tokenizer(folder):
    """A character-level CLIP tokenizer written to ``folder`` (offline): its vocabulary size and the tokenizer."""
    import json

    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return vocab, transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )


def _tiny_text_config(vocab_size, **extra):
    """A one-layer, 16-wide CLIP text encoder config for the tiny tokenizer."""
    import transformers

    return transformers.CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **extra,
    )


def build_tiny_sd_pipeline(folder):
    """A random-weight StableDiffusionPipeline built offline from configs (tokenizer files written to ``folder``)."""
    import diffusers
    import transformers

    vocab, tokenizer = _tiny_clip_tokenizer(folder)
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(_tiny_text_config(len(vocab))).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=4,
    ).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8,
        sample_size=16,
    ).eval()
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd3_pipeline(folder, shift=3.0):
    """A random-weight StableDiffusion3Pipeline (flow matching: SD3 transformer, FlowMatchEulerDiscreteScheduler with
    SD3's shift) built offline from configs; the T5 encoder is left out, as SD3 allows."""
    import diffusers
    import transformers

    vocab, tokenizer = _tiny_clip_tokenizer(folder)

    def text_encoder(seed):
        torch.manual_seed(seed)
        return transformers.CLIPTextModelWithProjection(_tiny_text_config(len(vocab), projection_dim=16)).eval()

    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
    ).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8,
        sample_size=16,
        shift_factor=0.0609,  # SD3's VAE latent statistics (the pipeline un-shifts and un-scales with them)
        scaling_factor=1.5035,
    ).eval()
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=vae,
        text_encoder=text_encoder(1),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder(2),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
