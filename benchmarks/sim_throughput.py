"""Simulation throughput: env steps/s of the robotok envs without rendering and with their default cameras,
side by side with Gymnasium's MuJoCo ``Pusher-v5`` rendering rgb_array at the same image size.

    python benchmarks/sim_throughput.py [--size 64] [--steps 300] [--rounds 3]

Random actions; episodes reset when they end (reset cost included). The configurations run in
interleaved rounds and the best round counts, so load from other processes hits all of them alike.
Run it on one core (``taskset -c 0``) for per-core figures; llvmpipe's own raster threads follow
``LP_NUM_THREADS`` (printed). "Without rendering" uses ``cameras=()`` where the env has it; otherwise
the env's camera method is replaced by a blank image (so the rest of the step is still timed) and the
row says so. An env that does not import yet is skipped with a message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import tyro

import robotok.sim_envs  # noqa: F401  (registers the ids; sets MUJOCO_GL=egl)


@dataclass
class Config:
    """Measure env steps/s with and without rendering."""

    size: int = 64
    """image width and height (px)"""
    steps: int = 300
    """env steps per configuration per round"""
    rounds: int = 3
    """interleaved rounds; the best one counts"""

    def __post_init__(self) -> None:
        if self.size < 8 or self.steps < 10 or self.rounds < 1:
            raise ValueError(f"need size >= 8, steps >= 10, rounds >= 1; got {self.size}, {self.steps}, {self.rounds}")


def make_runs(cfg: Config) -> dict[str, tuple[Callable[[], gym.Env], bool, int, str]]:
    """label -> (make env, call env.render() each step, cameras per step, note)."""
    size = cfg.size
    runs: dict[str, tuple[Callable[[], gym.Env], bool, int, str]] = {}
    for env_id in ("robotok/Drive-v0", "robotok/PickCup-v0"):
        try:
            gym.make(env_id, width=size, height=size).close()
        except (ImportError, AttributeError, ModuleNotFoundError) as e:
            print(f"skip {env_id}: it does not import yet ({type(e).__name__}: {e})")
            continue
        probe = gym.make(env_id, width=size, height=size)
        n_cams = len(probe.observation_space["pixels"].spaces)
        probe.close()

        def plain(env_id=env_id):
            return gym.make(env_id, width=size, height=size)

        def no_render(env_id=env_id):
            return gym.make(env_id, width=size, height=size, cameras=())

        runs[f"{env_id} no render"] = (no_render, False, 0, "cameras=()")
        runs[f"{env_id} {n_cams} cameras"] = (plain, False, n_cams, "")
    try:
        gym.make("Pusher-v5").close()
    except ImportError as e:  # Gymnasium's MuJoCo envs need its [mujoco] extra (imageio)
        raise SystemExit(
            f"sim_throughput: error: Pusher-v5 does not load ({e}); run: pip install 'gymnasium[mujoco]'"
        ) from e
    runs["Pusher-v5 no render"] = (lambda: gym.make("Pusher-v5"), False, 0, "")
    runs["Pusher-v5 rgb_array"] = (
        lambda: gym.make("Pusher-v5", render_mode="rgb_array", width=size, height=size),
        True,
        1,
        "env.render()",
    )
    return runs


def steps_per_s(env: gym.Env, steps: int, render: bool, seed: int) -> tuple[float, float]:
    """(steps per wall-clock second, steps per CPU second of this process, all its threads included)."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps)]
    t0, c0 = time.perf_counter(), time.process_time()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if render:
            env.render()
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0), steps / max(time.process_time() - c0, 1e-9)


def main() -> None:
    cfg = tyro.cli(Config)
    print(
        f"image {cfg.size}x{cfg.size}, {cfg.steps} steps x {cfg.rounds} rounds, MUJOCO_GL={os.environ.get('MUJOCO_GL')}"
        f", LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', 'unset')}, cores usable={len(os.sched_getaffinity(0))}"
    )
    runs = make_runs(cfg)
    envs = {label: make() for label, (make, _, _, _) in runs.items()}
    for label, env in envs.items():  # warm up: first render creates the GL context
        steps_per_s(env, 10, runs[label][1], seed=0)
    best = {label: (0.0, 0.0) for label in runs}
    for r in range(cfg.rounds):
        for label, env in envs.items():
            wall, cpu = steps_per_s(env, cfg.steps, runs[label][1], seed=r + 1)
            best[label] = (max(best[label][0], wall), max(best[label][1], cpu))
    for env in envs.values():
        env.close()
    pusher = best["Pusher-v5 rgb_array"]
    print(f"load average {os.getloadavg()[0]:.1f}; 'per CPU s' = steps per CPU-second of this process (all threads),")
    print("the per-core figure on a shared machine; wall-clock steps/s shrink with other processes' load.")
    print(f"\n{'configuration':32s} {'steps/s':>8s} {'per CPU s':>10s} {'frames/CPU s':>13s} {'vs Pusher':>10s}  note")
    for label, (_, _, n_cams, note) in runs.items():
        wall, cpu = best[label]
        print(f"{label:32s} {wall:8.0f} {cpu:10.0f} {cpu * n_cams:13.0f} {cpu / pusher[1]:9.1f}x  {note}")
    print("(vs Pusher: steps per CPU second over Pusher-v5 rendering rgb_array at the same size)")


if __name__ == "__main__":
    main()
