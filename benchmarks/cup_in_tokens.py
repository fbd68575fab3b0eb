"""Do the video tokens still say where the named cup is? The prompted cup located in raw vs tokenized frames.

PickCup asks the policy to find the cup whose colour the prompt names. If the video tokenizer loses that cup,
no policy can; if it keeps it, a failing policy has not learned to read it. This measures which: in the first
frame of each episode of a PickCup dataset (the arm at its home pose, every cup in view), the named cup is
located by colour (the ``top`` pixels whose chromaticity is nearest the cup's, saturated ones first; their
centroid) in the raw frame and in the same frame after the video tokenizer (encode, decode), and the two
centroids are compared in pixels. Baseline in the same run, on the same frames: bicubic down-sampling to the
smallest image holding at least the tokenizer's bits, and up again (``benchmarks/video_tokenizer.py``'s).
White cups are skipped (no hue to match).

    python benchmarks/cup_in_tokens.py --tokenizer runs/demo/tokenizers/video --dataset runs/demo/data/pickcup
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from video_tokenizer import bicubic  # benchmarks/video_tokenizer.py, beside this script

from robotok.datasets.lerobot_v3 import LeRobotDataset
from robotok.sim_envs.pick_cup import CUP_COLORS
from robotok.tokenizers.video import VideoTokenizer


@dataclass
class BenchConfig:
    """Locate the prompted cup in raw and tokenized PickCup frames."""

    tokenizer: Path = Path("runs/demo/tokenizers/video")
    """Directory written by robotok-train-video-tokenizer."""
    dataset: Path = Path("runs/demo/data/pickcup")
    """A PickCup LeRobot dataset (robotok-record --env robotok/PickCup-v0)."""
    episodes: int = 300
    """Episodes to use (their first frames), from the first."""
    camera: str = "front"
    """Camera to look through."""
    top: int = 12
    """Pixels whose centroid locates the cup (a cup covers ~20-40 pixels at 64x64)."""
    tolerance: float = 3.0
    """Pixels within which the located cups count as the same place."""
    out: Path = Path("")
    """Optional JSON file for the figures."""


def locate(image: np.ndarray, rgb: tuple[float, float, float], top: int) -> np.ndarray:
    """(row, col) centroid of the ``top`` pixels of uint8 [H, W, 3] nearest ``rgb`` (floats in [0, 1]) in
    chromaticity, saturated pixels preferred (the table and the arm are grey)."""
    f = image.astype(np.float64) + 1.0
    chroma = f / f.sum(-1, keepdims=True)
    want = (np.asarray(rgb) + 0.01) / (float(np.sum(rgb)) + 0.03)
    score = np.linalg.norm(chroma - want, axis=-1) - 0.002 * (f.max(-1) - f.min(-1))
    rows, cols = np.unravel_index(np.argsort(score.ravel())[:top], score.shape)
    return np.array([rows.mean(), cols.mean()])


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    vt, ds = VideoTokenizer.load(cfg.tokenizer), LeRobotDataset(cfg.dataset)
    key = f"observation.images.{cfg.camera}"
    if key not in ds.camera_keys:
        raise SystemExit(f"cup_in_tokens.py: error: {cfg.dataset} has cameras {ds.camera_keys}, not {key}")
    bits = vt.bits_per_frame
    errors: dict[str, dict[str, list[float]]] = {"tokenizer": {}, "bicubic": {}}
    for i in range(min(cfg.episodes, ds.num_episodes)):
        task = ds.episode(i, load_images=False)["task"]
        color = next((c for c in CUP_COLORS if re.search(rf"\b{c}\b", task)), None)
        if color is None:
            raise SystemExit(f"cup_in_tokens.py: error: episode {i} prompt {task!r} names no cup colour")
        if color == "white":
            continue
        raw = np.asarray(ds.episode_frames(i, key))[:1]
        recs = {"tokenizer": vt.decode(vt.encode(raw)), "bicubic": bicubic(raw, bits)[0]}
        where = locate(raw[0], CUP_COLORS[color], cfg.top)
        for name, rec in recs.items():
            err = float(np.linalg.norm(locate(rec[0], CUP_COLORS[color], cfg.top) - where))
            errors[name].setdefault(color, []).append(err)
    result = {"tokenizer_dir": str(cfg.tokenizer), "dataset": str(cfg.dataset), "bits_per_frame": bits}
    for name, per_color in errors.items():
        every = np.concatenate([np.asarray(v) for v in per_color.values()])
        result[name] = {
            "frames": int(len(every)),
            "median_px": float(np.median(every)),
            "within_tolerance": float(np.mean(every <= cfg.tolerance)),
            "median_px_per_colour": {c: float(np.median(v)) for c, v in sorted(per_color.items())},
        }
        print(
            f"{name:9s} named cup found within {cfg.tolerance:.0f} px of its raw place in "
            f"{result[name]['within_tolerance']:.0%} of {len(every)} frames (median {result[name]['median_px']:.1f} px)"
        )
    print(f"(bicubic at {bits:.0f} bits per frame, the tokenizer's budget, in the same run)")
    if cfg.out != Path(""):
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
