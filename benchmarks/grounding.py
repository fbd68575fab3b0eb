"""Prompt grounding on PickCup, read from the first chunk: does the policy head for the cup the prompt names?

    python benchmarks/grounding.py --policy runs/demo/policy [--seeds 20]

Success rates need whole episodes and say little while they sit near 0%. This asks the policy for its first
chunk in each of ``--seeds`` unseen scenes, once per cup on the table with that cup named in the prompt, and
measures the direction it commands (mean x/y velocity of the actions it executes of that chunk) against the
direction from the gripper to the named cup: cosine > 0.9 counts as "heads for it". The baseline, measured on
the same scenes, is a prompt-blind policy that heads for a cup of the scene drawn at random (it scores what
"reaching for some cup" is worth). For a policy trained with ``robotok-pretokenize --goal`` it also reports
where the predicted goal lies: nearest the named cup (chance is one over the number of cups) and its
distance to it.

Two more readings tell a policy that cannot find cups from one that cannot tell them apart: "aims at the
named cup" (the cup whose direction is closest to the commanded one is the named one; chance is one over
the number of cups) and the spread of the commanded first directions over all prompts (a policy that
commands nearly one direction everywhere has a small spread). ``--num-cups 1`` puts one cup on the table,
so the prompt has nothing to choose and the figures measure finding a cup alone.

Two more, on request. ``--episodes N`` runs N whole episodes as ``robotok-eval`` does (greedy, the policy's
own chunking) and records the grip's closest horizontal approach to the named cup and where the episode ended:
the scripted expert descends once it is within 1.2 cm (``pick_cup_expert.ALIGN_TOL``), so "within 1.2 cm" is
how often the policy reached the place from which the expert would grasp. ``--scenes FILE...`` scores the
policy's pointing read-out (``Transformer.ground_logits``, a policy trained with ``--ground-weight``) on
``robotok-record-scenes`` files: how often it marks the cell that holds the named cup. ``--trace SEED`` prints
one episode step by step: where the grip is from the named cup (cm, and in the front camera's pixels), its
height, the cup's height and the gripper command, to see how an episode fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np

import robotok.sim_envs  # noqa: F401  (registers the env ids)
from robotok.policy import Policy
from robotok.sim_envs import json_object
from robotok.sim_envs.pick_cup_expert import ALIGN_TOL


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="runs/demo/policy", help="checkpoint directory")
    ap.add_argument("--seeds", type=int, default=20, help="unseen scenes (seeds from --seed-start)")
    ap.add_argument("--seed-start", type=int, default=100_000)
    ap.add_argument("--num-cups", type=int, default=0, help="cups per scene (1-4; 0: the env's default 2-4)")
    ap.add_argument("--env-kwargs", default="{}", help="JSON kwargs for the env, e.g. the policy's prompt templates")
    ap.add_argument("--temperature", type=float, default=0.0, help="sample the chunk (0: greedy, as evaluated)")
    ap.add_argument("--episodes", type=int, default=0, help="also run this many whole episodes: the approach")
    ap.add_argument("--scenes", nargs="*", default=[], help="robotok-record-scenes files: score the read-out")
    ap.add_argument("--trace", type=int, default=None, help="print this seed's episode step by step, then stop")
    ap.add_argument("--out", default="", help="optional JSON file for the figures")
    args = ap.parse_args()
    if args.seeds < 1 or args.episodes < 0:
        raise SystemExit(f"grounding: error: --seeds {args.seeds} must be >= 1 and --episodes {args.episodes} >= 0")

    policy = Policy.from_checkpoint(args.policy, temperature=args.temperature)
    e = next((e for e in policy.embodiments if e["state_dim"] == 6), None)
    if e is None:
        raise SystemExit(f"{args.policy} was not trained on PickCup (no embodiment with its 6-D state)")
    kwargs = {**json_object("env_kwargs", args.env_kwargs), **({"num_cups": args.num_cups} if args.num_cups else {})}
    env = gym.make("robotok/PickCup-v0", width=e["image_size"][1], height=e["image_size"][0], **kwargs)
    if args.trace is not None:
        trace(policy, env, args.trace)
        env.close()
        return
    rng = np.random.default_rng(0)
    policy_cos, blind_cos, goal_hits, goal_err, goal_any, chance = [], [], [], [], [], []
    aims, angles, cup_angles, cup_gaps = [], [], [], []
    for s in range(args.seed_start, args.seed_start + args.seeds):
        env.reset(seed=s)
        base = env.unwrapped
        cups, grip = base.cup_positions()[:, :2], base.grip_pos()[:2]
        gaps = np.linalg.norm(cups[:, None] - cups[None], axis=-1)
        cup_gaps += gaps[np.triu_indices(len(cups), 1)].tolist()
        for i, color in enumerate(base.cup_colors):
            obs, info = env.reset(seed=s, options={"target_color": color})
            policy.reset()
            chunk = policy.predict_chunk({**obs, "task": info["prompt"]})
            to_cup = cups[i] - grip
            v = chunk[: policy.executed[policy.embodiment_of(obs)], :2].mean(0)
            policy_cos.append(cosine(v, to_cup))
            aims.append(int(np.argmax([cosine(v, c - grip) for c in cups]) == i))
            angles.append(float(np.arctan2(v[1], v[0])))
            cup_angles.append(float(np.arctan2(to_cup[1], to_cup[0])))
            blind_cos.append(cosine(cups[rng.integers(len(cups))] - grip, to_cup))
            chance.append(1.0 / len(cups))
            if policy.last_goal_ids:
                goal = policy.space.decode_state(policy.last_goal_ids, policy._embodiment)[:2]
                dist = np.linalg.norm(cups - goal, axis=1)
                goal_hits.append(int(np.argmin(dist) == i))
                goal_err.append(float(dist[i]))
                goal_any.append(float(dist.min()))
    n = len(policy_cos)
    res = {
        "policy": str(Path(args.policy).resolve().name),
        "prompts": n,
        "heads_for_named_cup": float(np.mean(np.array(policy_cos) > 0.9)),
        "mean_cos": float(np.mean(policy_cos)),
        "blind_heads_for_named_cup": float(np.mean(np.array(blind_cos) > 0.9)),
        "blind_mean_cos": float(np.mean(blind_cos)),
        "aims_at_named_cup": float(np.mean(aims)),
        "aim_chance": float(np.mean(chance)),
        "direction_spread_deg": float(np.degrees(np.std(angles))),
        "named_cup_spread_deg": float(np.degrees(np.std(cup_angles))),
    }
    print(f"{n} prompts over {args.seeds} scenes (each cup named once), first chunk of each:")
    print(
        f"  policy        heads for the named cup (cos > 0.9) {res['heads_for_named_cup']:.0%}, "
        f"mean cos {res['mean_cos']:.2f}"
    )
    print(
        f"  prompt-blind  heads for the named cup (cos > 0.9) {res['blind_heads_for_named_cup']:.0%}, "
        f"mean cos {res['blind_mean_cos']:.2f}   (a random cup of the scene)"
    )
    print(
        f"  aims at the named cup (closest direction) {res['aims_at_named_cup']:.0%} (chance {res['aim_chance']:.0%}); "
        f"spread of first directions {res['direction_spread_deg']:.0f} deg "
        f"(of the directions to the named cups {res['named_cup_spread_deg']:.0f} deg)"
    )
    if goal_hits:
        res.update(goal_nearest_named=float(np.mean(goal_hits)), goal_chance=float(np.mean(chance)))
        res["goal_error_median_m"] = float(np.median(goal_err))
        res["goal_nearest_cup_median_m"] = float(np.median(goal_any))
        print(
            f"  goal          nearest the named cup {res['goal_nearest_named']:.0%} (chance {res['goal_chance']:.0%}), "
            f"median distance to it {res['goal_error_median_m'] * 100:.1f} cm, to the nearest cup of any colour "
            f"{res['goal_nearest_cup_median_m'] * 100:.1f} cm (two cups of a scene lie {np.median(cup_gaps) * 100:.1f} "
            "cm apart, median)"
        )
    if args.episodes:
        res["approach"] = approach(policy, env, args.seed_start, args.episodes)
        a = res["approach"]
        print(
            f"  {args.episodes} whole episodes: success {a['success']:.0%}; closest approach to the named cup median "
            f"{a['closest_median_cm']:.2f} cm, within {100 * ALIGN_TOL:.1f} cm (the expert descends) "
            f"{a['within_align_tol']:.0%}, within 2 cm {a['within_2cm']:.0%}; ended below 8 cm more than 5 cm "
            f"from any cup {a['ended_low_away_from_cups']:.0%}"
        )
    env.close()
    for path in args.scenes:
        res.setdefault("read_out", {})[path] = acc = read_out_accuracy(policy, path)
        print(f"  read-out marks the named cup's cell in {acc:.1%} of the scenes of {path}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))


def trace(policy: Policy, env: gym.Env, seed: int, max_steps: int = 200) -> None:
    """One episode, a line per step: the grip's offset from the named cup in cm and in front-camera pixels (row,
    col), the grip's and the cup's heights, the gripper command."""
    base = env.unwrapped
    obs, info = env.reset(seed=seed)
    policy.reset()
    print(f"seed {seed}: {base.prompt!r}, cups {base.cup_colors}")
    print("step  dx_cm  dy_cm  d_row_px  d_col_px  grip_z_cm  cup_z_cm  gripper")
    for step in range(1, max_steps + 1):
        action = policy.select_action({**obs, "task": base.prompt})
        obs, _, term, trunc, info = env.step(action)
        cup, grip = base.cup_positions()[base.target_index], base.grip_pos()
        d = 100 * (grip[:2] - cup[:2])
        px = np.subtract(base.project(grip), base.project(np.array([cup[0], cup[1], grip[2]])))
        print(
            f"{step:4d} {d[0]:6.1f} {d[1]:6.1f} {px[0]:9.1f} {px[1]:9.1f} {100 * grip[2]:10.1f} "
            f"{100 * cup[2]:9.1f} {action[-1]:8.2f}"
        )
        if term or trunc:
            break
    print(f"success {bool(info.get('is_success', False))}, wrong cup lifted {bool(info.get('wrong_object', False))}")


def approach(policy: Policy, env: gym.Env, seed_start: int, episodes: int, max_steps: int = 200) -> dict:
    """Whole episodes from ``seed_start``: the grip's closest approach to the named cup and where each ended."""
    base, rows = env.unwrapped, []
    for s in range(seed_start, seed_start + episodes):
        obs, info = env.reset(seed=s)
        policy.reset()
        closest, success = np.inf, False
        for _ in range(max_steps):
            obs, _, term, trunc, info = env.step(policy.select_action({**obs, "task": base.prompt}))
            cup = base.cup_positions()[base.target_index]
            closest = min(closest, float(np.hypot(*(cup[:2] - base.grip_pos()[:2]))))
            success = bool(info.get("is_success", False))
            if term or trunc:
                break
        gaps = np.hypot(*(base.cup_positions()[:, :2] - base.grip_pos()[:2]).T)
        rows.append((success, 100 * closest, gaps.min() > 0.05 and base.grip_pos()[2] < 0.08))
    success, closest, low_away = (np.array(c) for c in zip(*rows, strict=True))
    return {
        "episodes": episodes,
        "success": float(success.mean()),
        "closest_median_cm": float(np.median(closest)),
        "within_align_tol": float(np.mean(closest < 100 * ALIGN_TOL)),
        "within_2cm": float(np.mean(closest < 2.0)),
        "ended_low_away_from_cups": float(low_away.mean()),
    }


def read_out_accuracy(policy: Policy, path: str) -> float:
    """How often the policy's pointing read-out marks the cell of the named cup in a robotok-record-scenes file."""
    import torch

    from robotok.policy.ground import ground_set
    from robotok.sim_envs.scenes import load_scenes

    if not policy.model.cfg.ground_head:
        raise SystemExit(
            f"grounding: error: {path}: the policy has no pointing read-out (trained without --ground-weight)"
        )
    g = ground_set([load_scenes(path)], policy.space, policy.video_tokenizer)
    with torch.no_grad():
        prompt, video = (torch.from_numpy(g[k].astype(np.int64)) for k in ("prompt", "video"))
        logits = policy.model.ground_logits(prompt, video)
    return float((logits.argmax(-1).numpy() == g["cell"]).mean())


if __name__ == "__main__":
    main()
