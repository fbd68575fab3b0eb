"""MuJoCo tasks of a world built for people, as gymnasium envs, with scripted experts.

Importing this package registers the env ids ``robotok/PickCup-v0`` and ``robotok/Drive-v0``.
No torch here: recording demonstrations must not need the training stack.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

import robotok  # noqa: F401  (sets MUJOCO_GL=egl before mujoco is imported)

ENV_IDS = ("robotok/PickCup-v0", "robotok/Drive-v0")

if "robotok/PickCup-v0" not in gym.registry:
    gym.register(id="robotok/PickCup-v0", entry_point="robotok.sim_envs.pick_cup:PickCupEnv", max_episode_steps=200)
if "robotok/Drive-v0" not in gym.registry:
    gym.register(id="robotok/Drive-v0", entry_point="robotok.sim_envs.drive:DriveEnv", max_episode_steps=400)


class Expert(Protocol):
    """A scripted expert: ``expert(obs)`` is the command to execute; ``expert.act(obs)`` is (intended,
    executed), the command without and with the injected perturbation."""

    def __call__(self, obs: Any = None) -> np.ndarray: ...

    def act(self, obs: Any = None) -> tuple[np.ndarray, np.ndarray]: ...


def make_expert(env: gym.Env, noise: float = 0.0) -> Expert:
    """A scripted expert for the episode the env is in now (call after ``reset``).

    It reads the simulator state (not the pixels), so it is an upper bound for a policy, and with
    ``noise > 0`` it injects perturbations that it then recovers from, for diverse demonstrations.
    """
    base = env.unwrapped
    # Dispatch on the module that defines the env, so that one env's module never imports the other's.
    module = type(base).__module__
    if module == "robotok.sim_envs.pick_cup":
        from robotok.sim_envs.pick_cup import PickCupExpert

        return PickCupExpert(base, noise=noise)
    if module == "robotok.sim_envs.drive":
        from robotok.sim_envs.drive import DriveExpert

        return DriveExpert(base, noise=noise)
    raise TypeError(f"no scripted expert for {type(base).__name__}; experts exist for {', '.join(ENV_IDS)}")


def scene_targets(env: gym.Env) -> tuple[str, list[str]]:
    """The reset-option key and the candidate targets of the scene the env is in now (call after ``reset``):
    ``("target_color", cup colours)`` on PickCup, ``("route", routes)`` on Drive. ``env.reset(seed=s,
    options={key: t})`` replays scene ``s`` with target ``t`` named in the prompt."""
    base = env.unwrapped
    for attr, key in (("cup_colors", "target_color"), ("routes", "route")):
        if hasattr(base, attr):
            return key, [str(t) for t in getattr(base, attr)]
    raise ValueError(f"{type(base).__name__} exposes no candidate targets (cup_colors / routes)")


def json_object(name: str, text: str) -> dict[str, Any]:
    """``--name``'s JSON text as a dict (env kwargs, reset options); ValueError naming the flag otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--{name.replace('_', '-')} is not valid JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        raise ValueError(f"--{name.replace('_', '-')} must be a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value
