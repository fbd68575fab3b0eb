"""Rollouts: episodes of one policy in one env, in parallel worker processes, each deterministic by its seed.

Every worker builds its own env and policy (cached per process): MuJoCo renderers hold GL contexts that
must not cross a fork, so the pool uses the ``spawn`` start method. Episode ``i`` runs under seed
``seed_start + i`` whatever the number of workers, so results do not depend on ``--workers``.

Policies are driven through one adapter with the LeRobot contract: ``reset()`` at episode start, then
``select_action({**obs, "task": prompt}) -> action``. ``policy`` names are ``"expert"`` (the env's
scripted expert, made after each reset), ``"random"`` (uniform in the action space, seeded per
episode), a checkpoint directory (``config.json`` + ``model.safetensors``; ``robotok.policy.Policy``)
or an exported bundle directory (``manifest.json``; ``robotok.policy.runtime.RobotPolicy``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robotok.evaluate.metrics import count_events

REFERENCE_POLICIES = ("expert", "random")


def policy_kind(policy: str) -> str:
    """``"expert"``, ``"random"``, ``"checkpoint"`` or ``"bundle"``; ValueError naming the path otherwise."""
    if policy in REFERENCE_POLICIES:
        return policy
    p = Path(policy)
    if not p.exists():
        raise ValueError(
            f"--policy {policy!r}: no such directory; pass a checkpoint directory (config.json + "
            f"model.safetensors), an exported bundle (manifest.json), 'expert' or 'random'"
        )
    if (p / "manifest.json").is_file():
        return "bundle"
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return "checkpoint"
    raise ValueError(
        f"--policy {policy!r} is neither a checkpoint directory (config.json + model.safetensors) nor "
        f"an exported bundle (manifest.json); point it at the output of robotok-train or robotok-export"
    )


def policy_label(policy: str) -> str:
    """Name of a policy in reports: the word itself, or the folder name of a checkpoint/bundle."""
    return policy if policy in REFERENCE_POLICIES else Path(policy).resolve().name


@dataclass(frozen=True)
class RolloutSpec:
    """What a worker needs to build one env and one policy (plain values: it crosses process boundaries)."""

    env_id: str
    policy: str
    env_kwargs: str = "{}"  # JSON for gymnasium.make; a string so the spec hashes and caches
    device: str = "cpu"
    n_action_steps: int = 0  # actions executed per predicted chunk; 0: the checkpoint's own
    temperature: float = 0.0  # a checkpoint's token sampling (0: greedy)

    @property
    def label(self) -> str:
        return policy_label(self.policy)


@dataclass(frozen=True)
class EpisodeJob:
    """One seed of one spec; with ``sweep`` one episode per candidate target of that seed's scene."""

    spec: RolloutSpec
    episode: int
    seed: int
    reset_options: dict[str, Any] = field(default_factory=dict)
    sweep: bool = False
    video_dir: str | None = None  # write an annotated mp4 (+ PNG still) of this episode here


class PolicyAdapter:
    """One face for every policy kind: ``reset``, timed ``select_action``, per-episode counters."""

    def __init__(self, spec: RolloutSpec, loaded: Any = None) -> None:
        """Build the policy ``spec`` names, or wrap ``loaded``, an object with ``reset``/``select_action``."""
        self.kind = "object" if loaded is not None else policy_kind(spec.policy)
        self.policy: Any = loaded
        self._expert: Callable[[dict[str, Any]], np.ndarray] | None = None
        self._rng = np.random.default_rng(0)
        self._space: Any = None
        if self.kind == "checkpoint":
            from robotok.policy import Policy

            self.policy = Policy.from_checkpoint(
                spec.policy,
                device=spec.device,
                n_action_steps=spec.n_action_steps or None,
                temperature=spec.temperature,
            )
        elif self.kind == "bundle":
            try:
                from robotok.policy.runtime import RobotPolicy
            except ImportError as e:
                raise RuntimeError(
                    f"--policy {spec.policy!r} is an exported bundle, but robotok.policy.runtime "
                    f"cannot be imported ({e}); evaluate the checkpoint directory instead"
                ) from e
            self.policy = RobotPolicy(spec.policy, n_action_steps=spec.n_action_steps or None)
        self.latencies_ms: list[float] = []
        self._fail0 = 0
        self._chunk0 = 0

    def reset(self, env: Any, seed: int) -> None:
        """Start an episode (call after ``env.reset``): a fresh expert, a reseeded RNG, a reset policy."""
        self.latencies_ms = []
        if self.kind == "expert":
            from robotok.sim_envs import make_expert

            self._expert = make_expert(env)
        elif self.kind == "random":
            self._rng = np.random.default_rng(seed)
            self._space = env.action_space
        else:
            if "torch" in sys.modules:  # a sampling policy then draws the same tokens for the same seed
                sys.modules["torch"].manual_seed(seed)
            self.policy.reset()
            self._fail0 = int(getattr(self.policy, "decode_failures", 0))
            self._chunk0 = len(getattr(self.policy, "chunk_latencies_ms", ()) or ())

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        t0 = time.perf_counter()
        if self.kind == "expert":
            action = self._expert(obs)
        elif self.kind == "random":
            action = self._rng.uniform(self._space.low, self._space.high)
        else:
            action = self.policy.select_action(obs)
        self.latencies_ms.append(1000.0 * (time.perf_counter() - t0))
        return np.asarray(action, dtype=np.float32)

    def decode_failures(self) -> int:
        return int(getattr(self.policy, "decode_failures", 0)) - self._fail0 if self.policy is not None else 0

    def chunk_latencies_ms(self) -> list[float]:
        if self.policy is None:
            return []
        return [float(x) for x in list(getattr(self.policy, "chunk_latencies_ms", ()) or ())[self._chunk0 :]]


# ---- env-specific readings of ``info`` ----------------------------------------------------------------------


def episode_target(info: dict[str, Any]) -> str | None:
    """The target the prompt names (cup colour or route), when the env reports it."""
    for key in ("target_color", "route"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def _infractions(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Wrong-object lifts (PickCup) and route completion / collisions / off-road events (Drive) from step infos."""
    last = infos[-1]
    out: dict[str, Any] = {"wrong_object": None, "route_completion": None, "collisions": None, "off_road": None}
    if "wrong_object" in last:
        out["wrong_object"] = any(bool(i.get("wrong_object", False)) for i in infos)
    if "route_completion" in last:
        out["route_completion"] = float(np.clip(last["route_completion"], 0.0, 1.0))
        out["collisions"] = count_events(i.get("collision", False) for i in infos)
        out["off_road"] = count_events(i.get("off_road", False) for i in infos)
    return out


# ---- the episode loop ----------------------------------------------------------------------------------------


def run_episode(
    env: Any, adapter: PolicyAdapter, job: EpisodeJob, options: dict[str, Any], target: str | None = None
) -> dict[str, Any]:
    """Roll out one episode and return its record (see ``robotok.evaluate.metrics``)."""
    obs, info = env.reset(seed=job.seed, options=options or None)
    adapter.reset(env, job.seed)
    prompt = str(info["prompt"])
    frames = [obs["pixels"]] if job.video_dir else []
    infos, ret, steps, done = [info], 0.0, 0, False
    while not done:
        action = adapter.select_action({**obs, "task": prompt})
        if action.shape != env.action_space.shape:
            raise ValueError(
                f"{job.spec.label} returned an action of shape {action.shape} for {job.spec.env_id}, "
                f"whose action space has shape {env.action_space.shape}"
            )
        obs, reward, terminated, truncated, info = env.step(action)
        ret += float(reward)
        steps += 1
        infos.append(info)
        done = terminated or truncated
        if job.video_dir:
            frames.append(obs["pixels"])
    record = {
        "env": job.spec.env_id,
        "policy": job.spec.label,
        "episode": job.episode,
        "seed": job.seed,
        "prompt": prompt,
        "target": target if target is not None else episode_target(infos[0]),
        "success": bool(info.get("is_success", False)),
        "return": ret,
        "length": steps,
        **_infractions(infos),
        "decode_failures": adapter.decode_failures(),
        "action_latency_ms": adapter.latencies_ms,
        "chunk_latency_ms": adapter.chunk_latencies_ms(),
        "video": None,
    }
    if job.video_dir:
        record["video"] = _write_video(job, record, frames, env)
    return record


def _write_video(job: EpisodeJob, record: dict[str, Any], frames: list[dict[str, np.ndarray]], env: Any) -> str:
    from robotok.evaluate.video import render_episode, write_mp4, write_png

    env_name = job.spec.env_id.split("/")[-1]
    stem = f"{env_name}_{job.spec.label}_ep{job.episode:03d}" + (f"_{record['target']}" if job.sweep else "")
    extra = [
        "wrong cup" if record["wrong_object"] else "",
        f"route {record['route_completion']:.0%}" if record["route_completion"] is not None else "",
    ]
    header = " · ".join([job.spec.label, env_name, f"seed {job.seed}"] + [e for e in extra if e])
    annotated = render_episode(frames, record["prompt"], header, record["success"])
    fps = int(env.metadata.get("render_fps", 20))
    mp4 = write_mp4(Path(job.video_dir) / f"{stem}.mp4", annotated, fps=fps)
    write_png(mp4.with_suffix(".png"), annotated[-1])
    return str(mp4)


# Per-process caches: a worker builds each env and policy once and reuses them across its episodes.
_ENVS: dict[tuple[str, str], Any] = {}
_POLICIES: dict[RolloutSpec, PolicyAdapter] = {}


def _env_for(spec: RolloutSpec) -> Any:
    key = (spec.env_id, spec.env_kwargs)
    if key not in _ENVS:
        import gymnasium as gym

        import robotok.sim_envs  # noqa: F401  (registers the env ids)

        _ENVS[key] = gym.make(spec.env_id, **json.loads(spec.env_kwargs))
    return _ENVS[key]


def run_job(job: EpisodeJob) -> list[dict[str, Any]]:
    """All episodes of one job (one, or one per candidate target with ``sweep``)."""
    env = _env_for(job.spec)
    if job.spec not in _POLICIES:
        _POLICIES[job.spec] = PolicyAdapter(job.spec)
    adapter = _POLICIES[job.spec]
    if not job.sweep:
        return [run_episode(env, adapter, job, dict(job.reset_options))]
    from robotok.sim_envs import scene_targets

    env.reset(seed=job.seed, options=dict(job.reset_options) or None)  # look at the scene to list its targets
    key, targets = scene_targets(env)
    return [run_episode(env, adapter, job, {**job.reset_options, key: t}, target=t) for t in targets]


def _init_worker(threads: int) -> None:
    # Before torch is first imported in this process (spawned workers start clean).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # the exported runtime needs no torch
        pass


def close_cached() -> None:
    """Close the envs this process built and drop its cached policies."""
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()
    _POLICIES.clear()


def run_jobs(
    jobs: Sequence[EpisodeJob], workers: int = 1, threads: int = 1, desc: str = "eval", progress: bool = True
) -> list[dict[str, Any]]:
    """Run jobs (in this process when ``workers == 1``, else in a spawn pool); records in job order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: dict[int, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(jobs), desc=desc, unit="ep", disable=not progress, dynamic_ncols=True)
    if workers == 1:
        try:
            for i, job in enumerate(jobs):
                results[i] = run_job(job)
                bar.update()
        finally:
            close_cached()
            bar.close()
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        results[futures[f]] = f.result()  # re-raises a worker's exception here
                        bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                bar.close()
    return [r for i in range(len(jobs)) for r in results[i]]
