"""``robotok-record``: run a scripted expert over seeds and save the episodes as a LeRobotDataset v3.0.

Each episode is one env seed: reset, make the expert (``robotok.sim_envs.make_expert``), step until the
episode ends. Frame t stores the observation before step t and the action taken there (LeRobot's
convention); the prompt is the task. Under ``--noise`` the expert's perturbations move the robot off its path and
it recovers; the stored ``action`` is then the expert's intended command at each step, not the perturbed one that
was executed (``--label``, DART-style: the states show recoveries, the labels stay the expert's), and the
executed one is kept as ``action.executed``. Cameras become ``observation.images.<cam>`` videos, ``agent_pos``
becomes ``observation.state``. Failed episodes are dropped unless ``--keep-failed``.

Worker w of W records seeds ``seed_start + w + k*W`` (k = 0, 1, ...) until it has its share of the
episodes, encoding each episode into its own data and video files as soon as it ends; the parent then
assembles the parts (renumbering files, no re-encoding) and writes meta/. The dataset's episodes are
worker 0's, then worker 1's, ...; ``meta/recording.json`` lists each episode's seed.

``record(cfg, make_actor, handover)`` records corrections of an actor (DAgger-style, Ross et al. 2011; the trained
policy of ``robotok-record-corrections``, which owns the torch side): in each episode the actor drives for its first
K steps (K drawn from 1..``handover`` by the seed) and the expert, walked along the same states, labels every step
with what it would command there; then the expert takes over and finishes. The states are the actor's own mistakes,
the labels say how to get out of them, and the episode still ends where a demonstration ends (lifted cup, route
done), which is what ``robotok-pretokenize --goal`` reads as its goal. ``action.executed`` holds what was executed
(the actor's actions, then the expert's).

``--every-target`` records each scene once per candidate target (each cup of a PickCup scene named in turn,
each Drive route), so the dataset holds the same first frames under different prompts with different
actions: what the prompt changes is then in the data itself, not only across scenes that also differ in
everything else. ``--episodes`` still counts episodes (a scene with 3 cups gives 3).

    robotok-record --env robotok/PickCup-v0 --episodes 200 --out data/pickcup --workers 2
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import tyro
from tqdm import tqdm

from robotok.datasets.layout import assemble
from robotok.datasets.lerobot_v3 import LeRobotDatasetWriter
from robotok.sim_envs import json_object, make_expert, scene_targets  # importing the package also registers the env ids


class RecordError(RuntimeError):
    """A recording that cannot complete (a worker failed, the expert never succeeded)."""


@dataclass
class RecordConfig:
    """Record scripted-expert demonstrations as a LeRobotDataset v3.0 directory."""

    env: str = "robotok/PickCup-v0"
    """gymnasium env id (robotok/PickCup-v0 or robotok/Drive-v0)."""
    episodes: int = 50
    """number of episodes to save."""
    out: Path | None = None
    """output directory (must not exist); default data/<env name>, e.g. data/pickcup."""
    workers: int = 1
    """processes recording in parallel, each with its own env."""
    noise: float = 0.0
    """expert action noise (perturbations the expert recovers from), for more diverse demonstrations."""
    label: Literal["intended", "executed"] = "intended"
    """what a step's ``action`` holds under noise: the expert's command without the perturbation (intended:
    the states show recoveries, the labels never copy the perturbation) or the perturbed command that moved
    the robot (executed). With intended and noise > 0, ``action.executed`` holds the latter."""
    seed_start: int = 0
    """first env seed; episodes use consecutive seeds (interleaved across workers)."""
    keep_failed: bool = False
    """also save episodes where the expert did not succeed."""
    width: int = 64
    """camera image width in pixels."""
    height: int = 64
    """camera image height in pixels."""
    crf: int = 0
    """H.264 (yuv444p) quality of the camera videos: 0 keeps frames within 2 levels; higher is smaller, lossier."""
    env_kwargs: str = "{}"
    """JSON object of keyword arguments for gym.make, e.g. '{"num_cups": 1}' (one cup: nothing to choose)."""
    every_target: bool = False
    """record each seed once per candidate target of its scene (each cup named, each route), not once."""
    max_attempts_per_episode: float = 3.0
    """give up once a worker has tried this many seeds per episode of its share (expert failing a lot)."""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.workers < 1:
            raise ValueError(f"episodes={self.episodes}, workers={self.workers}: both must be >= 1")
        if self.noise < 0:
            raise ValueError(f"noise={self.noise}: must be >= 0")
        if not (8 <= self.width <= 1024 and 8 <= self.height <= 1024):
            raise ValueError(f"width={self.width}, height={self.height}: need values in [8, 1024]")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf={self.crf}: H.264 crf is in [0, 51]")
        if self.max_attempts_per_episode < 1:
            raise ValueError(f"max_attempts_per_episode={self.max_attempts_per_episode}: must be >= 1")
        json_object("env_kwargs", self.env_kwargs)
        if self.out is None:
            self.out = Path("data") / self.env.split("/")[-1].split("-v")[0].lower()


def check_corrections(cfg: RecordConfig, handover: int) -> None:
    """Refuse settings that corrections cannot have (``ValueError`` naming the fix)."""
    if cfg.label == "executed":
        raise ValueError("corrections store the expert's labels of the actor's steps: drop --label executed")
    if cfg.every_target:
        raise ValueError("corrections are recorded for one prompt per scene: drop --every-target")
    if handover < 1:
        raise ValueError(f"handover={handover}: the policy drives for at least 1 step")


def handover_step(seed: int, handover: int) -> int:
    """The step at which the expert takes over from ``--policy`` in episode ``seed``: 1..handover."""
    return int(np.random.default_rng([seed, 9176]).integers(1, handover + 1))


def run_episode(
    env: Any,
    seed: int,
    noise: float,
    options: dict[str, Any] | None = None,
    label: str = "intended",
    actor: Any = None,
    handover: int = 0,
) -> tuple[dict[str, np.ndarray], str, bool]:
    """One expert episode: (frames dict keyed as the dataset's features, prompt, success).
    ``options`` go to ``env.reset`` (e.g. ``{"target_color": "red"}``); ``label`` as ``RecordConfig.label``.
    With ``actor`` (``reset()``, ``select_action(obs)``: a policy) the actor drives the first ``handover`` steps
    and the expert's intended command labels them; then the expert drives."""
    obs, info = env.reset(seed=seed, options=options)
    expert = make_expert(env, noise=noise)
    prompt = info["prompt"]
    states, intended, executed, images = [], [], [], {cam: [] for cam in obs["pixels"]}
    if actor is not None:
        actor.reset()
    done = False
    while not done:
        want, action = expert.act(obs)  # every step: the expert's phase follows the states it is shown
        if actor is not None and len(states) < handover:
            action = np.asarray(actor.select_action({**obs, "task": prompt}), dtype=np.float32)
        states.append(np.asarray(obs["agent_pos"], dtype=np.float32))
        intended.append(np.asarray(want, dtype=np.float32))
        executed.append(np.asarray(action, dtype=np.float32))
        for cam, image in obs["pixels"].items():
            images[cam].append(image)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    episode = {"observation.state": np.stack(states)}
    if label == "executed" or (noise == 0 and actor is None):
        episode["action"] = np.stack(executed)
    else:
        episode["action"], episode["action.executed"] = np.stack(intended), np.stack(executed)
    episode.update({f"observation.images.{cam}": np.stack(frames) for cam, frames in images.items()})
    return episode, prompt, bool(info.get("is_success", False))


def features_of(episode: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Dataset features from one recorded episode."""
    feats: dict[str, dict[str, Any]] = {}
    for key, x in episode.items():
        if key.startswith("observation.images."):
            feats[key] = {"dtype": "video", "shape": list(x.shape[1:]), "names": ["height", "width", "channels"]}
        else:
            feats[key] = {"dtype": "float32", "shape": [x.shape[1]], "names": None}
    return feats


def record_part(
    cfg: RecordConfig,
    worker: int,
    quota: int,
    part_dir: str,
    report: Callable[[tuple], None],
    make_actor: Callable[[], Any] | None = None,
    handover: int = 0,
) -> dict:
    """Worker body: record ``quota`` kept episodes into ``part_dir``; returns the part's manifest. ``make_actor``
    (picklable) builds, in the worker, the actor whose corrections are recorded (it drives 1..``handover``
    steps)."""
    env = gym.make(cfg.env, width=cfg.width, height=cfg.height, **json_object("env_kwargs", cfg.env_kwargs))
    fps = int(env.metadata.get("render_fps") or round(1 / env.unwrapped.dt))
    actor = make_actor() if make_actor is not None else None
    writer: LeRobotDatasetWriter | None = None
    seeds, attempts, successes, k = [], 0, 0, 0
    max_attempts = int(np.ceil(cfg.max_attempts_per_episode * quota)) if not cfg.keep_failed else quota
    try:
        while len(seeds) < quota and attempts < max_attempts:
            seed = cfg.seed_start + worker + k * cfg.workers
            k += 1
            targets: list[dict[str, Any] | None] = [None]
            if cfg.every_target:
                env.reset(seed=seed)
                key, names = scene_targets(env)
                targets = [{key: t} for t in names]
            for options in targets:
                if len(seeds) >= quota or attempts >= max_attempts:
                    break
                episode, prompt, success = run_episode(
                    env, seed, cfg.noise, options, cfg.label, actor, handover_step(seed, handover) if actor else 0
                )
                attempts += 1
                successes += success
                kept = success or cfg.keep_failed
                if kept:
                    if writer is None:
                        writer = LeRobotDatasetWriter(
                            cfg.out, fps, features_of(episode), cfg.env.split("/")[-1], crf=cfg.crf, part_dir=part_dir
                        )
                    writer.add_episode(episode, prompt)
                    seeds.append({"seed": seed, "success": success, **(options or {})})
                report(("episode", worker, kept, success, len(episode["action"])))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        env.close()
    manifest = writer.finish_part() if writer is not None else None
    return {"manifest": manifest, "seeds": seeds, "attempts": attempts, "successes": successes}


def _process_main(
    cfg: RecordConfig, worker: int, quota: int, part_dir: str, q: Any, make_actor: Any, handover: int
) -> None:
    try:
        q.put(("done", worker, record_part(cfg, worker, quota, part_dir, q.put, make_actor, handover)))
    except BaseException as exc:  # the parent reports it and cleans up
        q.put(("error", worker, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def record(cfg: RecordConfig, make_actor: Callable[[], Any] | None = None, handover: int = 80) -> dict[str, Any]:
    """Record, assemble and return a summary; the dataset appears at ``cfg.out`` only when complete. With
    ``make_actor`` (picklable; its ``str`` names it in ``meta/recording.json``) record its corrections (the module
    docstring)."""
    if make_actor is not None:
        check_corrections(cfg, handover)
    out = Path(cfg.out)
    if out.exists():
        raise SystemExit(f"robotok-record: error: {out} already exists; choose another --out or remove it")
    if cfg.env not in gym.registry:
        known = ", ".join(k for k in gym.registry if k.startswith("robotok/"))
        raise SystemExit(f"robotok-record: error: unknown env id {cfg.env!r}; use one of: {known}")
    workers = min(cfg.workers, cfg.episodes)
    quotas = [cfg.episodes // workers + (w < cfg.episodes % workers) for w in range(workers)]
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    t0 = time.perf_counter()
    results: dict[int, dict] = {}
    bar = tqdm(total=cfg.episodes, desc=f"record {cfg.env}", unit="ep")
    stats = {"attempts": 0, "successes": 0, "frames": 0}

    def on_report(msg: tuple) -> None:
        _, _, kept, success, length = msg
        stats["attempts"] += 1
        stats["successes"] += success
        if kept:
            stats["frames"] += length
            bar.update(1)
        bar.set_postfix(expert_success=f"{stats['successes'] / stats['attempts']:.0%}")

    procs: list[mp.process.BaseProcess] = []
    try:
        parts = [str(workdir / f".part-{w:03d}") for w in range(workers)]
        if workers == 1:
            results[0] = record_part(cfg, 0, quotas[0], parts[0], on_report, make_actor, handover)
        else:
            ctx = mp.get_context("spawn")  # a fork after a GL context exists hangs
            q = ctx.Queue()
            procs = [
                ctx.Process(
                    target=_process_main, args=(cfg, w, quotas[w], parts[w], q, make_actor, handover), daemon=True
                )
                for w in range(workers)
            ]
            for p in procs:
                p.start()
            while len(results) < workers:
                try:
                    msg = q.get(timeout=5.0)
                except queue.Empty:
                    dead = [w for w, p in enumerate(procs) if not p.is_alive() and w not in results]
                    if dead and q.empty():
                        raise RecordError(f"worker(s) {dead} exited without a result") from None
                    continue
                if msg[0] == "episode":
                    on_report(msg)
                elif msg[0] == "error":
                    print(msg[2], file=sys.stderr)  # the worker's traceback
                    raise RecordError(f"worker {msg[1]} failed: {msg[2].splitlines()[0]}")
                else:
                    results[msg[1]] = msg[2]
            for p in procs:
                p.join()
        bar.close()
        manifests = [results[w]["manifest"] for w in range(workers) if results[w]["manifest"] is not None]
        if not manifests:
            raise RecordError(
                f"the expert succeeded in none of {stats['attempts']} episodes; nothing to save "
                "(try --keep-failed or check the env)"
            )
        seeds = [s for w in range(workers) for s in results[w]["seeds"]]
        recording = {
            "env": cfg.env,
            "noise": cfg.noise,
            "label": cfg.label,
            "seed_start": cfg.seed_start,
            "workers": workers,
            "keep_failed": cfg.keep_failed,
            "every_target": cfg.every_target,
            "policy": None if make_actor is None else str(make_actor),
            "handover": handover if make_actor is not None else None,
            "env_kwargs": json_object("env_kwargs", cfg.env_kwargs),
            "attempts": stats["attempts"],
            "expert_successes": stats["successes"],
            "episodes": seeds,
        }
        assemble(out, workdir, manifests, {"recording.json": recording})
    except BaseException as exc:
        bar.close()
        for p in procs:
            if p.is_alive():
                p.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
        if isinstance(exc, RecordError):
            raise SystemExit(f"robotok-record: error: {exc}") from exc
        raise
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "out": str(out),
        "episodes": len(seeds),
        "requested": cfg.episodes,
        "frames": stats["frames"],
        "attempts": stats["attempts"],
        "expert_success_rate": stats["successes"] / max(stats["attempts"], 1),
        "wall_s": wall,
        "size_mb": size / 2**20,
        "frames_per_s": stats["frames"] / wall,
    }


def main() -> None:
    summarize(record(cli(RecordConfig)))


def cli(config: type) -> Any:
    """Parse a recording config from the command line (tyro reports a __post_init__ ValueError as a usage error);
    `kill` (SIGTERM) then unwinds like Ctrl-C: workers stop and the temporary directory is removed."""
    cfg = tyro.cli(config)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return cfg


def summarize(s: dict[str, Any]) -> None:
    """Print ``record``'s summary."""
    short = "" if s["episodes"] == s["requested"] else f" (of {s['requested']} requested: the expert failed too often)"
    print(
        f"robotok-record: {s['episodes']} episodes{short}, {s['frames']} frames -> {s['out']} "
        f"({s['size_mb']:.1f} MB); expert success {s['expert_success_rate']:.1%} over {s['attempts']} episodes; "
        f"wall {s['wall_s']:.1f} s ({s['frames_per_s']:.0f} frames/s)"
    )


if __name__ == "__main__":
    main()
