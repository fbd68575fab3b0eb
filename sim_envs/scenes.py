"""``robotok-record-scenes``: the first frame of many fresh scenes, with where the prompted object is in it.

A policy that must find the cup its prompt names learns that from many scenes, and demonstrations are what
cost: the frame stem of a 500-demonstration policy never learned which cup is named (README, "Which choices
mattered"), while the same stem told directly which cell of the image holds the named cup learns it from
5,000 scenes in seconds. A scene is one reset and one render (a few ms). This writes, per scene, the
prompt, one camera's first frame and the pixel of the prompted object in it; ``robotok-pretokenize
--scenes`` tokenises them and ``robotok-train --ground-weight`` adds the pointing loss. The pixel is a
training target only: the policy's inputs stay the prompt, the camera and the state.

    robotok-record-scenes --env robotok/PickCup-v0 --scenes 5000 --out runs/demo/scenes/pickcup.npz

Seeds start at 1,000,000 by default, apart from demonstrations (from 0) and evaluation (from 100,000).
The file is written whole or not at all (a temporary file, then a rename).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import tyro
from tqdm import tqdm

from robotok.sim_envs import json_object  # importing the package also registers the env ids

SCENES_FORMAT = "robotok-scenes-v1"


@dataclass
class ScenesConfig:
    """Record first frames of fresh scenes with the prompted object's pixel (a training target)."""

    env: str = "robotok/PickCup-v0"
    """gymnasium env id of a task whose prompt names an object (its env has ``target_pixel``)."""
    scenes: int = 5000
    """Number of scenes (one seed each)."""
    out: Path = Path("data/pickcup_scenes.npz")
    """Output file (.npz)."""
    seed_start: int = 1_000_000
    """First seed; scene i uses seed_start + i."""
    camera: str = "front"
    """Camera whose first frame is kept."""
    width: int = 64
    height: int = 64
    env_kwargs: str = "{}"
    """JSON object of extra gym.make keyword arguments, e.g. '{"num_cups": 2}'."""

    def __post_init__(self) -> None:
        if self.scenes < 1 or self.seed_start < 0:
            raise ValueError(f"scenes {self.scenes} must be >= 1 and seed_start {self.seed_start} >= 0")
        if self.out.suffix != ".npz":
            raise ValueError(f"out {self.out}: give a .npz file name")


def record_scenes(cfg: ScenesConfig, progress: bool = True) -> dict:
    """Render ``cfg.scenes`` first frames and write ``cfg.out``; returns a summary."""
    if cfg.env not in gym.registry:
        known = ", ".join(k for k in gym.registry if k.startswith("robotok/"))
        raise ValueError(f"unknown env id {cfg.env!r}; use one of: {known}")
    env = gym.make(cfg.env, width=cfg.width, height=cfg.height, **json_object("env_kwargs", cfg.env_kwargs))
    base = env.unwrapped
    if not hasattr(base, "target_pixel"):
        env.close()
        raise ValueError(f"{cfg.env} names no object to point at (its env has no target_pixel); use PickCup")
    n, t0 = cfg.scenes, time.perf_counter()
    frames = np.zeros((n, cfg.height, cfg.width, 3), np.uint8)
    pixel = np.zeros((n, 2), np.float32)
    prompts = []
    try:
        for i in tqdm(range(n), desc=f"scenes {cfg.env}", unit="scene", disable=not progress):
            obs, info = env.reset(seed=cfg.seed_start + i)
            if cfg.camera not in obs["pixels"]:
                raise ValueError(f"camera {cfg.camera!r} not in {sorted(obs['pixels'])}")
            frames[i] = obs["pixels"][cfg.camera]
            pixel[i] = base.target_pixel(cfg.camera)
            prompts.append(info["prompt"])
    finally:
        env.close()
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{cfg.out.name}.", suffix=".npz", dir=cfg.out.parent)
    os.close(fd)
    try:
        np.savez_compressed(
            tmp,
            frames=frames,
            pixel=pixel,
            prompt=np.asarray(prompts),
            seed=np.arange(cfg.seed_start, cfg.seed_start + n, dtype=np.int64),
            meta=np.asarray([SCENES_FORMAT, cfg.env, cfg.camera]),
        )
        os.replace(tmp, cfg.out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"out": str(cfg.out), "scenes": n, "wall_s": time.perf_counter() - t0, "mb": cfg.out.stat().st_size / 2**20}


def load_scenes(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``robotok-record-scenes`` file: frames [N, H, W, 3], pixel [N, 2] (row, col), prompt [N]."""
    with np.load(path) as z:
        if "meta" not in z or str(z["meta"][0]) != SCENES_FORMAT:
            raise ValueError(f"{path} is not a robotok-record-scenes file; make it with robotok-record-scenes")
        return {k: z[k] for k in ("frames", "pixel", "prompt")} | {"camera": str(z["meta"][2])}


def main() -> None:
    cfg = tyro.cli(ScenesConfig)
    try:
        s = record_scenes(cfg)
    except ValueError as e:
        raise SystemExit(f"robotok-record-scenes: error: {e}") from None
    print(f"robotok-record-scenes: {s['scenes']} scenes -> {s['out']} ({s['mb']:.1f} MB) in {s['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
