"""Tiny, randomly initialised stand-ins for CLIP, Stable Diffusion and ControlNet, written as local model folders.

No weights can be downloaded in CI, so the Stable Diffusion track is exercised end to end on parts of the same
classes, at toy sizes, saved in the layouts the real model ids have on the Hugging Face Hub:

    <folder>/clip/              CLIPModel (text + vision towers) and a CLIPTokenizer (vocab.json, merges.txt)
    <folder>/stable-diffusion/  unet/, vae/, scheduler/ as in a Stable Diffusion 1.x repository
    <folder>/controlnet/        a ControlNetModel copied from that UNet's encoder (ControlNetModel.from_unet)

``ContextDiffusion.from_pretrained_parts(**build_tiny_parts(folder))`` then runs the very code that loads
``openai/clip-vit-large-patch14`` and ``stable-diffusion-v1-5/stable-diffusion-v1-5``; only the weights differ. They
are untrained: whatever the tiny parts generate is noise.

The sizes follow diffusers' and transformers' own tests: 32-wide transformers, a two-level UNet (4 and 8 channels) on
32x32 latents, a two-level VAE (so images are 64x64 pixels) and 32x32 CLIP images in 4x4 patches. The vision tower is
48 wide, the text tower 32 (the UNet's cross-attention width), so the trainable projection h^V -> text width is a
real 48 -> 32 map, as ViT-L/14's 1024 -> 768 is at full size.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CLIP_DIR, STABLE_DIFFUSION_DIR, CONTROLNET_DIR = "clip", "stable-diffusion", "controlnet"
MARKER = "tiny_parts.json"  # written last: a folder holding it is complete

TEXT_WIDTH, VISION_WIDTH, IMAGE_SIZE, PATCH_SIZE = 32, 48, 32, 4
MAX_PROMPT_TOKENS = 77  # CLIP's context length, as in every Stable Diffusion tokenizer
# Stable Diffusion 1.x's noise schedule (its scheduler_config.json), sampled with DDIM as in the paper
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def write_tiny_tokenizer(folder: Path) -> None:
    """A character-level CLIP BPE vocabulary: the two special tokens, then each letter and digit, alone and at a
    word's end (``a``, ``a</w>``), and no merges. ``CLIPTokenizer.from_pretrained(folder, model_max_length=77)``
    reads it offline; without ``model_max_length`` the length is unbounded and padding to 77 fails."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def _build_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    special = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)  # the ids of write_tiny_tokenizer's vocabulary
    config = CLIPConfig(
        text_config=dict(hidden_size=TEXT_WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
                         vocab_size=1000, max_position_embeddings=MAX_PROMPT_TOKENS, **special),
        vision_config=dict(hidden_size=VISION_WIDTH, intermediate_size=37, num_attention_heads=4,
                           num_hidden_layers=5, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        projection_dim=32)
    folder.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(folder)
    write_tiny_tokenizer(folder)
    CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_PROMPT_TOKENS).save_pretrained(folder)


def _build_stable_diffusion(folder: Path, controlnet_folder: Path) -> None:
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_WIDTH,
                                norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=2)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    DDIMScheduler(**SD_SCHEDULE).save_pretrained(folder / "scheduler")
    # one halving in the hint encoder, to the two-level VAE's latent resolution (SD's (16, 32, 96, 256) halves 3x)
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).save_pretrained(controlnet_folder)


def build_tiny_parts(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Write the tiny random parts under ``folder`` (once; a complete folder is reused) and return their paths as
    ``{"clip": ..., "stable_diffusion": ..., "controlnet": ...}``, the arguments of
    ``ContextDiffusion.from_pretrained_parts``. The weights depend on ``seed`` only."""
    folder = Path(folder).resolve()  # absolute: a saved model's config names these folders
    parts = {"clip": str(folder / CLIP_DIR), "stable_diffusion": str(folder / STABLE_DIFFUSION_DIR),
             "controlnet": str(folder / CONTROLNET_DIR)}
    marker = folder / MARKER
    if marker.is_file():
        built = json.loads(marker.read_text())
        if built["seed"] != seed:
            raise ValueError(f"{folder} holds tiny parts built with seed {built['seed']}, not {seed}; use another "
                             "folder or delete this one.")
        return parts
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream as it was
        torch.manual_seed(seed)
        _build_clip(Path(parts["clip"]))
        _build_stable_diffusion(Path(parts["stable_diffusion"]), Path(parts["controlnet"]))
    marker.write_text(json.dumps({"seed": seed, "note": "tiny random parts: untrained, for tests only"}) + "\n")
    return parts
