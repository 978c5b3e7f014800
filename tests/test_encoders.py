import math
from pathlib import Path

import pytest
import torch

from ctxdiff_from_scratch.data.shapes import ShapesWorld, patch_class_shares
from ctxdiff_from_scratch.encoders import (ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig,
                                           clip_loss, retrieval_top1)
from ctxdiff_from_scratch.runlog import read_log
from ctxdiff_from_scratch.tokenizer import WordTokenizer
from ctxdiff_from_scratch.train_encoders import (ContrastivePair, EncoderTrainConfig, encode_glyph_sets,
                                                 learning_rate, main, sample_glyph_sets,
                                                 sibling_pairs, twin_pairs)

CHECKPOINTS = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
COLOURS = ["red", "green", "blue", "yellow", "purple", "white", "black", "grey"]
RGB = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0, 0.5], [1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def tokenizer():
    return WordTokenizer.fit([f"a {c} image" for c in COLOURS], max_length=6)


def tiny_text(tokenizer):
    return TextEncoder(TextEncoderConfig.profile("tiny", vocab_size=tokenizer.vocab_size,
                                                 max_length=tokenizer.max_length))


def tiny_image():
    return ImageEncoder(ImageEncoderConfig.profile("tiny"))


def colour_batch():
    """Flat 16x16 images, one per colour: a toy world where each prompt names its image's colour."""
    return RGB[:, :, None, None].expand(-1, -1, 16, 16).clone()  # (8, 3) -> (8, 3, 16, 16)


def test_text_encoder_shapes_and_mask(tokenizer):
    torch.manual_seed(0)
    encoder = tiny_text(tokenizer)
    batch = tokenizer(["a red image", "red"])
    out = encoder(batch["input_ids"], batch["attention_mask"])
    assert out.tokens.shape == (2, 6, 32) and out.pooled.shape == (2, 32) and out.mask.shape == (2, 6)
    assert out.mask.tolist() == [[True] * 5 + [False], [True] * 3 + [False] * 3]


def test_text_encoder_ignores_padding_content(tokenizer):
    torch.manual_seed(0)
    encoder = tiny_text(tokenizer)
    batch = tokenizer(["red"])
    other = batch["input_ids"].clone()
    other[~batch["attention_mask"]] = tokenizer.token_to_id["blue"]  # change only the padded positions
    a = encoder(batch["input_ids"], batch["attention_mask"])
    b = encoder(other, batch["attention_mask"])
    torch.testing.assert_close(a.pooled, b.pooled)
    torch.testing.assert_close(a.tokens[a.mask], b.tokens[b.mask])


def test_image_encoder_shapes():
    torch.manual_seed(0)
    out = tiny_image()(torch.rand(3, 3, 16, 16))
    assert out.tokens.shape == (3, 16, 32)  # two stride-2 convs: 16x16 -> 4x4 = 16 tokens
    assert out.pooled.shape == (3, 32) and out.mask.all() and out.mask.shape == (3, 16)
    assert ImageEncoderConfig().grid == 8  # the shipped size: 64x64 -> 8x8 = 64 visual tokens


def test_image_stem_is_local():
    """Before attention mixes them, a token sees only its neighbourhood: a change in the top-left corner leaves the
    bottom-right token untouched, so the tokens keep *where* each colour is."""
    torch.manual_seed(0)
    encoder = tiny_image()
    image = torch.zeros(1, 3, 16, 16)
    changed = image.clone()
    changed[..., :4, :4] = 1.0
    diff = (encoder.stem(2 * image - 1) - encoder.stem(2 * changed - 1)).abs().sum(1)  # (1, C, 4, 4) -> (1, 4, 4)
    assert diff[0, 0, 0] > 0 and diff[0, 3, 3] == 0


def test_save_load_round_trip_is_identical(tokenizer, tmp_path):
    torch.manual_seed(0)
    text, image = tiny_text(tokenizer), tiny_image()
    text.save_pretrained(tmp_path)
    image.save_pretrained(tmp_path, metadata={"note": "test"})
    text2, image2 = TextEncoder.from_pretrained(tmp_path), ImageEncoder.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in image2.parameters()) and not image2.training  # frozen by default
    assert image2.metadata == {"note": "test"}
    batch = tokenizer(["a red image", "a blue image"])
    images = torch.rand(2, 3, 16, 16)
    text.eval(), image.eval()
    assert torch.equal(text(**batch).pooled, text2(**batch).pooled)
    assert torch.equal(image(images).tokens, image2(images).tokens)
    assert ImageEncoder.from_pretrained(tmp_path, frozen=False).stem[0].weight.requires_grad


def test_bad_configs_give_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="divisible by heads"):
        ImageEncoderConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="multiple of 8"):
        ImageEncoderConfig(image_size=20, stem_channels=(8, 8, 8))
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoderConfig(vocab_size=2)
    with pytest.raises(ValueError, match="no profile"):
        ImageEncoderConfig.profile("huge")
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, 16, 16\)"):
        tiny_image()(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="outside this encoder's vocabulary"):
        tiny_text(tokenizer)(torch.full((1, 6), 99), torch.ones(1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="world="):
        EncoderTrainConfig(world="faces")
    with pytest.raises(ValueError, match="at least 2 pairs"):
        EncoderTrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="even batch_size"):
        EncoderTrainConfig(batch_size=9, binding_twins=True)
    assert EncoderTrainConfig(batch_size=9).batch_size == 9
    with pytest.raises(ValueError, match="binding_twins"):
        EncoderTrainConfig(world="glyphs", binding_twins=True)
    with pytest.raises(ValueError, match="style_pairs"):
        EncoderTrainConfig(world="glyphs", style_pairs=True)
    with pytest.raises(ValueError, match="style_pairs"):
        EncoderTrainConfig(style_pairs=True, binding_twins=True)
    with pytest.raises(FileNotFoundError, match="image_encoder.safetensors"):
        ImageEncoder.from_pretrained("/nonexistent")


def test_info_nce_is_log_b_for_random_and_lower_for_aligned():
    g = torch.Generator().manual_seed(0)
    B, E = 64, 128
    a, b = torch.randn(B, E, generator=g), torch.randn(B, E, generator=g)
    scale = torch.tensor(0.0)  # temperature 1: random cosines are ~0, so every row is ~uniform
    assert abs(clip_loss(a, b, scale).item() - math.log(B)) < 0.05
    aligned = clip_loss(a, a + 0.1 * b, torch.tensor(math.log(1 / 0.07)))
    assert aligned.item() < 0.1 * math.log(B)


def test_info_nce_duplicate_prompts_floor_at_log_2():
    """Two images with the same prompt: their identical text embeddings split the probability, loss >= log 2 / 2."""
    a = torch.eye(4)[[0, 0, 1, 2]]
    assert clip_loss(a, a, torch.tensor(math.log(100.0))).item() == pytest.approx(math.log(2) / 2, abs=1e-3)


def test_retrieval_top1():
    a = torch.eye(4)
    assert retrieval_top1(a, a).item() == 1.0
    assert retrieval_top1(a, a[[1, 0, 2, 3]]).item() == 0.5


def test_a_few_steps_lower_the_loss(tokenizer):
    torch.manual_seed(0)
    model = ContrastivePair(tiny_image(), tiny_text(tokenizer), init_temperature=0.07)
    images, tokens = colour_batch(), tokenizer([f"a {c} image" for c in COLOURS])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, _, _ = model.image_text_loss(images, tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_twin_batches_hold_each_image_next_to_its_binding_twin():
    world = ShapesWorld("train", size=16)
    images, prompts = twin_pairs(world, range(5, 9))
    assert images.shape == (8, 3, 16, 16) and len(prompts) == 8
    for i, seed in enumerate(range(5, 9)):
        twins, twin_prompts = world.styled_twins(seed)
        assert torch.equal(images[2 * i: 2 * i + 2], twins) and prompts[2 * i: 2 * i + 2] == twin_prompts
    assert not EncoderTrainConfig.for_world("shapes").binding_twins  # opt-in: see the config's comment


def test_style_pairs_are_the_shapes_default_and_add_an_image_to_sibling_term(tokenizer):
    assert EncoderTrainConfig.for_world("shapes").style_pairs
    assert not EncoderTrainConfig.for_world("glyphs").style_pairs
    assert not EncoderTrainConfig.for_world("shapes", binding_twins=True).style_pairs  # the two are alternatives
    world = ShapesWorld("train", size=16)
    images, siblings, prompts, _ = sibling_pairs(world, range(3, 7))
    assert images.shape == siblings.shape == (4, 3, 16, 16) and len(prompts) == 4
    for i, seed in enumerate(range(3, 7)):
        pair, prompt = world.styled_siblings(seed)
        assert torch.equal(images[i], pair[0]) and torch.equal(siblings[i], pair[1]) and prompts[i] == prompt
    torch.manual_seed(0)
    model = ContrastivePair(tiny_image(), tiny_text(tokenizer), init_temperature=0.07)
    tokens = tokenizer(prompts)
    loss, patch_loss, top1 = model.image_text_loss(images, tokens, siblings)
    assert patch_loss.item() == 0.0  # no class shares given: no patch term
    with torch.no_grad():
        image_emb, sibling_emb = model.image_encoder(images).pooled, model.image_encoder(siblings).pooled
        text_emb = model.text_encoder(tokens["input_ids"], tokens["attention_mask"]).pooled
        expected = clip_loss(image_emb, text_emb, model.scale()) + clip_loss(image_emb, sibling_emb, model.scale())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert top1.item() == retrieval_top1(image_emb, text_emb).item()


def test_patch_class_shares_count_each_patchs_pixels_per_class():
    classes = torch.full((1, 4, 4), -1)
    classes[0, :2, :2] = 0  # top-left patch: all class 0
    classes[0, 0, 2] = 3  # top-right patch: one pixel of class 3, three of background
    shares = patch_class_shares(classes, grid=2)
    assert shares.shape == (1, 4, 7) and torch.allclose(shares.sum(-1), torch.ones(1, 4))
    assert shares[0, 0, 1] == 1  # column 0 is the background, so class c is column c + 1
    assert shares[0, 1, 4] == 0.25 and shares[0, 1, 0] == 0.75
    assert shares[0, 2, 0] == shares[0, 3, 0] == 1  # row-major: the bottom patches are background
    with pytest.raises(ValueError, match="multiple of grid"):
        patch_class_shares(torch.zeros(1, 5, 5), grid=2)


def test_the_patch_class_loss_teaches_the_tokens_where_each_class_is(tokenizer):
    world = ShapesWorld("train", size=16)
    seeds = range(4)
    images, siblings, prompts, maps = sibling_pairs(world, seeds)
    assert maps.shape == (8, 16, 16) and torch.equal(maps[1], torch.from_numpy(world.labelled_siblings(1)[2][0]))
    assert torch.equal(maps[5], torch.from_numpy(world.labelled_siblings(1)[2][1]))  # the siblings come second
    shares = patch_class_shares(maps, tiny_image().config.grid)
    torch.manual_seed(0)
    model = ContrastivePair(tiny_image(), tiny_text(tokenizer), init_temperature=0.07, patch_classes=7)
    tokens = tokenizer(["a red image"] * 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        _, patch_loss, _ = model.image_text_loss(images, tokens, siblings, shares)
        optimizer.zero_grad()
        patch_loss.backward()
        optimizer.step()
        losses.append(patch_loss.item())
    entropy = -(shares * shares.clamp(min=1e-9).log()).sum(-1).mean().item()  # the loss's floor
    assert losses[-1] - entropy < 0.5 * (losses[0] - entropy)


def test_the_patch_class_loss_needs_shapes_style_pairs():
    assert EncoderTrainConfig.for_world("shapes").patch_class_weight == 0  # opt-in
    EncoderTrainConfig.for_world("shapes", patch_class_weight=1.0)
    for overrides in (dict(world="glyphs"), dict(world="shapes", binding_twins=True),
                      dict(world="shapes", patch_class_weight=-1.0)):
        world = overrides.pop("world")
        with pytest.raises(ValueError, match="patch_class_weight"):
            EncoderTrainConfig.for_world(world, patch_class_weight=overrides.pop("patch_class_weight", 1.0),
                                         **overrides)


def test_a_few_glyph_set_steps_lower_the_loss():
    """Fake fonts: every glyph of font i is noise plus font i's own flat colour; two sets per font must match."""
    torch.manual_seed(0)
    model = ContrastivePair(tiny_image(), None, init_temperature=0.07)
    g = torch.Generator().manual_seed(0)
    font_colour = RGB[:, :, None, None, None].permute(0, 2, 1, 3, 4)  # (8, 3) -> (8, 1, 3, 1, 1)
    sets_a = (0.5 * font_colour + 0.5 * torch.rand(8, 2, 3, 16, 16, generator=g)).clamp(0, 1)
    sets_b = (0.5 * font_colour + 0.5 * torch.rand(8, 2, 3, 16, 16, generator=g)).clamp(0, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss, _ = model.glyph_set_loss(sets_a, sets_b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_glyph_sets_are_disjoint_and_of_one_font():
    g = torch.Generator().manual_seed(0)
    # a fake bank: font f, char c is a constant image of value (10 f + c)
    values = (10 * torch.arange(6)[:, None] + torch.arange(8)[None, :]).to(torch.uint8)  # (6, 8)
    bank = values[:, :, None, None, None].expand(6, 8, 3, 4, 4)  # (F, C) -> (F, C, 3, 4, 4)
    fonts, a, b = sample_glyph_sets(bank, n_fonts=4, glyphs_per_set=3, generator=g)
    assert a.shape == b.shape == (4, 3, 3, 4, 4) and len(set(fonts.tolist())) == 4
    for i, font in enumerate(fonts.tolist()):
        ids_a = {round(v * 255) - 10 * font for v in a[i, :, 0, 0, 0].tolist()}
        ids_b = {round(v * 255) - 10 * font for v in b[i, :, 0, 0, 0].tolist()}
        assert not ids_a & ids_b and ids_a | ids_b <= set(range(8))
    with pytest.raises(ValueError, match="cannot draw"):
        sample_glyph_sets(bank, n_fonts=7, glyphs_per_set=3, generator=g)
    emb = encode_glyph_sets(tiny_image(), torch.rand(2, 3, 3, 16, 16))
    assert emb.shape == (2, 32)


def test_learning_rate_warms_up_then_decays():
    config = EncoderTrainConfig(steps=100, warmup_steps=10, lr=1.0)
    assert learning_rate(0, config) == pytest.approx(0.1)
    assert learning_rate(10, config) == pytest.approx(1.0)
    assert learning_rate(99, config) < 0.01


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--world" in capsys.readouterr().out


def test_cli_tiny_training_run_writes_a_loadable_checkpoint(tmp_path):
    summary = main(["--world", "shapes", "--profile", "tiny", "--out", str(tmp_path), "--device", "cpu"])
    for name in ("tokenizer.json", "text_encoder.safetensors", "image_encoder.json", "encoders_log.csv",
                 "encoders_loss.png", "encoders_card.md"):
        assert (tmp_path / name).is_file(), name
    assert "--profile tiny" in (tmp_path / "encoders_card.md").read_text()
    assert 0.0 <= summary["test"]["image_to_text"] <= 1.0 and summary["test"]["queries"] == 8
    assert 0.0 <= summary["test"]["image_to_style"] <= 1.0
    assert summary["train_config"]["style_pairs"] and "style sibling" in (tmp_path / "encoders_card.md").read_text()


def test_cli_patch_class_weight_logs_the_patch_loss(tmp_path):
    summary = main(["--world", "shapes", "--profile", "tiny", "--patch-class-weight", "0.5", "--out", str(tmp_path),
                    "--device", "cpu"])
    assert summary["train_config"]["patch_class_weight"] == 0.5
    log = read_log(tmp_path / "encoders_log.csv")
    assert min(log["patch_class_loss"]) > 0  # logged, and never zero: the shares are not one-hot everywhere
    assert "per-patch class loss" in (tmp_path / "encoders_card.md").read_text()


def test_cli_no_style_pairs_trains_on_prompts_alone(tmp_path):
    summary = main(["--world", "shapes", "--profile", "tiny", "--no-style-pairs", "--out", str(tmp_path),
                    "--device", "cpu"])
    assert summary["train_config"]["style_pairs"] is False
    assert "style sibling" not in (tmp_path / "encoders_card.md").read_text()


def test_cli_binding_twins_run_trains_on_twin_batches(tmp_path):
    summary = main(["--world", "shapes", "--profile", "tiny", "--binding-twins", "--out", str(tmp_path),
                    "--device", "cpu"])
    assert summary["train_config"]["binding_twins"] and math.isfinite(summary["final_loss"])
    assert "binding twins" in (tmp_path / "encoders_card.md").read_text()


def test_cli_training_never_overwrites_the_shipped_encoders_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["--world", "shapes", "--profile", "tiny", "--device", "cpu"])
    assert (tmp_path / "runs" / "parts-shapes" / "image_encoder.safetensors").is_file()
    assert not (tmp_path / "data").exists()


SHIPPED_TARGETS = {"shapes": ("image_to_text", 0.8), "glyphs": ("top1", 0.6)}


@pytest.mark.parametrize("world", sorted(SHIPPED_TARGETS))
def test_shipped_encoders_reach_their_retrieval_target(world):
    """Loads the shipped checkpoint through the CLI (``--eval-only``) and measures test-split retrieval among 64
    candidates, 4 rounds as in the model card (GlyphWorld's test split holds fewer fonts; then all are candidates)."""
    metric, target = SHIPPED_TARGETS[world]
    metrics = main(["--world", world, "--eval-only", "--out", str(CHECKPOINTS / world), "--device", "cpu"])
    assert metrics["candidates"] == 64 if world == "shapes" else 32 <= metrics["candidates"] <= 64
    assert metrics["chance"] == 1 / metrics["candidates"] and metrics["queries"] == 4 * metrics["candidates"]
    assert metrics[metric] >= target, metrics
