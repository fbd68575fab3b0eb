"""Scripted Drive-v0 expert: pure pursuit on the route's lane centreline plus a speed controller.

Pure pursuit (Coulter, "Implementation of the Pure Pursuit Path Tracking Algorithm", CMU-RI-TR-92-01)
steers the rear axle towards a point one look-ahead distance further along the centreline. The speed
plan cruises on straights, slows for the turn, and brakes to a halt at the goal with a bounded
deceleration; a car that has gone past the goal (a policy that braked late, in a recording of corrections)
backs up to it with the wheels straight. With ``noise > 0`` it injects bursts of steering and throttle
perturbation (and a little jitter) that pure pursuit then recovers from, for diverse demonstrations. It reads
the simulator state, not the pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CRUISE = 4.0  # m/s on straights
TURN_SPEED = 2.5  # m/s through the turns
DECEL = 1.5  # m/s^2 planned braking (the drive servos manage about 3)
REVERSE_SPEED = 1.0  # m/s at most, backing up to a goal the car has passed
OVERSHOOT = 0.5  # m past the goal before backing up (the goal regions reach at least 1 m either side)
_MAX_SPEED, _MAX_STEER, _WHEELBASE = 6.0, 0.6, 1.3  # the env's actuation (robotok.sim_envs.drive)


class DriveExpert:
    """``expert(observation) -> action`` float32 [2] for the episode the env is in (make it after reset)."""

    def __init__(self, env: Any, noise: float = 0.0) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.env = env.unwrapped
        if self.env.layout is None:
            raise RuntimeError("make the expert after env.reset()")
        self.noise = float(noise)
        self.path = self.env.path
        self.rng = np.random.default_rng(self.env.layout.expert_seed)
        self._burst = 0
        self._offset = np.zeros(2)

    def target_speed(self, s: float) -> float:
        """The speed plan at arc length s: cruise, slow for the turn, stop at the goal; negative (back up)
        more than ``OVERSHOOT`` past it."""
        t0, t1 = self.path.turn
        v = CRUISE
        if t1 > t0:
            if t0 - 1.0 <= s <= t1:
                v = TURN_SPEED
            elif s < t0:
                v = min(v, np.sqrt(TURN_SPEED**2 + 2 * DECEL * (t0 - 1.0 - s)))
        to_goal = self.path.s_goal - s
        if to_goal < -OVERSHOOT:
            return -float(min(REVERSE_SPEED, np.sqrt(2 * DECEL * (-to_goal - 0.1))))
        if to_goal < 0.1:
            return 0.0
        return float(min(v, np.sqrt(2 * DECEL * to_goal) + 0.2))

    def __call__(self, observation: Any = None) -> np.ndarray:
        """The command to execute: the intended one plus this step's perturbation."""
        return self.act(observation)[1]

    def act(self, observation: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(intended, executed): the pure-pursuit command and that command with this step's perturbation added
        (the label of a demonstration step is the intended one)."""
        delta, s_centre = self.pursuit()
        speed = self.env.car_speed()
        v_target = self.target_speed(s_centre)
        throttle = v_target / _MAX_SPEED + 0.3 * (v_target - speed) if v_target != 0 else 0.0
        if v_target < 0:  # backing up a metre or two along a lane: keep the wheels straight
            delta = 0.0
        action = np.array([delta / _MAX_STEER, throttle])
        intended = np.clip(action, -1.0, 1.0).astype(np.float32)
        if self.noise > 0:
            action += self._perturbation()
        return intended, np.clip(action, -1.0, 1.0).astype(np.float32)

    def pursuit(self) -> tuple[float, float]:
        """(steering angle in rad that pure pursuit commands going forward, arc length of the car centre)."""
        x, y, yaw = self.env.car_pose()
        heading = np.array([np.cos(yaw), np.sin(yaw)])
        rear = np.array([x, y]) - 0.5 * _WHEELBASE * heading
        pts, s = self.path.points, self.path.s
        i = int(np.argmin(np.sum((pts - rear) ** 2, axis=1)))
        look = float(np.clip(1.5 + 0.5 * abs(self.env.car_speed()), 2.0, 4.0))
        j = min(int(np.searchsorted(s, s[i] + look)), len(s) - 1)
        dx, dy = pts[j] - rear
        alpha = np.arctan2(dy, dx) - yaw
        delta = np.arctan2(2 * _WHEELBASE * np.sin(alpha), max(np.hypot(dx, dy), 1e-3))
        return float(delta), float(s[i]) + 0.5 * _WHEELBASE  # plan the speed for the car centre

    def _perturbation(self) -> np.ndarray:
        """Bursts of 3-9 steps of constant offset, started with probability 0.05 per step, plus jitter."""
        if self._burst == 0 and self.rng.random() < 0.05:
            self._burst = int(self.rng.integers(3, 10))
            self._offset = self.noise * np.array([self.rng.uniform(-1.0, 1.0), self.rng.uniform(-0.3, 0.3)])
        out = self.rng.normal(0.0, 0.1 * self.noise, size=2)
        if self._burst > 0:
            self._burst -= 1
            out += self._offset
        return out
