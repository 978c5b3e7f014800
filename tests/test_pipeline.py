"""ContextDiffusionPipeline on a tiny untrained model: outputs, determinism, every accepted input form, bad inputs."""
import json
import warnings

import pytest
import torch
from PIL import Image

from ctxdiff_from_scratch.data import ShapesWorld
from ctxdiff_from_scratch.images import BadImageError, load_image_as_tensor
from ctxdiff_from_scratch.pipeline import ContextDiffusionPipeline, PipelineOutput
from ctxdiff_from_scratch.plotting import to_numpy_image
from tiny_model import SIZE, tiny_model

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return ContextDiffusionPipeline(tiny_model())


@pytest.fixture(scope="module")
def episodes():
    world = ShapesWorld("test", size=SIZE)
    return [world.episode(seed, task="edge2img", k=2) for seed in range(2)]


def run(pipe, **kwargs):
    return pipe(num_inference_steps=STEPS, progress=False, **kwargs)


def save_png(image: torch.Tensor, path) -> str:
    Image.fromarray((to_numpy_image(image) * 255).round().astype("uint8")).save(path)
    return str(path)


def test_output_shape_range_and_type(pipe, episodes):
    ep = episodes[0]
    single = run(pipe, query=ep.query, context=ep.context, prompt=ep.prompt)
    assert single.shape == (1, 3, SIZE, SIZE) and single.dtype == torch.float32
    assert single.min() >= 0 and single.max() <= 1 and single.device.type == "cpu"
    batch = run(pipe, query=torch.stack([e.query for e in episodes]),
                context=torch.stack([e.context for e in episodes]), prompt=[e.prompt for e in episodes])
    assert batch.shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_same_seed_same_images_other_seed_other_images(pipe, episodes, sampler, eta):
    ep = episodes[0]
    kwargs = dict(query=ep.query, context=ep.context, prompt=ep.prompt, sampler=sampler, eta=eta)
    first, again, other = run(pipe, seed=0, **kwargs), run(pipe, seed=0, **kwargs), run(pipe, seed=1, **kwargs)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_seed_none_draws_fresh_noise_without_touching_the_global_rng(pipe, episodes):
    state = torch.get_rng_state()
    first, second = run(pipe, query=episodes[0].query, seed=None), run(pipe, query=episodes[0].query, seed=None)
    assert (first - second).abs().max() > 1e-3 and torch.equal(torch.get_rng_state(), state)


def test_a_shared_context_is_the_same_as_one_per_sample(pipe, episodes):
    queries = torch.stack([e.query for e in episodes])
    shared = run(pipe, query=queries, context=episodes[0].context)
    per_sample = run(pipe, query=queries, context=episodes[0].context.expand(2, -1, -1, -1, -1))
    as_list = run(pipe, query=queries, context=list(episodes[0].context))
    assert torch.equal(shared, per_sample) and torch.equal(shared, as_list)


def test_per_sample_contexts_of_different_k_are_padded(pipe, episodes):
    queries = torch.stack([e.query for e in episodes])
    mixed = run(pipe, query=queries, context=[episodes[0].context, episodes[1].context[:1]])
    # sample 0 of the mixed batch is sample 0 of a batch where both have two context images: padding changes nothing
    full = run(pipe, query=queries, context=[episodes[0].context, episodes[1].context])
    assert mixed.shape == (2, 3, SIZE, SIZE)
    assert torch.allclose(mixed[0], full[0], atol=1e-5) and (mixed[1] - full[1]).abs().max() > 1e-4
    # a sample with k = 0 in a batch with context is generated as without context
    one_empty = run(pipe, query=queries, context=[episodes[0].context, []])
    assert torch.allclose(one_empty[1], run(pipe, query=queries)[1], atol=1e-5)


def test_k_zero_means_no_context(pipe, episodes):
    ep = episodes[0]
    outputs = [run(pipe, query=ep.query, context=c) for c in (None, [], torch.zeros(0, 3, SIZE, SIZE))]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    with_context = run(pipe, query=ep.query, context=ep.context)
    assert (with_context - outputs[0]).abs().max() > 1e-3


def test_prompt_none_empty_and_lists(pipe, episodes):
    ep = episodes[0]
    none, empty = run(pipe, query=ep.query, prompt=None), run(pipe, query=ep.query, prompt="")
    empty_list = run(pipe, query=ep.query, prompt=[""])
    assert torch.equal(none, empty) and torch.equal(none, empty_list)
    prompted = run(pipe, query=ep.query, prompt=ep.prompt)
    assert (prompted - none).abs().max() > 1e-3
    assert torch.equal(prompted, run(pipe, query=ep.query, prompt=[ep.prompt]))
    # a batch where only one sample has a prompt
    mixed = run(pipe, query=torch.stack([e.query for e in episodes]), prompt=[ep.prompt, ""])
    assert mixed.shape == (2, 3, SIZE, SIZE)


def test_paths_and_pil_images_are_accepted(pipe, episodes, tmp_path):
    ep = episodes[0]
    query_path = save_png(ep.query, tmp_path / "query.png")
    context_paths = [save_png(c, tmp_path / f"context{i}.png") for i, c in enumerate(ep.context)]
    from_paths = run(pipe, query=query_path, context=context_paths)
    from_pil = run(pipe, query=Image.open(query_path), context=[Image.open(p) for p in context_paths])
    from_tensors = run(pipe, query=load_image_as_tensor(query_path, SIZE),
                       context=torch.stack([load_image_as_tensor(p, SIZE) for p in context_paths]))
    assert torch.equal(from_paths, from_tensors) and torch.equal(from_pil, from_tensors)
    # one path as the whole context is k = 1; a list of query paths is a batch
    assert run(pipe, query=[query_path, query_path], context=context_paths[0]).shape == (2, 3, SIZE, SIZE)


def test_wrong_sizes_are_resized_with_a_warning(pipe, episodes):
    ep = episodes[0]
    big_query = torch.nn.functional.interpolate(ep.query[None], scale_factor=2)[0]  # (3, 64, 64)
    with pytest.warns(UserWarning, match=r"query is 64x64 but this model works at 32x32"):
        out = run(pipe, query=big_query, context=ep.context)
    assert out.shape == (1, 3, SIZE, SIZE)
    with pytest.warns(UserWarning, match=r"context is 32x48 .*centre-cropped"):
        out = run(pipe, query=ep.query, context=torch.rand(2, 3, SIZE, 48))
    assert out.shape == (1, 3, SIZE, SIZE)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(query=torch.rand(SIZE, SIZE)), ValueError, r"query must be \(3, H, W\) or \(B, 3, H, W\)"),
    (dict(query=torch.rand(1, 1, 3, SIZE, SIZE)), ValueError, r"query must be"),
    (dict(query=torch.rand(4, SIZE, SIZE)), ValueError, r"query has 4 channels"),
    (dict(query=torch.full((3, SIZE, SIZE), float("nan"))), ValueError, r"query contains NaN"),
    (dict(query=torch.rand(3, SIZE, SIZE) * 2 - 1), ValueError, r"query holds values in .*\(x \+ 1\) / 2"),
    (dict(query=torch.randint(0, 255, (3, SIZE, SIZE), dtype=torch.uint8)), ValueError, r"query has dtype"),
    (dict(query=torch.rand(0, 3, SIZE, SIZE)), ValueError, r"query holds 0 images"),
    (dict(query=[]), ValueError, r"query is an empty list"),
    (dict(query=3), TypeError, r"query must be a tensor, a PIL image or a file path"),
    (dict(query=torch.rand(3, SIZE, SIZE), context=torch.rand(3, SIZE, SIZE)), ValueError,
     r"context must be \(k, 3, H, W\).*unsqueeze\(0\)"),
    (dict(query=torch.rand(3, SIZE, SIZE), context=torch.rand(1, 1, 2, 3, SIZE, SIZE)), ValueError,
     r"context must be \(k, 3, H, W\)"),
    (dict(query=torch.rand(3, SIZE, SIZE), context=torch.full((2, 3, SIZE, SIZE), float("inf"))), ValueError,
     r"context contains NaN or infinite"),
    (dict(query=torch.rand(2, 3, SIZE, SIZE), context=torch.rand(3, 2, 3, SIZE, SIZE)), ValueError,
     r"context holds 3 samples .* query holds 2"),
    (dict(query=torch.rand(2, 3, SIZE, SIZE), context=[torch.rand(2, 3, SIZE, SIZE)] * 3), ValueError,
     r"list of 3 per-sample contexts but query holds 2"),
    (dict(query=torch.rand(2, 3, SIZE, SIZE), prompt=["a", "b", "c"]), ValueError,
     r"prompt is a list of 3 strings but query holds 2"),
    (dict(query=torch.rand(3, SIZE, SIZE), prompt=7), TypeError, r"prompt must be None, a string or a list"),
    (dict(query=torch.rand(3, SIZE, SIZE), num_inference_steps=0), ValueError, r"num_inference_steps"),
    (dict(query=torch.rand(3, SIZE, SIZE), guidance_scale_context=float("nan")), ValueError,
     r"guidance_scale_context must be a finite number"),
    (dict(query=torch.rand(3, SIZE, SIZE), sampler="euler"), ValueError, r"sampler must be one of"),
    (dict(query=torch.rand(3, SIZE, SIZE), sampler="ddpm", eta=0.5), ValueError, r"eta=0.5 only applies to DDIM"),
])
def test_bad_inputs_raise_clear_errors(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(progress=False, **{"num_inference_steps": STEPS, **kwargs})


def test_missing_and_unreadable_files_name_the_argument(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"query: no image at .*missing\.png"):
        run(pipe, query=str(tmp_path / "missing.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    good = save_png(torch.rand(3, SIZE, SIZE), tmp_path / "good.png")
    with pytest.raises(BadImageError, match=r"context\[1\]: .*broken\.png could not be read"):
        run(pipe, query=good, context=[good, str(broken)])


def test_trajectory_holds_every_steps_prediction(pipe, episodes):
    ep = episodes[0]
    out = run(pipe, query=ep.query, context=ep.context, return_trajectory=True)
    assert isinstance(out, PipelineOutput)
    assert out.trajectory.shape == (STEPS, 1, 3, SIZE, SIZE) and out.timesteps.shape == (STEPS,)
    assert torch.equal(out.images, run(pipe, query=ep.query, context=ep.context))
    # DDIM (eta = 0) ends on its last x0 prediction, so the last frame is the output
    assert torch.allclose(out.trajectory[-1], out.images, atol=1e-5)
    assert (out.trajectory[0] - out.trajectory[-1]).abs().max() > 1e-3


def test_a_model_without_text_encoder_ignores_prompts_with_a_warning(episodes):
    pipe = ContextDiffusionPipeline(tiny_model(prompts=False))
    ep = episodes[0]
    with pytest.warns(UserWarning, match="no text encoder"):
        prompted = run(pipe, query=ep.query, context=ep.context, prompt="a red circle")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(prompted, run(pipe, query=ep.query, context=ep.context))


def test_from_pretrained_round_trip(pipe, episodes, tmp_path):
    pipe.model.save_pretrained(tmp_path / "model")
    loaded = ContextDiffusionPipeline.from_pretrained(tmp_path / "model")
    ep = episodes[0]
    kwargs = dict(query=ep.query, context=ep.context, prompt=ep.prompt)
    assert torch.equal(run(loaded, **kwargs), run(pipe, **kwargs))
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        ContextDiffusionPipeline.from_pretrained(tmp_path / "nowhere")


def test_guidance_defaults_come_from_the_checkpoints_sampling_json(pipe, episodes, tmp_path):
    folder = tmp_path / "model"
    pipe.model.save_pretrained(folder)
    ep = episodes[0]
    kwargs = dict(query=ep.query, context=ep.context, prompt=ep.prompt)
    without_file = ContextDiffusionPipeline.from_pretrained(folder)
    assert without_file.guidance_defaults == {"guidance_scale_context": 3.0, "guidance_scale_prompt": 3.0}
    (folder / "sampling.json").write_text(json.dumps({"guidance_scale_context": 1.5, "chosen_by": {}}))
    tuned = ContextDiffusionPipeline.from_pretrained(folder)
    assert tuned.guidance_defaults == {"guidance_scale_context": 1.5, "guidance_scale_prompt": 3.0}
    assert tuned.resolve_guidance() == (1.5, 3.0) and tuned.resolve_guidance(4, None) == (4.0, 3.0)
    # None means the default; an explicit scale overrides it; the scale changes the images
    by_default = run(tuned, **kwargs)
    assert torch.equal(by_default, run(tuned, guidance_scale_context=1.5, **kwargs))
    assert torch.equal(run(tuned, guidance_scale_context=3.0, **kwargs), run(without_file, **kwargs))
    assert (by_default - run(without_file, **kwargs)).abs().max() > 1e-3


@pytest.mark.parametrize("text, match", [("{not json", "not valid JSON"), ("[2.0]", "must hold a JSON object"),
                                         ('{"guidance_scale_context": "two"}', "must be a finite number"),
                                         ('{"guidance_scale_prompt": NaN}', "must be a finite number")])
def test_a_bad_sampling_json_is_a_clear_error(pipe, tmp_path, text, match):
    pipe.model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "sampling.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        ContextDiffusionPipeline.from_pretrained(tmp_path / "model")


def test_constructor_checks_guidance_defaults():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown guidance default"):
        ContextDiffusionPipeline(model, guidance_defaults={"guidance_scale": 2.0})
    with pytest.raises(ValueError, match="must be a finite number"):
        ContextDiffusionPipeline(model, guidance_defaults={"guidance_scale_context": float("inf")})


def test_top_level_import():
    from ctxdiff_from_scratch import ContextDiffusionPipeline as exported

    assert exported is ContextDiffusionPipeline
