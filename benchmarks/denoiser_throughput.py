"""Training speed of the denoiser (UNet + query adapter) against diffusers' UNet2DConditionModel + ControlNetModel.

One training step = forward + backward + AdamW on a batch of noisy latents, with Eq. 3 tokens [null ; h^c ; h^V]
(a key mask hides the prompt's padding) and a query map for the adapter. diffusers is configured to the same widths,
blocks, attention placement, head size and token counts (see ``build_diffusers``); the script stops if the parameter
counts differ by more than 5%.

Each model lives in its own worker process, so their memory peaks do not mix. The parent alternates the two for
several rounds (who goes first alternates too) and reports medians; the ratio ours/diffusers is the median of the
per-round ratios, which cancels most of the drift of a shared machine. Compare ratios, not absolute numbers. The
CPU-time ratio (process CPU seconds per step) is steadier than wall time when other jobs share the cores.

Training recipe (``--recipe``): what the numbers supported is channels_last memory format and the fused AdamW kernel.
By default only our model gets them and diffusers runs as its training examples do (contiguous tensors, plain
``torch.optim.AdamW``); ``--recipe both`` gives diffusers the same, ``--recipe none`` neither.

Measured figures, and the speed-ups tried and not kept: docs/benchmarks.md.

Run: ``.venv/bin/python benchmarks/denoiser_throughput.py [--latent 16] [--threads 0] [--compile] [--device cuda]``.
On a GPU (``--device cuda``) both run under bf16 autocast and the script prints the model FLOPs utilisation:
FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention;
forward and backward) times steps per second, over the GPU's dense bf16 peak from ``PEAK_BF16_TFLOPS``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ctxdiff_from_scratch.config import AdapterConfig, UNetConfig

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched as substrings of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS = {
    "GH200": 989.0, "H200": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "B200": 2250.0,
    "A100": 312.0, "A10": 125.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0,
}
PARAMETER_TOLERANCE = 0.05  # the two models must have the same size within 5%, or their speeds say nothing


def build_ours(args):
    """Our UNet + QueryAdapter at profile ``args.profile``, and the function running one forward pass."""
    from ctxdiff_from_scratch.adapter import QueryAdapter
    from ctxdiff_from_scratch.unet import UNet

    unet = UNet(UNetConfig.profile(args.profile))
    adapter = QueryAdapter.from_unet(unet, AdapterConfig(downsample_factor=args.factor))

    def forward(x_t, t, query, tokens, mask):
        down, mid = adapter(x_t, t, query, tokens, mask)
        return unet(x_t, t, tokens, mask, down_residuals=down, mid_residual=mid)

    return torch.nn.ModuleList([unet, adapter]), forward


def build_diffusers(args):
    """diffusers' UNet2DConditionModel + ControlNetModel at our profile's sizes.

    Matched: widths (``block_out_channels``), ResBlocks per level, which levels have a transformer block, heads of
    ``head_dim`` channels (diffusers' ``attention_head_dim`` counts heads), GroupNorm groups, time-embedding width,
    token width, linear projections into the transformer, a GELU feed-forward (diffusers' default GEGLU has 1.5x the
    feed-forward parameters, so we swap in diffusers' own ``FeedForward(activation_fn="gelu")``), and the hint
    encoder: diffusers' ControlNet embedding adds stride-1 convs at full image resolution, ~10x our hint encoder's
    FLOPs on 64x64 queries, an architecture choice rather than an implementation one, so its
    ``controlnet_cond_embedding`` is replaced by our stride-2 convs (``--stock-hint`` keeps diffusers').
    diffusers' ControlNet cannot mask cross-attention keys (its ``attention_mask`` goes to self-attention), so only
    its UNet gets the key mask; ours masks in both.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock, FeedForward

    from ctxdiff_from_scratch.adapter import HintEncoder

    config = UNetConfig.profile(args.profile)
    heads = tuple(max(1, width // config.head_dim) for width in config.level_channels)
    unet = UNet2DConditionModel(
        sample_size=args.latent, in_channels=config.latent_channels, out_channels=config.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.attention_levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention_levels)),
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=config.level_channels,
        layers_per_block=config.layers_per_level, norm_num_groups=config.norm_groups,
        cross_attention_dim=config.context_dim, attention_head_dim=heads,
        transformer_layers_per_block=config.transformer_depth, use_linear_projection=True)
    hint_channels = tuple(AdapterConfig().hint_channels * 2 ** i for i in range(args.factor.bit_length()))
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint_channels)
    if not args.stock_hint:
        controlnet.controlnet_cond_embedding = HintEncoder(AdapterConfig(downsample_factor=args.factor),
                                                           config.base_channels)
    for module in [*unet.modules(), *controlnet.modules()]:
        if isinstance(module, BasicTransformerBlock):
            module.ff = FeedForward(module.ff.net[-1].out_features, mult=config.ff_mult, activation_fn="gelu")

    def forward(x_t, t, query, tokens, mask):
        down, mid = controlnet(x_t, t, tokens, controlnet_cond=query, return_dict=False)
        return unet(x_t, t, tokens, encoder_attention_mask=mask, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False)[0]

    return torch.nn.ModuleList([unet, controlnet]), forward


def make_batch(args, config: UNetConfig, device: torch.device) -> list[torch.Tensor]:
    """Random inputs of the right shapes: latents, timesteps, query maps, Eq. 3 tokens, their key mask, targets."""
    g = torch.Generator().manual_seed(0)
    batch, n_text, side = args.batch, args.text_tokens, args.latent
    x_t = torch.randn(batch, config.latent_channels, side, side, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    query = torch.rand(batch, 3, side * args.factor, side * args.factor, generator=g)
    tokens = torch.randn(batch, 1 + n_text + args.visual_tokens, config.context_dim, generator=g)
    prompt_length = torch.randint(3, n_text + 1, (batch, 1), generator=g)  # <bos> words <eos>, then padding
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
    mask[:, 1:1 + n_text] = torch.arange(n_text)[None, :] < prompt_length  # (1, N_c) < (B, 1) -> (B, N_c)
    target = torch.randn(x_t.shape, generator=g)
    return [v.to(device) for v in (x_t, t, query, tokens, mask, target)]


def current_rss_kib() -> int:
    """Resident memory of this process now, in KiB (Linux); elsewhere the peak so far (then deltas read low)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(name: str, args, conn) -> None:
    """Build one model and train it on one fixed batch. Answers ("run", seconds) by training for that long (at least
    one step) with (steps, wall s, CPU s), and ("stop",) with its peak memory."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, forward = (build_ours if name == "ours" else build_diffusers)(args)
    model.to(device).train()
    recipe = args.recipe == "both" or (args.recipe == "ours" and name == "ours")
    if recipe:
        model.to(memory_format=torch.channels_last)
    if args.compile:
        forward = torch.compile(forward)
    x_t, t, query, tokens, mask, target = make_batch(args, UNetConfig.profile(args.profile), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=recipe or None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = F.mse_loss(forward(x_t, t, query, tokens, mask).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = current_rss_kib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.warmup):  # the first steps also build oneDNN / cuDNN kernels (and compile, with --compile)
        step()
    sync()
    warmup_s = time.perf_counter() - start
    flops = None
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    conn.send(dict(params=sum(p.numel() for p in model.parameters()), warmup_s=warmup_s, flops=flops))
    while (message := conn.recv())[0] == "run":
        sync()
        wall, cpu, steps = time.perf_counter(), time.process_time(), 0
        while steps == 0 or time.perf_counter() - wall < message[1]:
            step()  # on a GPU this only queues the work; the sync below waits for all of it
            steps += 1
        sync()
        conn.send((steps, time.perf_counter() - wall, time.process_time() - cpu))
    if device.type == "cuda":
        peak = (f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB (torch.cuda.max_memory_allocated: weights, "
                "gradients, AdamW state and activations)")
    else:
        peak = (f"{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024:.0f} MiB "
                "(peak RSS while training - RSS before the first step: activations, gradients, AdamW state, "
                "allocator caches; not the weights)")
    conn.send(peak)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="UNetConfig profile (tiny, cpu, colab, gpu)")
    parser.add_argument("--batch", type=int, default=64, help="images per training step")
    parser.add_argument("--latent", type=int, default=8, help="latent side: latents are 4 x latent x latent")
    parser.add_argument("--factor", type=int, default=8, help="query image side / latent side (a power of two)")
    parser.add_argument("--text-tokens", type=int, default=32, help="N_c: prompt tokens (the tokenizer's length)")
    parser.add_argument("--visual-tokens", type=int, default=64, help="N_v: visual tokens (8x8 image-encoder grid)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="timed seconds in all, split over the rounds and the two models")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model before the rounds")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per model (0: torch's default); 1 is steadiest on a shared machine")
    parser.add_argument("--recipe", default="ours", choices=["ours", "both", "none"],
                        help="who gets channels_last + fused AdamW")
    parser.add_argument("--compile", action="store_true", help="torch.compile both forward passes (minutes)")
    parser.add_argument("--stock-hint", action="store_true", help="keep diffusers' full-resolution hint encoder")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's bf16 peak if not in the table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        build = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        parser.error(f"--device cuda needs an NVIDIA GPU, but torch {torch.__version__} cannot use one ({build}). "
                     "Run without --device here, or on a GPU machine with a CUDA build of torch.")
    config = UNetConfig.profile(args.profile)
    if args.latent <= 0 or args.latent % config.latent_multiple:
        parser.error(f"--latent {args.latent}: the {args.profile!r} UNet has {config.levels} levels, so the latent "
                     f"side must be a positive multiple of {config.latent_multiple}.")
    AdapterConfig(downsample_factor=args.factor)  # raises a clear error for a factor that is not a power of two
    return args


def main() -> None:
    args = parse_args()
    threads = args.threads or torch.get_num_threads()
    if args.device == "cpu" and os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other jobs share the CPU, "
              "so timings are noisy; compare the ratios, and prefer --threads 1 (threads that wait for each other "
              "make a multi-threaded step several times slower here).")

    context = mp.get_context("spawn")  # fresh interpreters: no forked thread pools, separate memory peaks
    names = ("ours", "diffusers")
    pipes, workers = {}, []
    for name in names:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker, args=(name, args, child_end), daemon=True)
        process.start()
        pipes[name] = parent_end
        workers.append(process)
    info = {name: pipes[name].recv() for name in names}

    print(f"denoiser training step (forward + backward + AdamW): profile {args.profile!r}, batch {args.batch}, "
          f"latent 4x{args.latent}x{args.latent}, query {args.latent * args.factor}x{args.latent * args.factor}, "
          f"tokens 1+{args.text_tokens}+{args.visual_tokens}, {args.device}, {threads} thread(s) per model")
    recipe = {"ours": "ours only", "both": "both models", "none": "neither model"}[args.recipe]
    print(f"channels_last + fused AdamW: {recipe}; torch.compile: {args.compile}; "
          f"diffusers hint encoder: {'stock' if args.stock_hint else 'ours'}")
    params = {name: info[name]["params"] for name in names}
    size_ratio = params["ours"] / params["diffusers"]
    print(f"parameters: ours {params['ours']:,}, diffusers {params['diffusers']:,}, ratio {size_ratio:.4f}")
    if abs(size_ratio - 1) > PARAMETER_TOLERANCE:
        for pipe in pipes.values():
            pipe.send(("stop",))
        sys.exit(f"FAIL: the parameter counts differ by {abs(size_ratio - 1):.1%} (more than "
                 f"{PARAMETER_TOLERANCE:.0%}): the models are not configured alike, so their speeds cannot be "
                 "compared. Fix build_diffusers for this profile.")
    if args.compile:
        print("warm-up including compilation: " + ", ".join(f"{n} {info[n]['warmup_s']:.0f} s" for n in names))

    seconds = args.seconds / (args.rounds * len(names))
    wall = {name: [] for name in names}  # images per wall-clock second, one entry per round
    cpu = {name: [] for name in names}   # CPU seconds of the worker process per step
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            pipes[name].send(("run", seconds))
            steps, wall_s, cpu_s = pipes[name].recv()
            wall[name].append(steps * args.batch / wall_s)
            cpu[name].append(cpu_s / steps)
        print(f"round {round_ + 1}/{args.rounds} (~{seconds:.0f} s each): ours {wall['ours'][-1]:.1f} img/s, "
              f"diffusers {wall['diffusers'][-1]:.1f} img/s", flush=True)
    for pipe in pipes.values():
        pipe.send(("stop",))
    peaks = {name: pipes[name].recv() for name in names}
    for process in workers:
        process.join()

    for name in names:
        rate = statistics.median(wall[name])
        print(f"{name:>9}: {rate:7.1f} img/s, {rate / args.batch:.3f} steps/s, {statistics.median(cpu[name]):.2f} "
              f"CPU s/step; peak memory {peaks[name]}")
    ratios = [o / d for o, d in zip(wall["ours"], wall["diffusers"])]
    print(f"ratio ours/diffusers (img/s): {statistics.median(ratios):.2f} (median of {args.rounds} rounds, range "
          f"{min(ratios):.2f}-{max(ratios):.2f})")
    if args.device == "cpu":
        cpu_ratios = [d / o for o, d in zip(cpu["ours"], cpu["diffusers"])]
        print(f"ratio by CPU seconds per step (diffusers/ours): {statistics.median(cpu_ratios):.2f} (median; "
              "steadier than wall time on a shared machine)")
    if args.device == "cuda":
        gpu = torch.cuda.get_device_name()
        peak = args.peak_tflops or next((p for key, p in PEAK_BF16_TFLOPS.items() if key in gpu), None)
        for name in names:
            achieved = info[name]["flops"] * statistics.median(wall[name]) / args.batch / 1e12  # FLOP/step * step/s
            mfu = (f"MFU {achieved / peak:.1%} of {peak:.0f} TFLOP/s bf16" if peak
                   else "MFU unknown: pass --peak-tflops (the GPU's dense bf16 peak)")
            print(f"{name:>9}: {info[name]['flops'] / 1e9:.1f} GFLOP per step, {achieved:.2f} TFLOP/s on {gpu}, {mfu}")


if __name__ == "__main__":
    main()
