"""Train the video tokenizer (conv autoencoder + FSQ) on the camera frames of LeRobot datasets.

    robotok-train-video-tokenizer --dataset runs/data/pickcup runs/data/drive --out runs/video_tok

Frames are decoded once into one compact uint8 array (a 64x64 frame is 12 KB; `--max-frames` caps it
with an even stride over time), so no video is decoded inside the training loop. Episodes are split
into train and held-out sets per dataset; the held-out PSNR per dataset lands in `<out>/eval.json`.
Loss: L1 + MSE + an edge term (L1 between image gradients, which keeps cup rims and road edges sharp), with
the pixel terms weighted up to 1 + `--object-weight` away from the frame's dominant colour: without it a
short run paints the table and drops the 6 px cups altogether (21.3 dB held-out on PickCup, no cup in the
reconstructions); with 4 the cups come back in their colours and PSNR rises with them (24.2 dB; 1,000
steps x 32 frames, channels 16 32 64). See `object_weights`.
AdamW, linear warm-up then cosine decay, bf16 autocast where the CPU or GPU multiplies bf16 (fp32 master
weights), periodic checkpoints, `--resume` continues from `<out>/train_state.pt`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from tqdm import tqdm

from robotok import resolve_dtype
from robotok.tokenizers.video import VideoAutoencoder, VideoTokenizer, VideoTokenizerConfig

PROG = "robotok-train-video-tokenizer"
STATE_FILE = "train_state.pt"
EVAL_FILE = "eval.json"


@dataclass
class TrainVideoConfig:
    """Train a video tokenizer on the frames of one or more LeRobot v3 datasets."""

    dataset: tuple[Path, ...] = ()
    """LeRobot dataset directories (frames of all of them train one tokenizer)."""
    out: Path = Path("runs/video_tokenizer")
    """Output directory: config.json + model.safetensors (loadable by VideoTokenizer.load), eval.json."""
    cameras: tuple[str, ...] = ()
    """Camera names (e.g. front wrist) or full keys (observation.images.front); empty = every camera."""
    steps: int = 6000
    """Optimiser steps (6000 x 16 frames: about 8 CPU-minutes with bf16 on an AMX CPU)."""
    batch_size: int = 16
    """Frames per step (small batches learn more per frame: 16 beat 64 at equal frames seen)."""
    downsample: int = 8
    """Spatial down-sampling factor (8: 64x64 -> 8x8 = 64 tokens; 16: 4x4 = 16 tokens)."""
    levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels; the codebook has their product of codes."""
    channels: tuple[int, ...] = (32, 64, 96)
    """Conv widths per stage, finest to coarsest (small: training runs on a laptop CPU)."""
    res_blocks: int = 1
    """Residual blocks per stage."""
    lr: float = 2e-3
    """Peak learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup: int = 100
    """Linear warm-up steps before the cosine decay."""
    edge_weight: float = 0.5
    """Weight of the image-gradient L1 term."""
    mse_weight: float = 1.0
    """Weight of the MSE term (PSNR is an MSE measure)."""
    object_weight: float = 4.0
    """Extra pixel-loss weight on pixels away from the frame's dominant colour (cups, gripper, cones); 0 = off."""
    max_frames: int = 100_000
    """Cap on training frames kept in memory (100k 64x64 frames = 1.2 GB); sampled with an even stride."""
    holdout: float = 0.1
    """Share of each dataset's episodes held out for evaluation (at least one when a dataset has two or more)."""
    max_eval_frames: int = 2000
    """Cap on held-out frames evaluated per dataset."""
    checkpoint_every: int = 1000
    """Save weights and optimiser state every this many steps (and at the end)."""
    resume: bool = False
    """Continue from the checkpoint in --out."""
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision: auto is bf16 autocast (fp32 master weights) on CUDA and on CPUs that multiply bf16
    natively (AMX-BF16, AVX512-BF16: about 2x faster there), else fp32 (bf16 on an AVX2-only CPU is many
    times slower)."""
    threads: int = 0
    """torch intra-op threads; 0 = $OMP_NUM_THREADS when set, else the CPUs this process may use."""
    device: str = "cpu"
    """Torch device for training (cpu or cuda)."""
    seed: int = 0
    """Seeds the episode split, the frame sampling and the initial weights."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"steps={self.steps}, batch_size={self.batch_size} and "
                f"checkpoint_every={self.checkpoint_every} must be >= 1"
            )
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must lie in [0, 1), got {self.holdout}")
        if self.lr <= 0 or self.warmup < 0 or self.max_frames < 1:
            raise ValueError(f"bad lr={self.lr}, warmup={self.warmup} or max_frames={self.max_frames}")

    def model_config(self, image_size: tuple[int, int]) -> VideoTokenizerConfig:
        return VideoTokenizerConfig(
            image_size=image_size,
            downsample=self.downsample,
            levels=self.levels,
            channels=self.channels,
            res_blocks=self.res_blocks,
        )


# ---------------------------------------------------------------------------------------------- data


@dataclass
class FrameSet:
    """Training frames of all datasets and held-out frames per dataset, as uint8 [N, H, W, 3]."""

    train: np.ndarray
    held_out: dict[str, np.ndarray] = field(default_factory=dict)


def split_episodes(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices; a fixed seeded permutation so that --resume sees the same split."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    k = 0 if n < 2 or holdout == 0 else max(1, round(holdout * n))
    return sorted(order[k:]), sorted(order[:k])


def load_frames(cfg: TrainVideoConfig) -> FrameSet:
    """Decode every needed frame once; the training set is strided so that it stays under cfg.max_frames."""
    from robotok.datasets.lerobot_v3 import LeRobotDataset

    plans = []  # (name, dataset, camera keys, train episodes, held-out episodes, frames per episode)
    for root in cfg.dataset:
        if not Path(root).is_dir():
            raise SystemExit(f"{PROG}: error: dataset {root} is not a directory; record one with robotok-record")
        ds = LeRobotDataset(root)
        keys = list(ds.camera_keys)
        if cfg.cameras:
            wanted = {c if c.startswith("observation.images.") else f"observation.images.{c}" for c in cfg.cameras}
            keys = [k for k in keys if k in wanted]
        if not keys:
            raise SystemExit(
                f"{PROG}: error: no camera of {list(cfg.cameras) or 'any'} in {root} "
                f"(it has {ds.camera_keys}); pass --cameras with some of those"
            )
        tr, ho = split_episodes(ds.num_episodes, cfg.holdout, cfg.seed)
        lengths = {i: len(ds.episode(i, load_images=False)["frame_index"]) for i in tr}
        plans.append((Path(root).name, ds, keys, tr, ho, lengths))
    total = sum(len(p[2]) * sum(p[5].values()) for p in plans)
    stride = max(1, math.ceil(total / cfg.max_frames))
    rng = np.random.default_rng(cfg.seed)
    train, held_out = [], {}
    for name, ds, keys, tr, ho, _ in tqdm(plans, desc="load frames", unit="dataset"):
        for i in tr:
            for k in keys:
                train.append(ds.episode_frames(i, k)[int(rng.integers(stride)) :: stride])
        ev = [ds.episode_frames(i, k) for i in ho for k in keys]
        if ev:
            ev = np.concatenate(ev)
            held_out[name] = ev[np.linspace(0, len(ev) - 1, min(len(ev), cfg.max_eval_frames)).astype(int)]
    shapes = {f.shape[1:] for f in train} | {f.shape[1:] for f in held_out.values()}
    if len(shapes) != 1:
        raise SystemExit(
            f"{PROG}: error: the datasets' frames differ in size ({sorted(shapes)}); record them at one image size"
        )
    return FrameSet(train=np.concatenate(train), held_out=held_out)


# ---------------------------------------------------------------------------------------------- training


def lr_at(step: int, cfg: TrainVideoConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def object_weights(x: torch.Tensor, gain: float) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, H, W]: 1 on the frame's dominant colour, up to 1 + gain elsewhere.

    The dominant colour (per-channel median: the table, the asphalt) covers most pixels, so a plain
    pixel loss is minimised first by painting it and leaves the few pixels of a 6 px cup for last;
    weighting pixels by their distance from it makes the small objects the policy needs count early.
    """
    med = x.flatten(2).median(dim=2).values[..., None, None]
    dist = (x - med).abs().sum(1, keepdim=True)
    return 1.0 + gain * (dist / 0.15).clamp(max=1.0)


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor, cfg: TrainVideoConfig) -> torch.Tensor:
    """Weighted L1 + mse_weight * MSE, plus edge_weight * L1 of the image gradients; y, x [B, 3, H, W].

    With ``cfg.object_weight`` > 0 the pixel terms are weighted by :func:`object_weights` (normalised
    to a mean weight of one per frame batch, so the loss scale and the learning rate do not move).
    """
    y = y.float()
    err = y - x
    if cfg.object_weight:
        w = object_weights(x, cfg.object_weight)
        w = w / w.mean()
        loss = (w * err.abs()).mean() + cfg.mse_weight * (w * err.square()).mean()
    else:
        loss = err.abs().mean() + cfg.mse_weight * err.square().mean()
    if cfg.edge_weight:
        gy = (y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
        gx = (y[..., :, 1:] - y[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
        loss = loss + cfg.edge_weight * (gy.abs().mean() + gx.abs().mean())
    return loss


def train_steps(
    model: VideoAutoencoder,
    opt: torch.optim.Optimizer,
    frames: torch.Tensor,
    cfg: TrainVideoConfig,
    start: int = 0,
    gen: torch.Generator | None = None,
    on_step=None,
    progress: bool = True,
) -> float:
    """Run steps start..cfg.steps-1 on frames[N, 3, H, W] uint8; returns the mean loss of the last 50 steps.

    `on_step(step)` is called after each step (checkpoints); batches come from `gen` (seeded, resumable).
    """
    assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[1] == 3, f"got {frames.shape}"
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    device = next(model.parameters()).device
    model.train()
    recent: list[float] = []
    amp = resolve_dtype(cfg.dtype, device) is not None
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", disable=not progress)
    for step in bar:
        idx = torch.randint(len(frames), (cfg.batch_size,), generator=gen)
        x = frames[idx].to(device).float().div_(255.0)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            y = model(x)
        loss = reconstruction_loss(y, x, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 25 == 0:
            bar.set_postfix({"train/loss": f"{np.mean(recent):.4f}", "lr": f"{lr_at(step, cfg):.1e}"})
        if on_step is not None:
            on_step(step)
    model.eval()
    return float(np.mean(recent)) if recent else float("nan")


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB between uint8 frame stacks [N, H, W, 3] (capped at 100 dB for identical frames)."""
    mse = ((a.astype(np.float32) - b.astype(np.float32)) ** 2).reshape(len(a), -1).mean(1)
    return np.minimum(100.0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10)))


def evaluate(tok: VideoTokenizer, held_out: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean held-out PSNR (dB) per dataset through the real encode -> ids -> decode path."""
    res = {}
    for name, frames in held_out.items():
        rec = tok.decode(tok.encode(frames))
        res[name] = {"psnr_db": float(psnr(frames, rec).mean()), "frames": len(frames)}
    return res


def _save_checkpoint(
    out: Path, tok: VideoTokenizer, opt: torch.optim.Optimizer, gen: torch.Generator, step: int, cfg: TrainVideoConfig
) -> None:
    tok.save(out)
    state = {
        "step": step,
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "train_config": json.dumps(asdict(cfg), default=str),
    }
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{STATE_FILE}.")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, out / STATE_FILE)


def train(cfg: TrainVideoConfig, frames: FrameSet | None = None) -> dict:
    """Train (or resume) and evaluate; returns the eval.json content. `frames` skips dataset loading."""
    torch.set_num_threads(cfg.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0)))
    torch.manual_seed(cfg.seed)
    frames = frames if frames is not None else load_frames(cfg)
    h, w = frames.train.shape[1:3]
    if h % cfg.downsample or w % cfg.downsample:
        raise SystemExit(f"{PROG}: error: frames are {h}x{w}, not divisible by --downsample {cfg.downsample}")
    mcfg = cfg.model_config((h, w))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start, gen = 0, torch.Generator().manual_seed(cfg.seed)
    if cfg.resume and (out / STATE_FILE).is_file():
        tok = VideoTokenizer.load(out, device=cfg.device)
        if tok.cfg != mcfg:
            raise SystemExit(
                f"{PROG}: error: --resume found a tokenizer {tok.cfg} in {out}, but the flags ask for "
                f"{mcfg}; use the same flags or a new --out"
            )
    else:
        if cfg.resume:
            print(f"{PROG}: no checkpoint in {out}; starting from scratch", file=sys.stderr)
        tok = VideoTokenizer(cfg=mcfg, device=cfg.device)
    opt = torch.optim.AdamW(tok.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    if cfg.resume and (out / STATE_FILE).is_file():
        state = torch.load(out / STATE_FILE, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start = int(state["step"]) + 1
    # Channels-first once, so each step only gathers and scales a batch.
    train_frames = torch.from_numpy(np.ascontiguousarray(frames.train.transpose(0, 3, 1, 2)))
    print(
        f"{PROG}: {len(train_frames)} training frames {h}x{w}, held out {sum(map(len, frames.held_out.values()))}; "
        f"{tok.tokens_per_frame} tokens/frame, vocab {tok.vocab_size}; steps {start}..{cfg.steps}",
        file=sys.stderr,
    )

    def on_step(step: int) -> None:
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(out, tok, opt, gen, step, cfg)

    t0 = time.perf_counter()
    final_loss = train_steps(tok.model, opt, train_frames, cfg, start=start, gen=gen, on_step=on_step)
    train_s = time.perf_counter() - t0
    tok.model.eval()
    result = {
        "eval": evaluate(tok, frames.held_out),
        "train/loss": final_loss,
        "train/seconds": round(train_s, 1),
        "train/steps": cfg.steps,
        "train/frames": len(train_frames),
        "tokens_per_frame": tok.tokens_per_frame,
        "vocab_size": tok.vocab_size,
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
    }
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{EVAL_FILE}.")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, out / EVAL_FILE)
    for name, r in result["eval"].items():
        print(f"{PROG}: held-out {name}: PSNR {r['psnr_db']:.2f} dB over {r['frames']} frames", file=sys.stderr)
    return result


def main() -> None:
    cfg = tyro.cli(TrainVideoConfig)
    if not cfg.dataset:
        raise SystemExit(f"{PROG}: error: no --dataset given; pass one or more LeRobot dataset directories")
    train(cfg)


if __name__ == "__main__":
    main()
