"""The tiny KL autoencoder: shapes, save/load, config errors, scale factor, training, CLI, shipped checkpoints."""
from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from ctxdiff_from_scratch.autoencoder import (Autoencoder, AutoencoderConfig, DiagonalGaussian, channel_shortcut,
                                              estimate_scale_factor, kl_to_standard_normal)

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "data" / "checkpoints"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and far faster than on two when other jobs share the CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("config, latent", [
    (AutoencoderConfig.profile("tiny"), (4, 8, 8)),
    (AutoencoderConfig.profile("cpu-c48"), (48, 8, 8)),
    (AutoencoderConfig(image_size=32, channels=(12, 24, 24), unshuffle=1, norm_groups=4), (4, 8, 8)),
    (AutoencoderConfig(image_size=32, channels=(12, 24, 24), unshuffle=2, latent_channels=3, norm_groups=4),
     (3, 4, 4)),
    (AutoencoderConfig(image_size=64, channels=(8, 8), unshuffle=4, norm_groups=8, blocks_per_level=2), (4, 8, 8)),
])
def test_encode_decode_shapes(config, latent):
    torch.manual_seed(0)
    model = Autoencoder(config).eval()
    x = torch.rand(2, 3, config.image_size, config.image_size)
    z = model.encode(x)
    assert config.latent_shape == latent
    assert z.shape == (2, *latent)
    y = model.decode(z)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    # sampling draws from q(z|x): reproducible with a generator, different from the mean
    z1 = model.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    z2 = model.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z1, z2) and not torch.equal(z1, z)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    config = AutoencoderConfig.profile("tiny", scale_factor=0.5)
    model = Autoencoder(config).eval()
    x = torch.rand(3, 3, 32, 32)
    model.save_pretrained(tmp_path, metadata={"note": "test"}, dtype=None)  # fp32: bitwise identical
    loaded = Autoencoder.from_pretrained(tmp_path)
    assert loaded.config == config
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))
        assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
    model.save_pretrained(tmp_path / "fp16")  # default fp16: close, half the bytes
    half = Autoencoder.from_pretrained(tmp_path / "fp16")
    with torch.no_grad():
        assert torch.allclose(model.decode(model.encode(x)), half.decode(half.encode(x)), atol=2e-2)
    assert (tmp_path / "fp16" / "autoencoder.safetensors").stat().st_size < \
        0.6 * (tmp_path / "autoencoder.safetensors").stat().st_size


@pytest.mark.parametrize("overrides, message", [
    (dict(channels=(6, 16)), "divisible by norm_groups"),
    (dict(channels=(12, 20)), "must divide one another"),
    (dict(image_size=34), "not divisible by the downsampling factor"),
    (dict(latent_channels=0), "latent_channels must be a positive integer"),
    (dict(channels=()), "non-empty tuple"),
    (dict(scale_factor=-1.0), "scale_factor must be a positive"),
])
def test_bad_config_is_explained(overrides, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderConfig.profile("tiny", **overrides)


def test_bad_inputs_are_explained():
    model = Autoencoder(AutoencoderConfig.profile("tiny"))
    with pytest.raises(ValueError, match="unsqueeze"):
        model.encode(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="latents of shape"):
        model.decode(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown autoencoder profile"):
        AutoencoderConfig.profile("huge")


def test_channel_shortcut_repeats_and_averages():
    x = torch.randn(2, 6, 4, 4)
    wide = channel_shortcut(x, 12)  # each channel twice
    assert torch.equal(wide[:, 0], x[:, 0]) and torch.equal(wide[:, 1], x[:, 0]) and torch.equal(wide[:, 2], x[:, 1])
    assert torch.allclose(channel_shortcut(wide, 6), x)  # averaging the copies undoes the repeat
    assert torch.allclose(channel_shortcut(x, 3)[:, 0], x[:, :2].mean(1))


@pytest.mark.parametrize("profile", ["cpu", "cpu-c48"])
def test_untrained_autoencoder_is_its_shortcuts(profile):
    """Every learned branch starts at zero (DC-AE + zero init): a flat grey image passes through unchanged."""
    model = Autoencoder(AutoencoderConfig.profile(profile)).eval()
    grey = torch.full((2, 3, 64, 64), 0.3)
    grey[1] = 0.8
    with torch.no_grad():
        assert torch.allclose(model.decode(model.encode(grey)), grey, atol=1e-5)


def test_kl_formula_matches_torch_distributions():
    mean, logvar = torch.randn(5), torch.randn(5)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    assert torch.allclose(kl_to_standard_normal(mean, logvar), torch.distributions.kl_divergence(q, p), atol=1e-6)


def test_scale_factor_gives_unit_variance():
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig.profile("tiny")).eval()
    images = torch.rand(64, 3, 32, 32)
    scale = estimate_scale_factor(model, images, batch_size=16)
    model.config.scale_factor = scale
    z = model.encode(images)
    assert abs(z.std().item() - 1.0) < 1e-3
    assert abs(scale - 1.0) > 0.05  # an untrained encoder's latents are not unit variance by chance


# --- training, metrics, CLI ------------------------------------------------------------------------------------------
from ctxdiff_from_scratch.train_autoencoder import (TrainConfig, autoencoder_loss, edge_f1, edge_strength,  # noqa: E402
                                                    evaluate_autoencoder, glyph_iou, learning_rate, noisy_latents,
                                                    psnr, reconstruction_error, train_autoencoder)


def _blobs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) smooth random colour blobs: a learnable toy image set."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)


def test_a_few_training_steps_lower_the_loss():
    images = _blobs(64)
    config = TrainConfig(profile="tiny", steps=120, batch_size=16, lr=5e-3, warmup_steps=5, seed=0)
    torch.manual_seed(0)
    before = Autoencoder(AutoencoderConfig.profile("tiny")).eval()
    with torch.no_grad():
        loss_before = autoencoder_loss(before, images, config.kl_weight, config.edge_weight,
                                       torch.Generator().manual_seed(0))[0].item()
    model, summary = train_autoencoder(config, images=images, device="cpu")
    with torch.no_grad():
        loss_after = autoencoder_loss(model, images, config.kl_weight, config.edge_weight,
                                      torch.Generator().manual_seed(0))[0].item()
    assert summary["steps_done"] == 120
    assert loss_after < 0.5 * loss_before
    # the scale factor is set from the training images: their scaled latents have unit variance
    assert abs(model.encode(images).std().item() - 1.0) < 0.05


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_reconstruction_loss_matches_a_hand_computation(kind):
    """rec = mean(w * |error|) for l1 and mean(w * error^2) for l2, with w = 1 + edge_weight * edge strength."""
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig.profile("tiny"))
    for parameter in model.decoder.conv_out.parameters():  # a non-zero error at every pixel
        torch.nn.init.normal_(parameter, std=0.1)
    x = _blobs(4)
    loss, parts = autoencoder_loss(model, x, 1e-3, 8.0, torch.Generator().manual_seed(1), loss=kind)
    recon, posterior = model(x, torch.Generator().manual_seed(1))
    error = recon - (2 * x - 1)
    per_pixel = error.abs() if kind == "l1" else error ** 2
    rec = ((1 + 8.0 * edge_strength(x)) * per_pixel).mean()
    assert parts["rec"] == pytest.approx(rec.item(), rel=1e-5)
    assert loss.item() == pytest.approx(rec.item() + 1e-3 * posterior.kl().mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown reconstruction loss 'huber'"):
        TrainConfig(loss="huber")


def test_posterior_sample_draws_from_the_generator():
    """z = mean + std * eps with eps drawn by the caller's generator (on its device, then moved to the latents')."""
    moments = torch.randn(2, 8, 4, 4)
    posterior = DiagonalGaussian(moments)
    eps = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    z = posterior.sample(torch.Generator().manual_seed(5))
    assert torch.allclose(z, posterior.mean + posterior.std * eps)


def test_training_is_reproducible_and_writes_logs(tmp_path):
    images = _blobs(32)
    config = TrainConfig(profile="tiny", steps=6, batch_size=8, warmup_steps=2, log_every=2, seed=3)
    a, _ = train_autoencoder(config, out=tmp_path, images=images, device="cpu")
    b, _ = train_autoencoder(config, images=images, device="cpu")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
        assert p.is_contiguous(), f"{name}: trained in channels_last, handed back contiguous"
    assert (tmp_path / "autoencoder_log.csv").read_text().startswith("step,loss,rec,kl,lr,img_per_s,elapsed_s")
    assert (tmp_path / "autoencoder_loss.png").stat().st_size > 1000


def test_noisy_latents_keep_half_clean_and_bound_the_noise():
    """About half the images keep their latent exactly; the others get sigma * eps with sigma <= max_std."""
    z = torch.randn(400, 4, 8, 8)
    out = noisy_latents(z, 0.5, torch.Generator().manual_seed(0))
    clean = (out == z).flatten(1).all(dim=1)  # (400,) per image
    assert 0.4 < clean.float().mean().item() < 0.6
    noise_std = (out - z)[~clean].flatten(1).std(dim=1)  # (n_noisy,) one sigma per image
    assert noise_std.max().item() < 0.5 * 1.2
    assert 0.15 < noise_std.mean().item() < 0.35  # sigma ~ U(0, 0.5): mean 0.25
    assert torch.equal(noisy_latents(z, 0.0), z)
    assert torch.equal(out, noisy_latents(z, 0.5, torch.Generator().manual_seed(0)))  # seeded: reproducible


def test_decoder_phase_keeps_the_latent_space_and_learns_noisy_latents(tmp_path):
    """The second phase changes only the decoder, so a denoiser trained on the first phase's latents still fits;
    and the new decoder decodes noisy latents better than the old one."""
    images = _blobs(64)
    base = TrainConfig(profile="tiny", steps=80, batch_size=16, lr=5e-3, warmup_steps=5, seed=0)
    tuned = TrainConfig(**{**asdict(base), "decoder_steps": 80, "decoder_noise": 0.5, "decoder_lr": 2e-3})
    before, _ = train_autoencoder(base, images=images, device="cpu")
    after, summary = train_autoencoder(tuned, out=tmp_path, images=images, device="cpu")
    for name, tensor in before.encoder.state_dict().items():
        assert torch.equal(tensor, after.encoder.state_dict()[name]), name
    assert after.config.scale_factor == before.config.scale_factor
    assert not torch.equal(before.decoder.conv_out.weight, after.decoder.conv_out.weight)
    assert all(p.requires_grad for p in after.parameters()) and not after.training
    assert summary["decoder_steps_done"] == 80

    def noisy_error(model):
        with torch.no_grad():
            z = noisy_latents(model.encode(images), 0.5, torch.Generator().manual_seed(9))
            return reconstruction_error(model.decoder(z / model.config.scale_factor), images, 0.0).item()
    assert noisy_error(after) < 0.9 * noisy_error(before)
    assert (tmp_path / "autoencoder_decoder_log.csv").read_text().startswith("step,loss,lr")
    assert (tmp_path / "autoencoder_decoder_loss.png").stat().st_size > 1000


@pytest.mark.parametrize("field, value", [("decoder_steps", -1), ("decoder_noise", -0.1), ("decoder_lr", 0.0)])
def test_bad_decoder_phase_is_explained(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        TrainConfig(**{field: value})


def test_learning_rate_schedule():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1e-3)
    assert learning_rate(0, config) == pytest.approx(1e-4)
    assert learning_rate(10, config) == pytest.approx(1e-3)
    assert learning_rate(100, config) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="unknown world"):
        TrainConfig(world="mnist")


def test_metrics_on_known_cases():
    x = torch.zeros(2, 3, 8, 8)
    x[:, :, 3, :] = 1.0  # one bright horizontal line
    assert psnr(x, x).min().item() == pytest.approx(100.0)
    assert psnr(torch.full_like(x, 0.5), torch.zeros_like(x)).tolist() == pytest.approx([6.0206] * 2, abs=1e-3)
    assert edge_f1(x, x) == 1.0
    shifted = torch.roll(x, 1, dims=2)
    assert edge_f1(shifted, x) == 0.0
    half = x.clone()
    half[:, :, 3, 4:] = 0.0  # half the line lost: precision 1, recall 1/2 -> F1 = 2/3
    assert edge_f1(half, x) == pytest.approx(2 / 3)
    ink = 1.0 - x  # dark line on white
    assert glyph_iou(1.0 - half, ink).tolist() == pytest.approx([0.5, 0.5])
    strength = edge_strength(x)
    assert strength.shape == (2, 1, 8, 8)
    assert strength[0, 0, :, 0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]  # the line and its two neighbours


def test_cli_help(capsys):
    from ctxdiff_from_scratch.__main__ import main as package_main
    from ctxdiff_from_scratch.train_autoencoder import main

    for run in (lambda: main(["--help"]), lambda: package_main(["autoencoder", "--help"])):
        with pytest.raises(SystemExit) as exit_info:
            run()
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "--world" in out and "--minutes" in out and "--batch-size" in out and "--loss" in out
    # and the module runs as a script
    result = subprocess.run([sys.executable, "-m", "ctxdiff_from_scratch.train_autoencoder", "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and "--world" in result.stdout, result.stderr


def test_cli_trains_and_records_its_recipe(tmp_path, capsys):
    """The flags reach the run: the checkpoint's metadata and the model card name the loss and the edge weight."""
    from ctxdiff_from_scratch.checkpoint import load_part
    from ctxdiff_from_scratch.train_autoencoder import main

    main(["--world", "shapes", "--out", str(tmp_path), "--profile", "tiny", "--steps", "3", "--pool-size", "16",
          "--eval-images", "2", "--loss", "l1", "--edge-weight", "6", "--threads", "1"])
    train_config = load_part(tmp_path, "autoencoder")[2]["train_config"]
    assert (train_config["loss"], train_config["edge_weight"], train_config["steps"]) == ("l1", 6.0, 3)
    card = (tmp_path / "autoencoder_card.md").read_text()
    assert "L1 reconstruction loss" in card and "edge weight 6.0" in card
    assert "decoder alone" not in card  # no second phase asked for
    main(["--world", "shapes", "--out", str(tmp_path), "--profile", "tiny", "--steps", "3", "--pool-size", "16",
          "--eval-images", "2", "--decoder-steps", "2", "--decoder-noise", "0.3", "--threads", "1"])
    train_config = load_part(tmp_path, "autoencoder")[2]["train_config"]
    assert (train_config["decoder_steps"], train_config["decoder_noise"]) == (2, 0.3)
    assert "decoder alone on noisy latents (`finetune_decoder`): 2 steps, noise std up to 0.3" in \
        (tmp_path / "autoencoder_card.md").read_text()
    assert "test metrics" in capsys.readouterr().out


def test_edge_weight_defaults_to_the_worlds_own():
    """No --edge-weight: each world trains with its screened weight (shapes 4, glyphs 32); a given one is kept."""
    from ctxdiff_from_scratch.train_autoencoder import TrainConfig, build_parser

    assert TrainConfig(world="shapes").edge_weight == 4.0
    assert TrainConfig(world="glyphs").edge_weight == 32.0
    assert TrainConfig(world="glyphs", edge_weight=0.0).edge_weight == 0.0
    assert build_parser().parse_args(["--world", "glyphs", "--out", "x"]).edge_weight is None


# --- shipped checkpoints: load them and measure them on the world's test split --------------------------------------
@functools.lru_cache(maxsize=None)
def _shipped(world: str) -> tuple[dict, dict]:
    """Metrics of the shipped checkpoint, computed now on the card's test sample, and the metrics its card recorded."""
    from ctxdiff_from_scratch.checkpoint import load_part
    from ctxdiff_from_scratch.data import make_world

    model = Autoencoder.from_pretrained(CHECKPOINTS / world)
    metadata = load_part(CHECKPOINTS / world, "autoencoder")[2]
    assert model.config.latent_shape == AutoencoderConfig.profile(metadata["train_config"]["profile"]).latent_shape
    n = metadata["train_config"]["eval_images"]
    return evaluate_autoencoder(model, make_world(world, "test"), n=n, seed=0), metadata["test_metrics"]


@pytest.mark.parametrize("world", ["shapes", "glyphs"])
def test_shipped_checkpoint_matches_its_card(world):
    """Recomputing the card's metrics from the shipped fp16 file gives the card's numbers."""
    measured, recorded = _shipped(world)
    assert set(measured) == set(recorded)
    for key, value in measured.items():
        assert abs(value - recorded[key]) <= (0.05 if key.startswith("psnr") else 0.005), (key, value, recorded[key])


# The targets.
TARGETS = [("shapes", "psnr_img", 28.0),
           ("shapes", "edge_f1_edge", 0.9),
           ("glyphs", "glyph_iou", 0.95)]


@pytest.mark.parametrize("world, key, target", TARGETS)
def test_shipped_checkpoint_meets_target(world, key, target):
    measured, _ = _shipped(world)
    assert measured[key] >= target, measured
