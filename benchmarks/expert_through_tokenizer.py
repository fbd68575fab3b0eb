"""Does the action tokenizer leave room for success? The PickCup expert run as a perfect chunking policy.

    python benchmarks/expert_through_tokenizer.py --tokenizer runs/demo/tokenizers/action/pickcup/bspline \
        --horizon 10 --n-action-steps 5 --seeds 50

A policy trained on tokenized chunks can at best emit the expert's chunk as the tokenizer round-trips it,
and executes only its first ``n_action_steps`` before it looks again. This runs that best case on unseen
seeds: at every chunk boundary the noise-free scripted expert plans ``horizon`` steps on the simulator
(then the simulator and the expert are put back as they were), the plan goes through
``encode``/``decode``, and the env executes the first ``n_action_steps`` decoded actions. The same seeds
run with the raw plan (no tokenizer) as the baseline, in the same run. Prints success for both, their
ratio, and the round-trip error of the planned chunks (max abs per chunk, actions in [-1, 1]).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import tyro

PROG = "benchmarks/expert_through_tokenizer.py"
ENV_PRIVATE = ("_q_cmd", "_target_pos", "_target_yaw", "_hold_steps")  # PickCupEnv's controller state


@dataclass
class BenchConfig:
    """The PickCup expert, in chunks, through an action tokenizer: success against the raw chunks."""

    tokenizer: str = "runs/demo/tokenizers/action/pickcup/bspline"
    """Action tokenizer directory (robotok-fit-tokenizers), fitted on 5-D PickCup actions."""
    horizon: int = 10
    """Chunk length H the policy predicts."""
    n_action_steps: int = 5
    """Actions executed per chunk before the next one."""
    seeds: int = 50
    """Episodes, seeds seed .. seed + seeds - 1."""
    seed: int = 100_000
    """First seed (demonstrations are recorded from seed 0)."""

    def __post_init__(self) -> None:
        if self.seeds < 1 or not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(
                f"seeds {self.seeds} >= 1 and 1 <= n_action_steps {self.n_action_steps} <= horizon {self.horizon}"
            )


def run_episode(env: Any, seed: int, cfg: BenchConfig, tok: Any | None) -> tuple[bool, list[float]]:
    """One episode of the chunking expert; ``tok`` None executes the raw plans. Returns success, chunk errors."""
    import mujoco

    from robotok.sim_envs.pick_cup_expert import PickCupExpert

    env.reset(seed=seed)
    base, expert = env.unwrapped, PickCupExpert(env)
    errors, info, done = [], {"is_success": False}, False
    while not done:
        d = base.data
        saved = (d.qpos.copy(), d.qvel.copy(), d.act.copy(), d.ctrl.copy(), d.time)
        private = {k: copy.deepcopy(getattr(base, k)) for k in ENV_PRIVATE}
        plan, expert_after = [], None
        for i in range(cfg.horizon):  # the expert's plan, played on the simulator and then undone
            plan.append(expert())
            if i + 1 == cfg.n_action_steps:  # its phase as it will be when the executed part is done
                expert_after = {k: copy.deepcopy(v) for k, v in vars(expert).items() if k != "env"}
            _, _, terminated, truncated, _ = env.step(plan[-1])
            if terminated or truncated:
                break
        if expert_after is None:
            expert_after = {k: copy.deepcopy(v) for k, v in vars(expert).items() if k != "env"}
        chunk = np.array(plan + [plan[-1]] * (cfg.horizon - len(plan)), np.float32)
        d.qpos[:], d.qvel[:], d.act[:], d.ctrl[:], d.time = *saved[:4], saved[4]
        for k, v in private.items():
            setattr(base, k, v)
        vars(expert).update(expert_after)
        mujoco.mj_forward(base.model, d)
        run = chunk
        if tok is not None:
            run, _ = tok.decode(tok.encode(chunk), cfg.horizon, chunk.shape[1])
            run = np.asarray(run, np.float32)
            errors.append(float(np.abs(run - chunk).max()))
        for a in run[: cfg.n_action_steps]:
            _, _, terminated, truncated, info = env.step(np.clip(a, -1.0, 1.0))
            if terminated or truncated:
                done = True
                break
    return bool(info["is_success"]), errors


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    import gymnasium as gym
    from tqdm import tqdm

    import robotok.sim_envs  # noqa: F401  (registers the env ids)
    from robotok.tokenizers.action import load_action_tokenizer

    try:
        tok = load_action_tokenizer(cfg.tokenizer)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    env = gym.make("robotok/PickCup-v0", width=16, height=16)  # the expert reads the state, not the pixels
    wins, errors = {"raw": 0, "tokenized": 0}, []
    try:
        for s in tqdm(range(cfg.seed, cfg.seed + cfg.seeds), desc=PROG, unit="ep"):
            wins["raw"] += run_episode(env, s, cfg, None)[0]
            ok, err = run_episode(env, s, cfg, tok)
            wins["tokenized"] += ok
            errors += err
    finally:
        env.close()
    n = cfg.seeds
    print(f"| PickCup expert, chunks of {cfg.horizon}, {cfg.n_action_steps} executed | success | ratio |")
    print("|---|---:|---:|")
    print(f"| raw plans | {wins['raw']}/{n} | 1.00 |")
    ratio = wins["tokenized"] / max(wins["raw"], 1)
    print(f"| through {cfg.tokenizer} | {wins['tokenized']}/{n} | {ratio:.2f} |")
    e = np.asarray(errors)
    print(f"round-trip max abs error per chunk: mean {e.mean():.3f}, p90 {np.quantile(e, 0.9):.3f} ({len(e)} chunks)")


if __name__ == "__main__":
    main()
