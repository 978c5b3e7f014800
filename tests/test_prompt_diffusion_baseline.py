"""The Prompt-Diffusion-style baseline: pairs in the adapter, text-only cross-attention, the worlds' pair sources."""
import dataclasses
from pathlib import Path

import matplotlib
import pytest
import torch

from ctxdiff_from_scratch.baselines.prompt_diffusion import (PairAdapter, PairConditions, PairDenoiser,
                                                             PairDiffusionModel, episode_pairs)
from ctxdiff_from_scratch.config import AdapterConfig, ContextConfig, UNetConfig
from ctxdiff_from_scratch.data import GlyphWorld, ShapesWorld
from ctxdiff_from_scratch.data.edges import QUERY_CANNY, canny
from ctxdiff_from_scratch.data.shapes import TASKS
from ctxdiff_from_scratch.model import Conditions, FrozenParts, ModelConfig
from ctxdiff_from_scratch.unet import UNet

SIZE, FACTOR = 32, 4  # 32x32 images and maps for 8x8 latents
MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Move every weight off its initialisation (zero convs included), so that no path is silently zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return module


def inputs(batch: int = 3, k: int = 2, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(x_t=torch.randn(batch, 4, 8, 8, generator=g), t=torch.randint(0, 1000, (batch,), generator=g),
                query=torch.rand(batch, 3, SIZE, SIZE, generator=g),
                text=torch.randn(batch, 5, 32, generator=g), text_mask=torch.ones(batch, 5, dtype=torch.bool),
                sources=torch.rand(batch, k, 3, SIZE, SIZE, generator=g),
                targets=torch.rand(batch, k, 3, SIZE, SIZE, generator=g), mask=torch.ones(batch, k, dtype=torch.bool))


def tiny_config() -> ModelConfig:
    return ModelConfig(world="shapes", image_size=SIZE, unet=UNetConfig.profile("tiny"),
                       context=ContextConfig(visual_dim=32, context_dim=32),
                       adapter=AdapterConfig(downsample_factor=FACTOR))


def pair_conditions(x: dict, **overrides) -> PairConditions:
    values = dict(text_tokens=x["text"], text_mask=x["text_mask"], image_tokens=None, context_mask=None,
                  query=x["query"], pair_sources=x["sources"], pair_targets=x["targets"], pair_mask=x["mask"])
    return PairConditions(**{**values, **overrides})


def adapter_and_unet(seed: int = 0) -> tuple[UNet, PairAdapter]:
    torch.manual_seed(seed)
    unet = randomise(UNet(UNetConfig.profile("tiny")), seed, scale=0.01)
    return unet, PairAdapter.from_unet(unet, AdapterConfig(downsample_factor=FACTOR))


def controlled(unet, adapter, x: dict, sources=None, targets=None, mask=None):
    down, mid = adapter(x["x_t"], x["t"], x["query"], x["text"], x["text_mask"],
                        x["sources"] if sources is None else sources, x["targets"] if targets is None else targets,
                        x["mask"] if mask is None else mask)
    return unet(x["x_t"], x["t"], x["text"], x["text_mask"], down_residuals=down, mid_residual=mid)


# --- the model -------------------------------------------------------------------------------------------------------
def test_shapesworld_episodes_go_through_the_whole_model_and_survive_a_save(tmp_path):
    world = ShapesWorld("train", size=SIZE)
    texts = [world.styled_image(seed)[1] for seed in range(20)]
    parts = FrozenParts.untrained(image_size=SIZE, prompts=texts)
    config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder, unet_profile="tiny",
                                    adapter=True)
    model = PairDiffusionModel(config, parts)
    randomise(model.denoiser)
    batch, sources = episode_pairs(world, range(3), "seg2img", k=2)
    assert sources.shape == batch.context.shape == (3, 2, 3, SIZE, SIZE)
    cond = model.encode_pair_conditions(batch.query, sources, batch.context, prompts=batch.prompts)
    assert isinstance(cond, PairConditions) and cond.image_tokens is None and cond.text_tokens is not None
    z_t, t = torch.randn(3, *model.latent_shape), torch.tensor([10, 500, 999])
    out = model.predict(z_t, t, cond)
    assert out.shape == (3, *model.latent_shape) and torch.isfinite(out).all()
    # .repeat and .to keep the class and the pairs (guidance stacks copies of the conditions)
    twice = cond.repeat(2).to("cpu")
    assert isinstance(twice, PairConditions) and twice.pair_sources.shape == (6, 2, 3, SIZE, SIZE)
    assert torch.allclose(model.predict(torch.cat([z_t] * 2), torch.cat([t] * 2), twice)[3:], out, atol=1e-5)
    loaded = PairDiffusionModel.from_pretrained(model.save_pretrained(tmp_path / "baseline"))
    assert isinstance(loaded.denoiser, PairDenoiser) and torch.equal(loaded.predict(z_t, t, cond), out)


def test_at_initialisation_the_baseline_adds_exactly_nothing_for_any_query_and_pairs():
    unet, adapter = adapter_and_unet()
    x = inputs()
    base = unet(x["x_t"], x["t"], x["text"], x["text_mask"])
    for seed in range(3):
        other = inputs(seed=10 + seed)
        assert torch.equal(controlled(unet, adapter, {**x, "query": other["query"]}, other["sources"],
                                      other["targets"]), base)
    assert torch.all(adapter.pair_features(x["sources"], x["targets"], x["mask"]) == 0)


def test_the_pairs_change_the_output_once_training_has_opened_their_zero_convs():
    unet, adapter = adapter_and_unet()
    x, other = inputs(), inputs(seed=7)
    target = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.5)
    pair_head = adapter.hint.pair_encoder.net[-1]  # the pair encoder's zero conv

    def step():
        optimizer.zero_grad()
        (controlled(unet, adapter, x) - target).pow(2).mean().backward()
        optimizer.step()

    step()
    # After one step only the output zero convs moved: everything behind a zero weight got no gradient, so the pair
    # encoder still outputs zeros and the pairs cannot matter yet (as for the query's hint encoder).
    assert torch.all(pair_head.weight == 0)
    assert torch.equal(controlled(unet, adapter, x), controlled(unet, adapter, x, other["sources"], other["targets"]))
    step()
    # The second step reaches the pair encoder's zero conv: from now on the pairs steer the output (a little, as
    # every path that starts at zero: the effect grows with training, like ControlNet's)
    assert pair_head.weight.grad.abs().sum() > 0 and pair_head.weight.abs().sum() > 0
    with torch.no_grad():
        assert adapter.pair_features(x["sources"], x["targets"], x["mask"]).abs().sum() > 0
        assert not torch.equal(controlled(unet, adapter, x),
                               controlled(unet, adapter, x, other["sources"], other["targets"]))


def test_cross_attention_sees_the_prompt_only_and_the_context_enters_through_the_pairs():
    torch.manual_seed(0)
    denoiser = randomise(PairDenoiser(tiny_config())).eval()
    x = inputs()
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(args[2]))
             for m in (denoiser.unet, denoiser.adapter.encoder)]  # UNet(x, t, tokens, ...), UNetEncoder(x, t, tokens)
    cond = pair_conditions(x)
    out = denoiser(x["x_t"], x["t"], cond)
    for hook in hooks:
        hook.remove()
    text_only, _ = denoiser.conditioner(x["text"], x["text_mask"], batch_size=3)  # [null ; h^c]: (B, 1 + N_c, D_c)
    assert len(seen) == 2 and all(torch.equal(tokens, text_only) for tokens in seen)
    # visual tokens in the conditions cannot reach the UNet ...
    visual = torch.randn(3, 2, 16, 32)
    assert torch.equal(denoiser(x["x_t"], x["t"], pair_conditions(x, image_tokens=visual,
                                                                  context_mask=x["mask"])), out)
    # ... the pairs do, and dropping the context drops them: the same as no pair at all
    other = inputs(seed=5)
    assert not torch.allclose(denoiser(x["x_t"], x["t"], pair_conditions(x, pair_targets=other["targets"])), out)
    dropped = denoiser(x["x_t"], x["t"], cond, drop_context=torch.ones(3, dtype=torch.bool))
    no_pairs = pair_conditions(x, pair_sources=x["sources"][:, :0], pair_targets=x["targets"][:, :0],
                               pair_mask=x["mask"][:, :0])
    assert torch.equal(dropped, denoiser(x["x_t"], x["t"], no_pairs))
    assert torch.equal(dropped, denoiser(x["x_t"], x["t"], pair_conditions(x, pair_mask=~x["mask"])))
    assert not denoiser.conditioner.visual_proj.weight.requires_grad


def test_k_pairs_combine_by_a_mean_that_ignores_their_order_and_padding():
    unet, adapter = adapter_and_unet()
    randomise(adapter, seed=3)
    x = inputs(k=3)
    args = (x["sources"], x["targets"], x["mask"])
    features = adapter.pair_features(*args)
    order = torch.tensor([2, 0, 1])
    assert torch.allclose(adapter.pair_features(x["sources"][:, order], x["targets"][:, order], x["mask"]), features,
                          atol=1e-6)
    assert torch.allclose(controlled(unet, adapter, x, x["sources"][:, order], x["targets"][:, order]),
                          controlled(unet, adapter, x), atol=1e-5)
    # a mean, not a sum: the same pair twice gives the features of that pair once
    once = adapter.pair_features(x["sources"][:, :1], x["targets"][:, :1], x["mask"][:, :1])
    twice = adapter.pair_features(x["sources"][:, [0, 0]], x["targets"][:, [0, 0]], x["mask"][:, :2])
    assert torch.allclose(once, twice, atol=1e-6) and once.abs().sum() > 0
    # a padded slot (mask False) counts for nothing, whatever it holds
    padded_sources, mask = x["sources"].clone(), x["mask"].clone()
    padded_sources[:, 2], mask[:, 2] = float("nan"), False
    assert torch.allclose(adapter.pair_features(padded_sources, x["targets"], mask),
                          adapter.pair_features(x["sources"][:, :2], x["targets"][:, :2], x["mask"][:, :2]), atol=1e-6)


def test_bad_inputs_are_explained():
    x = inputs()
    with pytest.raises(ValueError, match="AdapterConfig"):
        PairDenoiser(ModelConfig(image_size=SIZE, unet=UNetConfig.profile("tiny"),
                                 context=ContextConfig(visual_dim=32, context_dim=32)))
    denoiser = PairDenoiser(tiny_config())
    with pytest.raises(TypeError, match="PairConditions"):
        denoiser(x["x_t"], x["t"], Conditions(x["text"], x["text_mask"], None, None, x["query"]))
    with pytest.raises(ValueError, match="same shape"):
        denoiser(x["x_t"], x["t"], pair_conditions(x, pair_targets=x["targets"][:, :1]))
    with pytest.raises(ValueError, match="pair_sources must be"):
        denoiser(x["x_t"], x["t"], pair_conditions(x, pair_sources=x["sources"][..., :16, :16]))
    with pytest.raises(ValueError, match="pair_mask must be"):
        PairConditions.from_conditions(Conditions(None, None, None, None, x["query"]), x["sources"], x["targets"],
                                       x["mask"][:, :1])


# --- the worlds' pair sources ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_context_sources_are_made_as_the_episodes_query_is(task):
    world = ShapesWorld("train", size=SIZE)
    spec, episode = world.episode_spec(4, task, 2), world.episode(4, task, 2)
    sources = world.context_sources(4, task, 2)
    assert sources.shape == episode.context.shape == (2, 3, SIZE, SIZE) and sources.dtype == torch.float32
    # the query is the target layout's source view; each source is a context layout's source view, made alike
    assert torch.equal(episode.query, world.render_maps(spec.target_layout, spec.style)[spec.source])
    for source, context, layout in zip(sources, episode.context, spec.context_layouts):
        views = world.render_maps(layout, spec.style)
        assert torch.equal(source, views[spec.source]) and torch.equal(context, views[spec.target_kind])
    assert world.context_sources(4, task, 0).shape == (0, 3, SIZE, SIZE)


def test_context_sources_of_seg2img_and_canny2img():
    world = ShapesWorld("test", size=SIZE)
    spec, sources = world.episode_spec(1, "seg2img", 3), world.context_sources(1, "seg2img", 3)
    assert all(torch.equal(s, world.render_maps(layout)["seg"]) for s, layout in zip(sources, spec.context_layouts))
    episode, sources = world.episode(2, "canny2img", 2), world.context_sources(2, "canny2img", 2)
    for source, context in zip(sources, episode.context):  # the Canny edges of the styled context image
        assert torch.equal(source[0] > 0, torch.from_numpy(canny(context.permute(1, 2, 0).numpy(), **QUERY_CANNY)))


def test_glyph_pairs_are_the_context_characters_in_the_reference_and_the_target_font():
    world = GlyphWorld(fonts=MPL_FONTS, size=SIZE, progress=False)
    for seed in range(4):
        font, query, chars = world.episode_characters(seed, k=3)
        episode, sources = world.episode(seed, k=3), world.context_sources(seed, k=3)
        assert len(chars) == 3 and query not in chars
        assert torch.equal(episode.query, world.render_reference(query))
        assert torch.equal(episode.target, world.render(font, query))
        for j, char in enumerate(chars):
            assert torch.equal(sources[j], world.render_reference(char))
            assert torch.equal(episode.context[j], world.render(font, char))
    batch, sources = episode_pairs(world, range(2), None, 4)
    assert sources.shape == batch.context.shape == (2, 4, 3, SIZE, SIZE)
    assert world.episode_characters(0, k=5)[2].startswith(world.episode_characters(0, k=3)[2])


# --- training the baseline with the project's trainer ----------------------------------------------------------------
def test_the_trainer_trains_the_baseline_on_pooled_pairs_and_guidance_sees_them(tmp_path):
    from ctxdiff_from_scratch.episode_cache import EpisodePool, pool_key
    from ctxdiff_from_scratch.guidance import has_context
    from ctxdiff_from_scratch.model import save_frozen_parts
    from ctxdiff_from_scratch.train import TrainConfig, build_model, main

    world = ShapesWorld("train", size=SIZE)
    parts = tmp_path / "parts"
    save_frozen_parts(FrozenParts.untrained(SIZE, [world.styled_image(s)[1] for s in range(60)]), parts)
    cache = tmp_path / "pool.safetensors"
    main(["--profile", "tiny", "--parts", str(parts), "--out", str(tmp_path / "pd"), "--steps", "3", "--joint",
          "--baseline", "prompt-diffusion", "--pool-cache", str(cache), "--fresh-per-step", "1"])
    model = PairDiffusionModel.from_pretrained(tmp_path / "pd")
    assert isinstance(model.adapter, PairAdapter) and model.reads_pairs
    untrained = build_model(TrainConfig.from_profile("tiny", parts=str(parts), joint=True, baseline="prompt-diffusion"))
    assert not torch.equal(model.adapter.hint.pair_encoder.net[0].weight,
                           untrained.adapter.hint.pair_encoder.net[0].weight)  # the pairs' encoder trained
    # the pool holds each context image and its source; a batch of it is PairConditions
    pool = EpisodePool.load(cache, pool_key(model, world, 24, (1, 2, 3)))
    group = pool.groups[2]
    assert group.pair_sources.dtype == torch.uint8 and group.pair_sources.shape == (len(group), 2, 3, SIZE, SIZE)
    assert group.image_tokens.shape[1:3] == (2, 0)  # the baseline reads no visual tokens, so none are computed
    first = 1  # group j (here k = j + 1) starts at seed j
    assert torch.equal(group.pair_sources[0], (world.context_sources(first, k=2) * 255).round().to(torch.uint8))
    assert torch.equal(group.pair_targets[0], (world.episode(first, k=2).context * 255).round().to(torch.uint8))
    _, cond = group.batch(torch.tensor([0, 1]), "cpu")
    assert isinstance(cond, PairConditions) and cond.image_tokens is None and has_context(cond)  # pairs only
    assert not has_context(dataclasses.replace(cond, pair_mask=torch.zeros_like(cond.pair_mask)))
    with pytest.raises(ValueError, match="needs --joint|add --joint"):
        TrainConfig.from_profile("tiny", baseline="prompt-diffusion")
    with pytest.raises(ValueError, match="drop --tokenizer"):
        TrainConfig.from_profile("tiny", joint=True, baseline="prompt-diffusion", tokenizer="latents")
    # the saved baseline loads as itself through the pipeline, and the evaluation hands it the context's sources
    from ctxdiff_from_scratch.evaluate import EvalConfig, evaluate_shapes
    from ctxdiff_from_scratch.pipeline import ContextDiffusionPipeline

    pipe = ContextDiffusionPipeline.from_pretrained(tmp_path / "pd")
    assert isinstance(pipe.model, PairDiffusionModel) and pipe.model.config.baseline == "prompt-diffusion"
    config = EvalConfig(episodes=2, steps=2, batch_size=2, settings=("C", "none"), split="train", progress=False)
    results = evaluate_shapes(pipe, config, tasks=["seg2img"], world=world)
    assert 0 < results["rmse"]["seg2img"]["C"] < 1 and results["rmse"]["seg2img"]["C"] != \
        results["rmse"]["seg2img"]["none"]  # the pairs reach the output
    episode = world.episode(5, task="seg2img", k=2)
    sources = world.context_sources(5, task="seg2img", k=2)
    image = pipe(episode.query, episode.context, context_sources=sources, num_inference_steps=2, progress=False)
    assert image.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="reads example pairs: pass context_sources"):
        pipe(episode.query, episode.context, num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match="must match the context"):
        pipe(episode.query, episode.context, context_sources=sources[:1], num_inference_steps=2, progress=False)


def test_context_diffusion_refuses_pair_sources():
    world = ShapesWorld("train", size=SIZE)
    parts = FrozenParts.untrained(SIZE, [world.styled_image(s)[1] for s in range(60)])
    from ctxdiff_from_scratch.model import ContextDiffusionModel

    model = ContextDiffusionModel(ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder,
                                                         unet_profile="tiny"), parts)
    episode = world.episode(0, k=1)
    with pytest.raises(ValueError, match="Context Diffusion reads the context images alone"):
        model.encode_conditions(episode.query[None], episode.context[None],
                                context_sources=world.context_sources(0, k=1)[None])
