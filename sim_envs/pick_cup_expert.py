"""Scripted expert for robotok/PickCup-v0 and a command that measures its success rate.

The expert reads the simulator state (cup and gripper positions), not the pixels: move above the
target cup, align the yaw, descend, close, lift. With ``noise > 0`` it adds random velocity bursts
(and a little jitter) while it approaches and then corrects them, so that recorded demonstrations show
recoveries and not only one perfect path.

    python -m robotok.sim_envs.pick_cup --check-expert 100 [--noise 0.3]
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from robotok.sim_envs.pick_cup import PickCupEnv

HOVER_Z = 0.15  # grip height while moving over the table: the jaws clear every cup (top at 9 cm)
GRASP_Z = 0.05  # grip height when closing: the pads span 3-10 cm, the palm clears the rim
LIFT_Z = 0.22  # grip height to lift to (cup bottom ~13 cm up, well past the 8 cm of success)
ALIGN_TOL = 0.012  # horizontal error (m) under which the expert descends / closes
GAIN = 0.7  # fraction of the remaining error commanded per step


class PickCupExpert:
    """Callable ``expert(obs) -> action float32[5]`` for the episode the env is in (make it after reset).

    ``noise`` in [0, 1] scales the perturbations; ``cup`` overrides which cup to pick (default: the target).
    """

    def __init__(self, env: Any, noise: float = 0.0, cup: int | None = None) -> None:
        from robotok.sim_envs.pick_cup import PickCupEnv

        base = env.unwrapped
        if not isinstance(base, PickCupEnv) or base.control != "ee":
            raise ValueError(f"PickCupExpert needs a PickCupEnv with control='ee', got {base!r}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise={noise!r}: need 0 <= noise <= 1")
        if cup is not None and not 0 <= cup < len(base.cup_colors):
            raise ValueError(f"cup={cup!r}: the table has {len(base.cup_colors)} cups")
        self.env: PickCupEnv = base
        # Which cup to pick: the prompted one, unless told otherwise (tests use that to lift a wrong cup).
        self.cup = base.target_index if cup is None else int(cup)
        self.noise = float(noise)
        self.rng = np.random.default_rng(base.expert_seed)  # its own stream: the env's stays untouched
        self.phase = "approach"
        self._close_steps = 0
        self._burst_left = 0
        self._burst = np.zeros(4)

    def _velocity(self, goal: np.ndarray, grip: np.ndarray) -> np.ndarray:
        """Proportional velocity towards ``goal``; the horizontal part is scaled down as a vector, not clipped
        per axis, so that it always points at the goal. Clipping each axis would command (+-1, +-1) from
        anywhere more than ~2 cm away, and the demonstrations would then say only on which side the cup is,
        not where: the direction of every approach step is what teaches a policy to find the named cup."""
        from robotok.sim_envs.pick_cup import CONTROL_HZ, MAX_SPEED

        v = GAIN * (goal - grip) / (MAX_SPEED / CONTROL_HZ)
        v[:2] /= max(1.0, float(np.abs(v[:2]).max()))
        return np.clip(v, -1.0, 1.0)

    def __call__(self, obs: Any = None) -> np.ndarray:
        """The command to execute: the intended one plus this step's perturbation."""
        return self.act(obs)[1]

    def act(self, obs: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(intended, executed): the command towards the goal and that command with this step's perturbation
        added. Demonstrations label each step with the intended one: the perturbation moves the arm off the
        path so the data shows recoveries, but it is not behaviour a policy should copy."""
        env = self.env
        cup = env.cup_positions()[self.cup]
        grip = env.grip_pos()
        dxy = float(np.hypot(*(cup[:2] - grip[:2])))
        gripper = -1.0
        if self.phase == "approach":
            # Stay high until above the cup; descend only while aligned, so no jaw lands on the rim.
            z = GRASP_Z if dxy < ALIGN_TOL else (HOVER_Z if dxy > 0.03 else max(grip[2], GRASP_Z + 0.03))
            goal = np.array([cup[0], cup[1], z])
            if dxy < ALIGN_TOL * 0.7 and grip[2] < GRASP_Z + 0.008:
                self.phase, self._close_steps = "close", 0
        elif self.phase == "close":
            goal, gripper = np.array([cup[0], cup[1], GRASP_Z]), 1.0
            self._close_steps += 1
            if self._close_steps >= 5:
                self.phase = "lift"
        else:  # lift
            goal, gripper = np.array([grip[0], grip[1], LIFT_Z]), 1.0
            if grip[2] > GRASP_Z + 0.04 and cup[2] < grip[2] - 0.04:  # the cup slipped out: start over
                self.phase = "approach"
        action = np.zeros(5)
        action[:3] = self._velocity(goal, grip)
        action[3] = np.clip(-2.0 * env.grip_yaw(), -1.0, 1.0)  # keep the jaws square to the table
        action[4] = gripper
        intended = np.clip(action, -1.0, 1.0).astype(np.float32)
        if self.noise > 0:
            action[:4] += self._perturbation()
        return intended, np.clip(action, -1.0, 1.0).astype(np.float32)

    def _perturbation(self) -> np.ndarray:
        """Random velocity bursts of 3-7 steps while approaching, plus small jitter always."""
        jitter = self.rng.normal(0.0, 0.05 * self.noise, size=4)
        if self.phase != "approach":
            self._burst_left = 0
            return jitter
        if self._burst_left == 0 and self.rng.random() < 0.08:
            self._burst_left = int(self.rng.integers(3, 8))
            self._burst = self.rng.uniform(-1.0, 1.0, size=4) * self.noise
        if self._burst_left > 0:
            self._burst_left -= 1
            return jitter + self._burst
        return jitter


@dataclasses.dataclass
class CheckConfig:
    """Run the scripted expert on PickCup-v0 and print its success rate and wrong-cup lifts."""

    check_expert: int = 100
    """number of episodes (seeds seed_start, seed_start + 1, ...)"""
    noise: float = 0.0
    """expert perturbation scale in [0, 1]"""
    seed_start: int = 0
    """first seed"""
    width: int = 64
    """image width"""
    height: int = 64
    """image height"""

    def __post_init__(self) -> None:
        if self.check_expert < 1:
            raise ValueError(f"check_expert={self.check_expert}: need at least 1 episode")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise={self.noise}: need 0 <= noise <= 1")


def run_expert_episode(
    env: Any, seed: int, noise: float = 0.0, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One expert episode under the env's time limit: success, wrong lift, steps, and which cup rose."""
    obs, info = env.reset(seed=seed, options=options)
    expert = PickCupExpert(env, noise=noise)
    steps, term, trunc = 0, False, False
    while not (term or trunc):
        obs, _, term, trunc, info = env.step(expert(obs))
        steps += 1
    base = env.unwrapped
    return {
        "success": bool(info["is_success"]),
        "wrong_object": bool(info["wrong_object"]),
        "steps": steps,
        "highest_cup": base.cup_colors[int(np.argmax(base.cup_heights()))],
        "target": base.target_color,
    }


def main() -> None:
    import gymnasium as gym
    import tyro
    from tqdm import tqdm

    import robotok.sim_envs  # noqa: F401  (registers the ids)

    cfg = tyro.cli(CheckConfig)
    env = gym.make("robotok/PickCup-v0", width=cfg.width, height=cfg.height)
    results, t0 = [], time.perf_counter()
    for s in tqdm(range(cfg.seed_start, cfg.seed_start + cfg.check_expert), desc="expert episodes"):
        results.append(run_expert_episode(env, s, cfg.noise))
    elapsed = time.perf_counter() - t0
    env.close()
    n, steps = len(results), sum(r["steps"] for r in results)
    failed = [cfg.seed_start + i for i, r in enumerate(results) if not r["success"]]
    print(
        f"episodes {n}  noise {cfg.noise}  success_rate {sum(r['success'] for r in results) / n:.3f}  "
        f"wrong_object {sum(r['wrong_object'] for r in results)}  mean_steps {steps / n:.1f}  "
        f"steps_per_s {steps / elapsed:.0f} (expert + both cameras at {cfg.width}x{cfg.height})"
    )
    if failed:
        print(f"failed seeds: {failed}")
