"""Stable Diffusion pipelines that load without network access.

``tiny`` has SD's shape (UNet2DConditionModel with cross-attention, an AutoencoderKL that
downsamples 8x, a CLIP text encoder and tokenizer) at a size that runs in ~0.1-0.2 s per 64x64
image on one CPU thread, so tests and demos exercise the real diffusers code path.
``sd15-arch`` is SD 1.5's real architecture with seeded random weights: the same FLOPs, memory and
kernels as the real model, for GPU performance work without downloading a checkpoint. A directory
path loads a local diffusers checkpoint offline.

Weights are seeded per component (under a forked RNG, so the caller's RNG is untouched): the same
seed gives the same weights on every machine, which is what lets two deployments be compared on
identical images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sd_server.config import MODEL_SD15_ARCH, MODEL_TINY

__all__ = ["build_pipeline", "byte_level_clip_tokenizer", "native_size"]

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"

# SD 1.5's scheduler settings (scaled-linear betas), with DDIM as in the GPU anchors.
_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

_ARCHS: dict[str, dict[str, dict[str, Any]]] = {
    MODEL_TINY: {
        "unet": {
            "block_out_channels": (32, 64),
            "layers_per_block": 2,
            "sample_size": 8,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
        },
        "vae": {
            # Four blocks = three downsamplings = SD's 8x latent factor.
            "block_out_channels": (32, 32, 64, 64),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "layers_per_block": 1,
            "sample_size": 64,
        },
        "text": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 5,
            "projection_dim": 32,
            "vocab_size": 1000,
        },
    },
    MODEL_SD15_ARCH: {
        "unet": {
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "sample_size": 64,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        },
        "vae": {
            "block_out_channels": (128, 256, 512, 512),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "layers_per_block": 2,
            "sample_size": 512,
        },
        "text": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "projection_dim": 768,
            "vocab_size": 49408,
            "hidden_act": "quick_gelu",
        },
    },
}


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's reversible byte-to-printable-character table.

    Why here: transformers 5 dropped ``bytes_to_unicode`` from the CLIP tokenizer module, and
    the table is what makes every byte of a prompt map to some vocabulary entry.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def byte_level_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a byte-level vocabulary and no merges, built in memory.

    Every prompt tokenizes to one id per byte (lower-cased, as CLIP does), so different prompts
    give different embeddings; ids stay below 514, inside every CLIP vocabulary size.
    """
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab[_BOS] = len(vocab)
    vocab[_EOS] = len(vocab)
    # model_max_length is required: without it transformers overflows computing the default.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _random_pipeline(arch: dict[str, dict[str, Any]], seed: int) -> StableDiffusionPipeline:
    tokenizer = byte_level_clip_tokenizer()
    text_config = CLIPTextConfig(
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **arch["text"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**arch["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(latent_channels=4, **arch["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(text_config)
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def build_pipeline(model: str, *, seed: int = 0) -> StableDiffusionPipeline:
    """Return the named pipeline in fp32 on the CPU, ready for :func:`sd_server.paths.apply`.

    Args:
        model: ``tiny``, ``sd15-arch`` or a local diffusers directory (loaded offline).
        seed: weight seed of the random-weight models.

    Raises:
        FileNotFoundError: ``model`` is neither a known name nor an existing directory.
    """
    if model in _ARCHS:
        pipe = _random_pipeline(_ARCHS[model], seed)
    else:
        path = Path(model)
        if not path.is_dir():
            known = ", ".join(sorted(_ARCHS))
            raise FileNotFoundError(f"--model {model!r}: not one of {known} nor a directory")
        pipe = StableDiffusionPipeline.from_pretrained(
            path,
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def native_size(pipe: StableDiffusionPipeline) -> int:
    """The image side the UNet was configured for (64 for tiny, 512 for SD 1.5)."""
    sample = pipe.unet.config.sample_size
    side = sample if isinstance(sample, int) else sample[0]
    return int(side) * int(pipe.vae_scale_factor)
