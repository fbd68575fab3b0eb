"""How close does a PickCup policy bring its gripper to the named cup, and where does it go down?

    python benchmarks/approach.py --policy runs/demo/policy [--seeds 20]

Success says whether a cup was lifted; this says where a failing policy went wrong. Each unseen episode is run
as ``robotok-eval`` runs it (greedy, the policy's own chunking) and records the grip's closest horizontal
approach to the named cup, the lowest height it reached within 3 cm of it, and where the episode ended. The
scripted expert descends once it is within 1.2 cm (``pick_cup_expert.ALIGN_TOL``), so "within 1.2 cm" is how
often the policy reached the place from which the expert would grasp.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np

import robotok.sim_envs  # noqa: F401  (registers the env ids)
from robotok.policy import Policy
from robotok.sim_envs.pick_cup_expert import ALIGN_TOL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="runs/demo/policy", help="checkpoint directory")
    ap.add_argument("--seeds", type=int, default=20, help="unseen episodes (seeds from --seed-start)")
    ap.add_argument("--seed-start", type=int, default=100_000)
    ap.add_argument("--max-steps", type=int, default=200, help="steps per episode (the env's limit)")
    ap.add_argument("--out", default="", help="optional JSON file for the figures")
    args = ap.parse_args()
    if args.seeds < 1 or args.max_steps < 1:
        raise SystemExit(f"approach: error: --seeds {args.seeds} and --max-steps {args.max_steps} must be >= 1")

    policy = Policy.from_checkpoint(args.policy)
    e = next((e for e in policy.embodiments if e["state_dim"] == 6), None)
    if e is None:
        raise SystemExit(f"approach: error: {args.policy} was not trained on PickCup (no embodiment with a 6-D state)")
    env = gym.make("robotok/PickCup-v0", width=e["image_size"][1], height=e["image_size"][0])
    base = env.unwrapped
    rows = []
    for s in range(args.seed_start, args.seed_start + args.seeds):
        obs, info = env.reset(seed=s)
        policy.reset()
        closest, low, success = np.inf, np.inf, False
        for _ in range(args.max_steps):
            obs["task"] = info["prompt"] if "prompt" in info else base.prompt
            obs, _, term, trunc, info = env.step(policy.select_action(obs))
            grip, cup = base.grip_pos(), base.cup_positions()[base.target_index]
            d = float(np.hypot(*(cup[:2] - grip[:2])))
            closest = min(closest, d)
            low = min(low, float(grip[2])) if d < 0.03 else low
            success = bool(info.get("is_success", False))
            if term or trunc:
                break
        gaps = np.hypot(*(base.cup_positions()[:, :2] - base.grip_pos()[:2]).T)
        rows.append(
            {
                "seed": s,
                "success": success,
                "closest_cm": 100 * closest,
                "lowest_near_cm": 100 * low if np.isfinite(low) else None,
                "end_nearest_cup_cm": 100 * float(gaps.min()),
                "end_height_cm": 100 * float(base.grip_pos()[2]),
            }
        )
    env.close()
    closest = np.array([r["closest_cm"] for r in rows])
    far_low = [r for r in rows if r["end_nearest_cup_cm"] > 5 and r["end_height_cm"] < 8]
    summary = {
        "policy": args.policy,
        "episodes": len(rows),
        "success": float(np.mean([r["success"] for r in rows])),
        "closest_median_cm": float(np.median(closest)),
        "within_align_tol": float(np.mean(closest < 100 * ALIGN_TOL)),
        "within_2cm": float(np.mean(closest < 2.0)),
        "ended_low_away_from_cups": len(far_low) / len(rows),
        "episodes_detail": rows,
    }
    print(
        f"{len(rows)} episodes of {args.policy}: success {summary['success']:.0%}; closest approach to the named cup "
        f"median {summary['closest_median_cm']:.2f} cm, within {100 * ALIGN_TOL:.1f} cm (the expert descends) "
        f"{summary['within_align_tol']:.0%}, within 2 cm {summary['within_2cm']:.0%}; ended below 8 cm more than "
        f"5 cm from any cup {summary['ended_low_away_from_cups']:.0%}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
