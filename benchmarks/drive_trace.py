"""How a Drive episode goes, step by step: the policy's car against the scripted expert on the same seed.

    python benchmarks/drive_trace.py --policy runs/demo/policy --seed 100009 [--route left] [--every 10]

Success rates say how often Drive fails, not how. This runs one unseen seed with the policy (greedy, its own
chunking, as ``robotok-eval`` runs it) and then with the scripted expert, and prints every ``--every`` steps
where the car is (x, y in the intersection frame: the approach runs along -x, left is +y), its speed, the
command (steer, throttle), route completion and the goal region it is in. Reading the two side by side shows
whether the policy slowed for the turn, turned at the crossing, or braked in time for the cone.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import gymnasium as gym
import numpy as np

import robotok.sim_envs  # noqa: F401  (registers the env ids)
from robotok.policy import Policy
from robotok.sim_envs import make_expert
from robotok.sim_envs.drive import ROUTES


def run(env: gym.Env, make_act: Callable[[], Callable[[dict], np.ndarray]], seed: int, route: str, every: int) -> None:
    """One episode from ``seed`` by the controller ``make_act()`` builds after reset; a line every ``every`` steps."""
    obs, info = env.reset(seed=seed, options={"route": route} if route else None)
    car, act = env.unwrapped, make_act()
    print(f"seed {seed} route {info['route']} prompt {info['prompt']!r}")
    t, term, trunc = 0, False, False
    while not (term or trunc):
        a = np.asarray(act({**obs, "task": info["prompt"]}), dtype=np.float32)
        obs, _, term, trunc, info = env.step(a)
        if t % every == 0 or term or trunc:
            x, y, _ = car.car_pose()
            print(
                f"  t {t:3d}  x {x:6.1f}  y {y:6.1f}  speed {info['speed']:5.2f} m/s  steer {a[0]:+.2f}  "
                f"throttle {a[1]:+.2f}  route {info['route_completion']:.2f}  region {info['goal_region'] or '-'}"
            )
        t += 1
    end = (
        "success"
        if info["is_success"]
        else "collision"
        if info["collision"]
        else "off road"
        if info["off_road"]
        else "timeout"
    )
    print(f"  -> {end} after {t} steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="runs/demo/policy", help="checkpoint directory")
    ap.add_argument("--seed", type=int, default=100_000, help="the scene (demonstrations use seeds from 0)")
    ap.add_argument("--route", default="", choices=["", *ROUTES], help="route to prompt (default: the seed's)")
    ap.add_argument("--every", type=int, default=10, help="print every this many steps")
    args = ap.parse_args()
    if args.every < 1:
        raise SystemExit(f"drive_trace: error: --every {args.every} must be >= 1")
    policy = Policy.from_checkpoint(args.policy)
    e = next((e for e in policy.embodiments if e["state_dim"] == 9), None)
    if e is None:
        raise SystemExit(f"{args.policy} was not trained on Drive (no embodiment with its 9-D state)")
    env = gym.make("robotok/Drive-v0", width=e["image_size"][1], height=e["image_size"][0], cameras=("front",))
    print("policy:")
    policy.reset()
    run(env, lambda: policy.select_action, args.seed, args.route, args.every)
    print("expert:")
    run(env, lambda: make_expert(env), args.seed, args.route, args.every)
    env.close()


if __name__ == "__main__":
    main()
