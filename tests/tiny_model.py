"""A tiny untrained ContextDiffusionModel shared by the guidance, pipeline and evaluation tests."""
import torch

from ctxdiff_from_scratch.data import ShapesWorld
from ctxdiff_from_scratch.model import ContextDiffusionModel, FrozenParts, ModelConfig

SIZE = 32


def tiny_model(prompts: bool = True, seed: int = 0,
               model_class: type[ContextDiffusionModel] = ContextDiffusionModel) -> ContextDiffusionModel:
    """An untrained tiny model (32x32 images, 4x8x8 latents) whose every weight is randomised; ``model_class``
    PairDiffusionModel gives the Prompt-Diffusion-style baseline of the same size.

    Zero-initialised layers (the adapter's zero convs, ...) would otherwise make the output ignore the query or the
    conditions, and identities about conditions could not fail.
    """
    world = ShapesWorld("train", size=SIZE)
    texts = [world.styled_image(seed)[1] for seed in range(20)] if prompts else None
    parts = FrozenParts.untrained(image_size=SIZE, prompts=texts, seed=seed)
    config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder,
                                    unet_profile="tiny", adapter=True)
    model = model_class(config, parts)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.denoiser.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()
