"""``robotok-record-scenes``: a frame of many fresh scenes, with where the prompted object is in it.

A policy that must find the cup its prompt names learns that from many scenes, and demonstrations are what
cost: the frame stem of a 500-demonstration policy never learned which cup is named (README, "Which choices
mattered"), while the same stem told directly which cell of the image holds the named cup learns it from
5,000 scenes in seconds. A scene is one reset and one render (a few ms). This writes, per scene, the
prompt, one camera's first frame (or, with ``--rollout K``, its frame after a random 0..K steps of the noisy
scripted expert, so that the arm is in the picture as in a policy's later frames; ~1 ms per step without
rendering) and the pixel of the prompted object in it; ``robotok-pretokenize --scenes`` tokenises them and
``robotok-train --ground-weight`` adds the pointing loss. The pixel is a training target only: the policy's
inputs stay the prompt, the camera and the state.

    robotok-record-scenes --scenes 5000 --rollout 45 --workers 2 --out runs/demo/scenes/pickcup.npz

Seeds start at 1,000,000 by default, apart from demonstrations (from 0) and evaluation (from 100,000).
The file is written whole or not at all (a temporary file, then a rename).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import tyro
from tqdm import tqdm

from robotok.sim_envs import json_object, make_expert  # importing the package also registers the env ids
from robotok.sim_envs.pick_cup_expert import PickCupExpert

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
    rollout: int = 0
    """Keep the frame after a random 0..rollout steps of the scripted expert (drawn per scene from its seed)
    instead of the first: the arm then reaches over, in front of and under the cup as in a policy's later
    frames (0: first frames only)."""
    noise: float = 0.3
    """The expert's action noise during --rollout (robotok-record --noise)."""
    rollout_any_cup: bool = False
    """During --rollout the expert reaches for a cup drawn at random (the named one among them) instead of the
    named one: in a camera that follows the gripper (the wrist's) the cup under it then does not tell which one
    the prompt names."""
    workers: int = 1
    """Processes that render scenes (spawned; each makes its own renderer)."""

    def __post_init__(self) -> None:
        if self.scenes < 1 or self.workers < 1 or self.seed_start < 0 or self.rollout < 0 or self.noise < 0:
            raise ValueError(
                f"scenes {self.scenes} and workers {self.workers} must be >= 1; seed_start {self.seed_start}, "
                f"rollout {self.rollout} and noise {self.noise} >= 0"
            )
        if self.rollout_any_cup and not self.rollout:
            raise ValueError("--rollout-any-cup picks the cup the --rollout steps reach for: set --rollout too")
        if self.out.suffix != ".npz":
            raise ValueError(f"out {self.out}: give a .npz file name")


def _make_env(cfg: ScenesConfig) -> gym.Env:
    """The env without observation cameras (a scene renders its one camera once, at the end)."""
    kwargs = {**json_object("env_kwargs", cfg.env_kwargs), "cameras": ()}
    try:
        env = gym.make(cfg.env, width=cfg.width, height=cfg.height, **kwargs)
    except TypeError:
        env = None
    if env is None or not hasattr(env.unwrapped, "target_pixel"):
        if env is not None:
            env.close()
        raise ValueError(f"{cfg.env} names no object to point at (its env has no target_pixel); use PickCup")
    if cfg.camera not in env.unwrapped.CAMERAS:
        env.close()
        raise ValueError(f"camera {cfg.camera!r}: choose from {env.unwrapped.CAMERAS}")
    return env


def render_range(cfg: ScenesConfig, first: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Scenes ``first .. first+n-1`` of ``cfg``: frames [n, H, W, 3], the prompted object's pixels [n, 2], the
    robot's effector's pixels [n, 2] (NaN if the env has none), prompts. Runs in a worker."""
    env = _make_env(cfg)
    base = env.unwrapped
    frames = np.zeros((n, cfg.height, cfg.width, 3), np.uint8)
    pixel = np.zeros((n, 2), np.float32)
    effector = np.full((n, 2), np.nan, np.float32)  # NaN: the env names no effector
    prompts = []
    try:
        for j in range(n):
            seed = cfg.seed_start + first + j
            obs, info = env.reset(seed=seed)
            if cfg.rollout:
                if cfg.rollout_any_cup:  # the expert reaches for a cup drawn from the scene's seed
                    cup = int(np.random.default_rng([seed, 11]).integers(len(base.cup_colors)))
                    expert = PickCupExpert(env, noise=cfg.noise, cup=cup)
                else:
                    expert = make_expert(env, noise=cfg.noise)
                for _ in range(np.random.default_rng([seed, 7]).integers(cfg.rollout + 1)):
                    obs, _, terminated, truncated, _ = env.step(np.asarray(expert(obs), np.float32))
                    if terminated or truncated:
                        break
            frames[j] = base.render_camera(cfg.camera)
            pixel[j] = base.target_pixel(cfg.camera)
            if hasattr(base, "effector_pixel"):
                effector[j] = base.effector_pixel(cfg.camera)
            prompts.append(info["prompt"])
    finally:
        env.close()
    return frames, pixel, effector, prompts


def record_scenes(cfg: ScenesConfig, progress: bool = True) -> dict:
    """Render ``cfg.scenes`` scenes (over ``cfg.workers`` processes) and write ``cfg.out``; returns a summary."""
    if cfg.env not in gym.registry:
        known = ", ".join(k for k in gym.registry if k.startswith("robotok/"))
        raise ValueError(f"unknown env id {cfg.env!r}; use one of: {known}")
    _make_env(cfg).close()  # bad env or kwargs fail here, before any worker starts
    n, t0 = cfg.scenes, time.perf_counter()
    step = max(1, min(200, -(-n // (4 * cfg.workers))))  # chunks: a few per worker, for the progress bar
    chunks = [(i, min(step, n - i)) for i in range(0, n, step)]
    bar = tqdm(total=n, desc=f"scenes {cfg.env}", unit="scene", disable=not progress)
    if cfg.workers == 1:
        parts = []
        for i, k in chunks:
            parts.append(render_range(cfg, i, k))
            bar.update(k)
    else:  # spawn: a process forked after a GL context exists hangs
        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(render_range, cfg, i, k) for i, k in chunks]
            for f in as_completed(futures):
                bar.update(len(f.result()[3]))
            parts = [f.result() for f in futures]
    bar.close()
    frames = np.concatenate([p[0] for p in parts])
    pixel = np.concatenate([p[1] for p in parts])
    effector = np.concatenate([p[2] for p in parts])
    prompts = [x for p in parts for x in p[3]]
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{cfg.out.name}.", suffix=".npz", dir=cfg.out.parent)
    os.close(fd)
    try:
        np.savez_compressed(
            tmp,
            frames=frames,
            pixel=pixel,
            effector=effector,
            prompt=np.asarray(prompts),
            seed=np.arange(cfg.seed_start, cfg.seed_start + n, dtype=np.int64),
            meta=np.asarray([SCENES_FORMAT, cfg.env, cfg.camera]),
            rollout=np.int64(cfg.rollout),
        )
        os.replace(tmp, cfg.out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"out": str(cfg.out), "scenes": n, "wall_s": time.perf_counter() - t0, "mb": cfg.out.stat().st_size / 2**20}


def load_scenes(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``robotok-record-scenes`` file: frames [N, H, W, 3], pixel [N, 2] (row, col), effector
    [N, 2] (the robot's grip; NaN where unknown, also for files from before it was recorded), prompt [N]."""
    with np.load(path) as z:
        if "meta" not in z or str(z["meta"][0]) != SCENES_FORMAT:
            raise ValueError(f"{path} is not a robotok-record-scenes file; make it with robotok-record-scenes")
        out = {k: z[k] for k in ("frames", "pixel", "prompt")} | {"camera": str(z["meta"][2])}
        out["effector"] = z["effector"] if "effector" in z else np.full_like(out["pixel"], np.nan)
        return out


def main() -> None:
    cfg = tyro.cli(ScenesConfig)
    try:
        s = record_scenes(cfg)
    except ValueError as e:
        raise SystemExit(f"robotok-record-scenes: error: {e}") from None
    print(f"robotok-record-scenes: {s['scenes']} scenes -> {s['out']} ({s['mb']:.1f} MB) in {s['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
