"""How a Drive episode goes, step by step: the policy's car against the scripted expert on the same seed.

    python benchmarks/drive_trace.py --policy runs/demo/policy --seed 100009 [--route left] [--every 10]

Success rates say how often Drive fails, not how. This runs one unseen seed with the policy (greedy, its own
chunking, as ``robotok-eval`` runs it) and then with the scripted expert, and prints every ``--every`` steps
where the car is (x, y in the intersection frame: the approach runs along -x, left is +y), its speed, the
command (steer, throttle), route completion, the goal region it is in and, on the approach, how far before the
red cone it is (along the lane; the stop region is 2.4-4.6 m, negative once past the cone). Reading the two side
by side shows whether the policy slowed for the turn, turned at the crossing, or braked in time for the cone; on
the stop route the last line says where the car first came below 0.3 m/s.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import gymnasium as gym
import numpy as np

import robotok.sim_envs  # noqa: F401  (registers the env ids)
from robotok.policy import Policy
from robotok.sim_envs import make_expert
from robotok.sim_envs.drive import ROUTES, STOPPED
from robotok.sim_envs.drive_scene import ROAD_HALF
from robotok.sim_envs.drive_track import STOP_BEFORE, approach_coords


def run(env: gym.Env, make_act: Callable[[], Callable[[dict], np.ndarray]], seed: int, route: str, every: int) -> None:
    """One episode from ``seed`` by the controller ``make_act()`` builds after reset; a line every ``every`` steps."""
    obs, info = env.reset(seed=seed, options={"route": route} if route else None)
    car, act = env.unwrapped, make_act()
    print(f"seed {seed} route {info['route']} prompt {info['prompt']!r}")
    t, term, trunc, first_slow = 0, False, False, None
    while not (term or trunc):
        a = np.asarray(act({**obs, "task": info["prompt"]}), dtype=np.float32)
        obs, _, term, trunc, info = env.step(a)
        x, y, _ = car.car_pose()
        cone = approach_coords(car.layout.bend, x, y)[0] - car.layout.cone_u if x < -ROAD_HALF else None
        if first_slow is None and t >= 10 and abs(info["speed"]) < STOPPED:
            first_slow = (t, cone)
        if t % every == 0 or term or trunc:
            print(
                f"  t {t:3d}  x {x:6.1f}  y {y:6.1f}  speed {info['speed']:5.2f} m/s  steer {a[0]:+.2f}  "
                f"throttle {a[1]:+.2f}  route {info['route_completion']:.2f}  region {info['goal_region'] or '-'}  "
                f"to cone {'-' if cone is None else f'{cone:.1f} m'}"
            )
        t += 1
    if info["route"] == "stop":
        where = (
            "never"
            if first_slow is None
            else f"at step {first_slow[0]}, "
            + ("off the approach" if first_slow[1] is None else f"{first_slow[1]:.1f} m before the cone")
        )
        print(f"  first below {STOPPED} m/s: {where} (the region: {STOP_BEFORE[0]}-{STOP_BEFORE[1]} m)")
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
