"""How well and how fast the video tokenizer compresses frames, against bicubic and JPEG at >= its bit budget.

On held-out episodes of each dataset (the split the trainer used: same holdout share and seed, read from
`<tokenizer>/eval.json` when there): PSNR and SSIM, codebook usage (share of codes used, perplexity),
encode/decode frames/s at batch 1 and 64. Baselines, measured in the same run on the same frames:

- bicubic: down-sample to the smallest s x s x 3 uint8 image holding >= the tokenizer's bits, then up again;
- JPEG (Pillow): per frame, the lowest quality whose file has >= the tokenizer's bytes (headers included).

Writes `<out>/video_tokenizer.json` and `<out>/video_tokenizer_grid.png` (rows per dataset: original,
tokenizer, bicubic, JPEG).

    python benchmarks/video_tokenizer.py --tokenizer runs/video_tok --dataset runs/data/pickcup runs/data/drive
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from PIL import Image

from robotok.tokenizers.train_video import psnr, split_episodes
from robotok.tokenizers.video import VideoTokenizer


@dataclass
class BenchConfig:
    """Benchmark a trained video tokenizer on held-out episodes."""

    tokenizer: Path = Path("runs/video_tokenizer")
    """Directory written by robotok-train-video-tokenizer (or VideoTokenizer.save)."""
    dataset: tuple[Path, ...] = ()
    """LeRobot dataset directories; each is reported on its own."""
    out: Path = Path("benchmarks/results/video_tokenizer")
    """Where the JSON and the PNG grid go."""
    cameras: tuple[str, ...] = ()
    """Camera names or keys; empty = the cameras the tokenizer was trained on (its eval.json), else every camera."""
    max_frames: int = 600
    """Held-out frames per dataset (evenly spaced)."""
    threads: int = 0
    """torch threads for the speed figures; 0 = torch's default."""


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, mean over RGB) of uint8 [N, H, W, 3]."""
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, 11, 11).contiguous()
    x, y = (torch.from_numpy(v).permute(0, 3, 1, 2).double() for v in (a, b))
    blur = lambda t: F.conv2d(t, w.double(), groups=3)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def bicubic(frames: np.ndarray, bits: float) -> tuple[np.ndarray, float]:
    """Down to the smallest s x s with 24*s*s >= bits, up again; returns (reconstructions, bits per frame)."""
    s = math.ceil(math.sqrt(bits / 24))
    h, w = frames.shape[1:3]
    rec = [np.asarray(Image.fromarray(f).resize((s, s), Image.BICUBIC).resize((w, h), Image.BICUBIC)) for f in frames]
    return np.stack(rec), 24.0 * s * s


def jpeg(frames: np.ndarray, min_bytes: float) -> tuple[np.ndarray, float, float]:
    """Per frame the lowest quality whose JPEG has >= min_bytes; returns (recs, mean bytes, mean quality)."""
    recs, sizes, qs = [], [], []
    for f in frames:
        for q in range(1, 96):
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=q)
            if buf.tell() >= min_bytes:
                break
        recs.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
        sizes.append(buf.tell())
        qs.append(q)
    return np.stack(recs), float(np.mean(sizes)), float(np.mean(qs))


def codebook_usage(ids: np.ndarray, vocab: int) -> dict[str, float]:
    """Share of the codebook used and the perplexity exp(H) of the code histogram (vocab = uniform use)."""
    counts = np.bincount(ids.ravel(), minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {"used_share": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum()))}


def frames_per_s(fn, inputs: np.ndarray, batch: int, min_frames: int) -> float:
    fn(inputs[:batch])  # warm-up
    n, t = 0, time.perf_counter()
    while n < min_frames:
        for i in range(0, len(inputs) - batch + 1, batch):
            fn(inputs[i : i + batch])
            n += batch
            if n >= min_frames:
                break
    return n / (time.perf_counter() - t)


def held_out_frames(root: Path, cfg: BenchConfig, holdout: float, seed: int) -> np.ndarray:
    from robotok.datasets.lerobot_v3 import LeRobotDataset

    ds = LeRobotDataset(root)
    keys = [k for k in ds.camera_keys if not cfg.cameras or k in cfg.cameras or k.split(".")[-1] in cfg.cameras]
    _, ho = split_episodes(ds.num_episodes, holdout, seed)
    if not ho:
        raise SystemExit(f"video_tokenizer: error: {root} has {ds.num_episodes} episode(s), none held out")
    frames = np.concatenate([ds.episode_frames(i, k) for i in ho for k in keys])
    return frames[np.linspace(0, len(frames) - 1, min(len(frames), cfg.max_frames)).astype(int)]


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    if not cfg.dataset:
        raise SystemExit("video_tokenizer: error: pass --dataset DIR [DIR ...]")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = VideoTokenizer.load(cfg.tokenizer)
    train_cfg = {}
    if (cfg.tokenizer / "eval.json").is_file():
        train_cfg = json.loads((cfg.tokenizer / "eval.json").read_text()).get("config", {})
    holdout, seed = float(train_cfg.get("holdout", 0.1)), int(train_cfg.get("seed", 0))
    if not cfg.cameras and train_cfg.get("cameras"):
        cfg.cameras = tuple(train_cfg["cameras"])  # score the views it was trained on, not every camera
    bits = tok.bits_per_frame
    print(
        f"tokenizer {cfg.tokenizer}: {tok.tokens_per_frame} tokens/frame x log2({tok.vocab_size}) = {bits:.0f} "
        f"bits = {bits / 8:.0f} bytes per frame; held-out share {holdout}, seed {seed}; "
        f"cameras {', '.join(cfg.cameras) or 'all'}; "
        f"torch threads {torch.get_num_threads()}"
    )
    report: dict = {
        "tokenizer": str(cfg.tokenizer),
        "tokens_per_frame": tok.tokens_per_frame,
        "vocab_size": tok.vocab_size,
        "bits_per_frame": bits,
        "datasets": {},
    }
    grid_rows, all_ids, held = [], [], []
    for root in cfg.dataset:
        frames = held_out_frames(root, cfg, holdout, seed)
        held.append(frames[:128])
        ids = tok.encode(frames)
        all_ids.append(ids)
        rec = tok.decode(ids)
        bic, bic_bits = bicubic(frames, bits)
        jpg, jpg_bytes, jpg_q = jpeg(frames, bits / 8)
        r = {
            "frames": len(frames),
            "tokenizer": {
                "psnr_db": float(psnr(frames, rec).mean()),
                "ssim": float(ssim(frames, rec).mean()),
                "bits_per_frame": bits,
                **codebook_usage(ids, tok.vocab_size),
            },
            "bicubic": {
                "psnr_db": float(psnr(frames, bic).mean()),
                "ssim": float(ssim(frames, bic).mean()),
                "bits_per_frame": bic_bits,
            },
            "jpeg": {
                "psnr_db": float(psnr(frames, jpg).mean()),
                "ssim": float(ssim(frames, jpg).mean()),
                "bits_per_frame": 8 * jpg_bytes,
                "mean_quality": jpg_q,
            },
        }
        for base in ("bicubic", "jpeg"):
            r[f"vs_{base}"] = {
                "psnr_gain_db": r["tokenizer"]["psnr_db"] - r[base]["psnr_db"],
                "ssim_ratio": r["tokenizer"]["ssim"] / r[base]["ssim"],
                "bits_ratio": r[base]["bits_per_frame"] / bits,
            }
        report["datasets"][root.name] = r
        print(f"\n{root.name}: {len(frames)} held-out frames")
        print(f"  {'method':<10}{'PSNR dB':>9}{'SSIM':>8}{'bits/frame':>12}")
        for m in ("tokenizer", "bicubic", "jpeg"):
            print(f"  {m:<10}{r[m]['psnr_db']:>9.2f}{r[m]['ssim']:>8.3f}{r[m]['bits_per_frame']:>12.0f}")
        for base in ("bicubic", "jpeg"):
            v = r[f"vs_{base}"]
            print(
                f"  vs {base}: PSNR {v['psnr_gain_db']:+.2f} dB, SSIM x{v['ssim_ratio']:.2f}, "
                f"with x{v['bits_ratio']:.2f} the bits for {base}"
            )
        print(
            f"  codebook: {100 * r['tokenizer']['used_share']:.1f}% of codes used, "
            f"perplexity {r['tokenizer']['perplexity']:.0f} of {tok.vocab_size}"
        )
        pick = np.linspace(0, len(frames) - 1, 8).astype(int)
        for row in (frames, rec, bic, jpg):
            grid_rows.append(np.concatenate(list(row[pick]), axis=1))
    report["codebook_all"] = codebook_usage(np.concatenate([i.ravel() for i in all_ids]), tok.vocab_size)

    sample = np.concatenate(held)
    sample = np.concatenate([sample] * math.ceil(128 / len(sample)))[:128]
    sample_ids = tok.encode(sample)
    speed = {}
    for b in (1, 64):
        speed[f"encode_fps_b{b}"] = frames_per_s(tok.encode, sample, b, 64 if b == 1 else 256)
        speed[f"decode_fps_b{b}"] = frames_per_s(tok.decode, sample_ids, b, 64 if b == 1 else 256)
    report["speed"] = speed
    print("\nspeed (frames/s): " + ", ".join(f"{k} {v:.0f}" for k, v in speed.items()))

    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "video_tokenizer.json").write_text(json.dumps(report, indent=2) + "\n")
    grid = np.concatenate(grid_rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(
        cfg.out / "video_tokenizer_grid.png"
    )
    print(
        f"wrote {cfg.out / 'video_tokenizer.json'} and {cfg.out / 'video_tokenizer_grid.png'} "
        "(rows per dataset: original, tokenizer, bicubic, JPEG)"
    )


if __name__ == "__main__":
    main()
