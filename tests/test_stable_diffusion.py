"""The Stable Diffusion track on tiny random parts (no weights can be downloaded here): loading, the embeddings
[h^c ; h^V] and their stand-ins, sum / mean / concat, the C / P / C+P settings, dual guidance against diffusers' own
pipeline, a training step, save/load, the training command, preprocessing against CLIPImageProcessorPil, and errors.
"""
import copy
import dataclasses
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ctxdiff_from_scratch.__main__ import main as cli
from ctxdiff_from_scratch.data import ShapesWorld
from ctxdiff_from_scratch.images import BadImageError, load_image_as_tensor
from ctxdiff_from_scratch.runlog import read_log
from ctxdiff_from_scratch.stable_diffusion import ContextDiffusion, TrainingBatch, build_tiny_parts
from ctxdiff_from_scratch.stable_diffusion.preprocessing import CLIP_MEAN, CLIP_STD, clip_normalize, context_pixels
from ctxdiff_from_scratch.stable_diffusion.tiny import write_tiny_tokenizer
from ctxdiff_from_scratch.stable_diffusion.train import main as sd_train

SIZE, STEPS = 64, 2  # the tiny parts' image side; DDIM steps in the sampling tests
# the 64 px context tensors of ShapesWorld meet a 32 px vision tower: resizing them is expected here
pytestmark = pytest.mark.filterwarnings("ignore:context is 64x64 but this model works at 32x32:UserWarning")


def wake_controlnet(model: ContextDiffusion, seed: int = 0) -> ContextDiffusion:
    """Randomise the ControlNet's zero-initialised layers, which would otherwise make the query irrelevant."""
    generator = torch.Generator().manual_seed(seed)
    net = model.controlnet
    with torch.no_grad():
        for module in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            for parameter in module.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return build_tiny_parts(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def base(parts):
    """The tiny model as loaded: the ControlNet is a fresh copy of the UNet's encoder, its zero convs at zero."""
    torch.manual_seed(0)  # the new projection's initialisation
    return ContextDiffusion.from_pretrained_parts(parts["clip"], parts["stable_diffusion"])


@pytest.fixture(scope="module")
def model(base):
    return wake_controlnet(copy.deepcopy(base))


@pytest.fixture(scope="module")
def images():
    """Query, two different contexts of k = 3 and one target, from ShapesWorld (64 px)."""
    world = ShapesWorld("train", size=SIZE)
    first, second = world.episode(0, task="edge2img", k=3), world.episode(1, task="edge2img", k=3)
    return {"query": first.query, "context": first.context, "other_context": second.context,
            "target": first.target}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    world = ShapesWorld("train", size=SIZE)
    for i in range(8):
        array = (world.episode(10 + i, task="edge2img", k=1).target.permute(1, 2, 0).numpy() * 255).round()
        Image.fromarray(array.astype(np.uint8)).save(folder / f"image_{i}.png")
    return folder


def with_combine(model: ContextDiffusion, mode: str) -> ContextDiffusion:
    variant = copy.copy(model)  # shares every part; only the config differs
    variant.config = dataclasses.replace(model.config, combine=mode)
    return variant


def sample(model, query, context=None, prompt=None, **kwargs):
    return model.generate(query, context, prompt, num_inference_steps=STEPS, progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Loading, offline
# ---------------------------------------------------------------------------------------------------------------------
def test_the_tiny_folders_load_with_no_network_like_real_ids(parts, monkeypatch):
    attempts = []

    def refuse(sock, address):
        attempts.append(address)  # recorded, in case a library catches the error and falls back quietly
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = ContextDiffusion.from_pretrained_parts(parts["clip"], parts["stable_diffusion"],
                                                   controlnet=parts["controlnet"])
    assert attempts == []
    assert model.tokenizer.model_max_length == 77
    assert (model.resolution, model.vae_factor, model.vision_size, model.visual_tokens) == (SIZE, 2, 32, 65)
    assert model.visual_projection.in_features == 48 and model.visual_projection.out_features == 32
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"controlnet", "visual_projection"}


def test_a_tokenizer_folder_of_vocab_and_merges_needs_model_max_length(tmp_path, base):
    from transformers import CLIPTokenizer

    write_tiny_tokenizer(tmp_path)
    assert CLIPTokenizer.from_pretrained(tmp_path, model_max_length=77)("a cat", padding="max_length").input_ids[:4] \
        == [0, 3, 6, 2]  # <start>, "a</w>", "c", "a" ...
    unbounded = CLIPTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_max_length=77"):
        ContextDiffusion(base.config, unbounded, base.clip, base.vae, base.unet, base.controlnet, base.scheduler)


# ---------------------------------------------------------------------------------------------------------------------
# [h^c ; h^V]
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, visual_positions", [("sum", 65), ("mean", 65), ("concat", 3 * 65)])
def test_embeddings_are_text_then_visual_positions_for_each_combine_mode(model, images, mode, visual_positions):
    embeds, negative = with_combine(model, mode).prompt_embeds(images["context"], "a red cat", batch=2)
    assert embeds.shape == negative.shape == (2, 77 + visual_positions, 32)  # longer than CLIP's 77


def test_sum_mean_and_concat_combine_the_k_images_hidden_states(model, images):
    pixels = clip_normalize(torch.nn.functional.interpolate(images["context"], size=32, mode="bilinear",
                                                            antialias=True))[None]  # (1, 3, 3, 32, 32)
    bias = model.visual_projection.bias
    with torch.no_grad():
        total = with_combine(model, "sum").encode_context(pixels) - bias  # W_p sum_i H_i
        mean = with_combine(model, "mean").encode_context(pixels) - bias  # W_p mean_i H_i
        concat = with_combine(model, "concat").encode_context(pixels)
        alone = [model.encode_context(pixels[:, i:i + 1]) for i in range(3)]  # each image by itself
        reversed_sum = with_combine(model, "sum").encode_context(pixels.flip(1)) - bias
    torch.testing.assert_close(total, 3 * mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(total, sum(a - bias for a in alone), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(concat, torch.cat(alone, dim=1))  # (1, 3 * 65, 32): the images side by side
    torch.testing.assert_close(reversed_sum, total, rtol=1e-4, atol=1e-5)  # the sum ignores the order


def test_the_context_images_change_the_embeddings_and_the_images(model, images):
    query = images["query"]
    first, _ = model.prompt_embeds(images["context"])
    second, _ = model.prompt_embeds(images["other_context"])
    one_swapped, _ = model.prompt_embeds(torch.cat([images["other_context"][:1], images["context"][1:]]))
    assert torch.equal(first[:, :77], second[:, :77])  # the same (empty) prompt
    assert (first[:, 77:] - second[:, 77:]).abs().max() > 1e-2
    assert (first[:, 77:] - one_swapped[:, 77:]).abs().max() > 1e-3  # each of the k images counts
    out_first, out_second = sample(model, query, images["context"]), sample(model, query, images["other_context"])
    assert (out_first - out_second).abs().max() > 1e-3


def test_c_p_and_c_plus_p_use_the_stand_ins_of_the_absent_condition(model, images):
    c = model.conditions(images["context"], None)
    p = model.conditions(None, "a red cat")
    cp = model.conditions(images["context"], "a red cat")
    assert (c.has_context, c.has_prompt, p.has_context, p.has_prompt) == (True, False, False, True)
    assert torch.equal(c.text, c.null_text) and torch.equal(c.null_text, model.encode_prompt([""]))
    bias = model.visual_projection.bias.detach().expand(1, 65, -1)
    torch.testing.assert_close(p.visual, bias)  # no context: h^V = W_p 0 + b_p
    torch.testing.assert_close(cp.null_visual, bias)
    assert torch.equal(cp.embeddings(True, False), c.embeddings(True, True))
    assert torch.equal(cp.embeddings(False, True), p.embeddings(True, True))
    outputs = {"C": sample(model, images["query"], images["context"]),
               "P": sample(model, images["query"], None, "a red cat"),
               "C+P": sample(model, images["query"], images["context"], "a red cat")}
    for a, b in (("C", "P"), ("C", "C+P"), ("P", "C+P")):
        assert (outputs[a] - outputs[b]).abs().max() > 1e-3, (a, b)


# ---------------------------------------------------------------------------------------------------------------------
# Generation and guidance
# ---------------------------------------------------------------------------------------------------------------------
def test_generation_gives_seeded_images_that_follow_the_query(model, base, images):
    batch = torch.stack([images["query"], images["target"]])
    out = sample(model, batch, images["context"], ["a red cat", "a blue dog"], seed=3)
    assert out.shape == (2, 3, SIZE, SIZE) and out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(out, sample(model, batch, images["context"], ["a red cat", "a blue dog"], seed=3))
    assert (out - sample(model, batch, images["context"], ["a red cat", "a blue dog"], seed=4)).abs().max() > 1e-3
    other_query = sample(model, images["target"], images["context"], "a red cat", seed=3)
    assert (out[:1] - other_query).abs().max() > 1e-3
    # a freshly copied ControlNet adds exactly zero: the query cannot matter before training
    assert torch.equal(sample(base, images["query"], images["context"]), sample(base, images["target"],
                                                                               images["context"]))


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_dual_guidance_at_equal_scales_is_diffusers_own_pipeline(model, images, scale):
    ours = sample(model, images["query"], images["context"], "a red cat", guidance_scale_context=scale,
                  guidance_scale_prompt=scale, seed=5)
    embeds, negative = model.prompt_embeds(images["context"], "a red cat")
    pipe = model.diffusers_pipeline(progress=False)
    theirs = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, image=images["query"][None], height=SIZE,
                  width=SIZE, guidance_scale=scale, num_inference_steps=STEPS, latents=model.initial_latents(1, 5),
                  output_type="pt").images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_unequal_scales_weigh_the_context_only_term(model, images):
    equal = sample(model, images["query"], images["context"], "a red cat", guidance_scale_context=3.0,
                   guidance_scale_prompt=3.0)
    unequal = sample(model, images["query"], images["context"], "a red cat", guidance_scale_context=3.0,
                     guidance_scale_prompt=1.0)
    assert (equal - unequal).abs().max() > 1e-3


def test_diffusers_pipeline_needs_negative_embeds_of_the_longer_shape(model, images):
    embeds, _ = model.prompt_embeds(images["context"], "a red cat")  # (1, 77 + 65, 32)
    pipe = model.diffusers_pipeline(progress=False)
    # left out, the pipeline tokenizes "" to 142 positions for CLIP's 77 position embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        pipe(prompt_embeds=embeds, image=images["query"][None], height=SIZE, width=SIZE, guidance_scale=3.0,
             num_inference_steps=1, output_type="pt")


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------
def fixed_batch(model: ContextDiffusion, images: dict, seed: int = 0) -> TrainingBatch:
    generator = torch.Generator().manual_seed(seed)
    pixels, mask = context_pixels(torch.stack([images["context"], images["other_context"]]), 2, model.vision_size)
    latent = (2, 4, SIZE // 2, SIZE // 2)
    return TrainingBatch(target=torch.stack([images["target"]] * 2), query=torch.stack([images["query"]] * 2),
                         context=pixels, context_mask=mask, prompts=["a red cat", "a blue dog"],
                         drop_prompt=torch.tensor([False, True]), drop_context=torch.tensor([False, False]),
                         t=torch.tensor([100, 700]), noise=torch.randn(latent, generator=generator),
                         latent_noise=torch.randn(latent, generator=generator))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module, prefix: str) -> set[str]:
    after = module.state_dict()
    return {name for name in before if name.startswith(prefix) and not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("train_decoder", [False, True])
def test_a_training_step_changes_only_the_trainable_parts(base, images, train_decoder):
    model = copy.deepcopy(base)
    if train_decoder:
        model = ContextDiffusion(dataclasses.replace(base.config, train_decoder=True), model.tokenizer, model.clip,
                                 model.vae, model.unet, model.controlnet, model.scheduler)
    before = snapshot(model)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    loss = model(fixed_batch(model, images))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert changed(before, model, "visual_projection.") == {"visual_projection.weight", "visual_projection.bias"}
    assert changed(before, model, "controlnet.")  # the zero convs move first
    assert not changed(before, model, "clip.") and not changed(before, model, "vae.")
    unet = changed(before, model, "unet.")
    if train_decoder:
        assert unet and all(name.split(".")[1] in ("up_blocks", "conv_norm_out", "conv_out") for name in unet)
    else:
        assert not unet


def test_the_loss_goes_down_on_a_fixed_batch(base, images):
    model = copy.deepcopy(base)
    batch = fixed_batch(model, images)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_dropping_the_context_equals_giving_none(model, images):
    batch = fixed_batch(model, images)
    dropped = dataclasses.replace(batch, drop_context=torch.tensor([True, True]))
    empty = dataclasses.replace(batch, context=batch.context[:, :0], context_mask=batch.context_mask[:, :0])
    with torch.no_grad():
        torch.testing.assert_close(model(dropped), model(empty))
        assert (model(dropped) - model(batch)).abs() > 1e-6


@pytest.mark.parametrize("train_decoder", [False, True])
def test_save_and_load_give_the_same_model(base, images, tmp_path, train_decoder):
    model = ContextDiffusion(dataclasses.replace(base.config, train_decoder=train_decoder), base.tokenizer,
                             copy.deepcopy(base.clip), copy.deepcopy(base.vae), copy.deepcopy(base.unet),
                             copy.deepcopy(base.controlnet), base.scheduler)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(2):  # two steps: the second reaches past the zero convs
        optimizer.zero_grad()
        model(fixed_batch(model, images)).backward()
        optimizer.step()
    model.save_pretrained(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"context_diffusion.json", "visual_projection.safetensors", "visual_projection.json", "controlnet"} <= files
    assert ("unet_decoder.safetensors" in files) == train_decoder
    loaded = ContextDiffusion.from_pretrained(tmp_path / "model")
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    torch.testing.assert_close(sample(loaded, images["query"], images["context"], "a red cat"),
                               sample(model, images["query"], images["context"], "a red cat"), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# The training command
# ---------------------------------------------------------------------------------------------------------------------
def test_sd_train_writes_checkpoints_and_resumes_exactly(image_folder, tmp_path, images):
    common = ["--folder", str(image_folder), "--tiny", "--batch-size", "2", "--log-every", "1", "--lr", "1e-3"]
    straight = sd_train([*common, "--out", str(tmp_path / "straight"), "--steps", "4", "--checkpoint-every", "2"])
    assert straight["steps"] == 4
    checkpoint = tmp_path / "straight" / "checkpoints" / "step_0000004"
    assert {p.name for p in checkpoint.iterdir()} >= {"context_diffusion.json", "visual_projection.safetensors",
                                                      "visual_projection.json", "controlnet", "optimizer.safetensors",
                                                      "optimizer.json", "trainer_state.json"}
    assert not (tmp_path / "straight" / "checkpoints" / "step_0000002").exists()  # only the latest is kept

    cli(["sd-train", *common, "--out", str(tmp_path / "resumed"), "--steps", "2", "--gradient-checkpointing"])
    resumed = sd_train(["--folder", str(image_folder), "--out", str(tmp_path / "resumed"), "--resume",
                        "--steps", "4"])
    assert resumed["steps_this_session"] == 2
    assert read_log(tmp_path / "resumed" / "loss_log.csv") == read_log(tmp_path / "straight" / "loss_log.csv")

    # two micro-steps of one example each: the same global batches, so the same losses
    cli(["sd-train", *common, "--out", str(tmp_path / "accumulated"), "--steps", "4", "--grad-accum", "2"])
    np.testing.assert_allclose(read_log(tmp_path / "accumulated" / "loss_log.csv")["loss"],
                               read_log(tmp_path / "straight" / "loss_log.csv")["loss"], rtol=0, atol=1e-5)

    trained = ContextDiffusion.from_pretrained(checkpoint)
    assert sample(trained, images["query"], images["context"]).shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="combine: 'sum' -> 'mean'"):
        sd_train(["--folder", str(image_folder), "--out", str(tmp_path / "resumed"), "--resume", "--combine", "mean"])


def test_sd_train_in_bf16_keeps_the_trained_parts_in_float32(image_folder, tmp_path):
    """Mixed precision on the CPU (autocast bf16): the frozen parts in bf16, the trained ones (here with the UNet,
    whose decoder trains) in float32, as on a GPU. In a process of its own, as a user runs it: Accelerate's state is
    one per process and keeps the first run's mixed precision."""
    from safetensors.torch import load_file

    subprocess.run([sys.executable, "-m", "ctxdiff_from_scratch", "sd-train", "--folder", str(image_folder), "--out",
                    str(tmp_path), "--tiny", "--batch-size", "2", "--steps", "2", "--mixed-precision", "bf16",
                    "--train-decoder"], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert np.isfinite(read_log(tmp_path / "loss_log.csv")["loss"]).all()

    checkpoint = tmp_path / "checkpoints" / "step_0000002"
    for path in (checkpoint / "visual_projection.safetensors", checkpoint / "unet_decoder.safetensors",
                 checkpoint / "controlnet" / "diffusion_pytorch_model.safetensors"):
        assert {t.dtype for t in load_file(str(path)).values()} == {torch.float32}, path.name
    model = ContextDiffusion.from_pretrained(checkpoint, torch_dtype=torch.bfloat16, trainable_dtype=torch.float32)
    assert (model.clip.dtype, model.vae.dtype, model.unet.dtype, model.controlnet.dtype) == (
        torch.bfloat16, torch.bfloat16, torch.float32, torch.float32)


def test_sd_train_asks_for_the_parts(image_folder, tmp_path):
    with pytest.raises(ValueError, match="--clip"):
        sd_train(["--folder", str(image_folder), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="drop --clip"):
        sd_train(["--folder", str(image_folder), "--out", str(tmp_path), "--tiny", "--clip", "openai/clip"])
    with pytest.raises(SystemExit, match="nothing to resume"):
        sd_train(["--folder", str(image_folder), "--out", str(tmp_path / "new"), "--resume"])


def test_the_command_line_lists_sd_train(capsys):
    cli(["--help"])
    assert "sd-train" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing: the project's loader against transformers' CLIPImageProcessorPil
# ---------------------------------------------------------------------------------------------------------------------
def smooth_photo(width: int, height: int) -> Image.Image:
    """A photo-like test image: smooth gradients, one sharp-edged rectangle, mild noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([0.5 + 0.4 * np.sin(6 * x + 1), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    image[int(0.3 * height):int(0.6 * height), int(0.4 * width):int(0.7 * width)] = (0.9, 0.2, 0.1)
    image += 0.03 * rng.standard_normal(image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


@pytest.mark.parametrize("width, height, tolerance", [(224, 224, 1e-6), (300, 240, 0.02), (640, 480, 0.02)])
def test_load_image_as_tensor_with_clip_statistics_matches_clip_image_processor(width, height, tolerance):
    """Measured mean |difference| (normalised units; the images' std is ~1): 0 at 224 px, where no resampling
    happens; 0.012 (300x240) and 0.011 (640x480) from Lanczos-after-crop against bicubic-before-crop, the largest
    single differences (0.16, 0.44) on the sharp edges. Tensors (bilinear) measured 0.016 and 0.012."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    photo = smooth_photo(width, height)
    reference = CLIPImageProcessorPil()(photo, return_tensors="pt").pixel_values[0]  # (3, 224, 224)
    ours = load_image_as_tensor(photo, 224, CLIP_MEAN, CLIP_STD)
    as_tensor = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if (width, height) == (224, 224):
        from_tensor = context_pixels(as_tensor[None], 1, 224)[0][0, 0]
    else:
        with pytest.warns(UserWarning, match="resized"):  # tensors of another size: the project's warning
            from_tensor = context_pixels(as_tensor[None], 1, 224)[0][0, 0]
    assert ours.shape == reference.shape == from_tensor.shape
    assert (ours - reference).abs().mean() <= tolerance
    assert (from_tensor - reference).abs().mean() <= max(tolerance, 0.025)


# ---------------------------------------------------------------------------------------------------------------------
# Errors a learner meets
# ---------------------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_errors_that_say_what_to_do(model, images, tmp_path):
    query = images["query"]
    with pytest.raises(ValueError, match="context images, a prompt, or both"):
        sample(model, query)
    with pytest.raises(ValueError, match="context holds 2 samples"):
        sample(model, query, torch.stack([images["context"]] * 2))  # one query, two contexts
    with pytest.raises(ValueError, match="list of 3 strings but query holds 1"):
        sample(model, query, None, ["a", "b", "c"])
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(BadImageError, match="broken.png"):
        sample(model, query, [tmp_path / "broken.png"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        sample(model, query, [tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="has 1 channels"):
        sample(model, query, [torch.rand(1, 32, 32)])
    # context images of different sizes are fine: each is resized to the vision tower's, as CLIP's processor does
    with pytest.warns(UserWarning, match=r"context\[1\] is 48x40 but this model works at 32x32: resized"):
        assert sample(model, query, [torch.rand(3, 32, 32), torch.rand(3, 48, 40)]).shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="guidance_scale_context=2.0 was given but the call has no context"):
        sample(model, query, None, "a red cat", guidance_scale_context=2.0)
    with pytest.raises(ValueError, match="guidance_scale_prompt=2.0 was given but the call has no prompt"):
        sample(model, query, images["context"], None, guidance_scale_prompt=2.0)
    with pytest.raises(ValueError, match="combine='max' is not one of"):
        dataclasses.replace(model.config, combine="max")
    with pytest.raises(FileNotFoundError, match="context_diffusion.json"):
        ContextDiffusion.from_pretrained(tmp_path)


def test_a_clip_of_another_width_than_the_unet_is_refused(base):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**{**base.unet.config, "cross_attention_dim": 16})
    with pytest.raises(ValueError, match="32 wide but the UNet's cross-attention expects 16"):
        ContextDiffusion(base.config, base.tokenizer, base.clip, base.vae, unet, base.controlnet, base.scheduler)
