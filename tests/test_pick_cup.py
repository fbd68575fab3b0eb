"""robotok/PickCup-v0: the gymnasium contract, determinism, the expert, and that the prompt decides the cup."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robotok.sim_envs  # noqa: F401  (registers the ids)
from robotok.sim_envs.pick_cup import CUP_COLORS, DEFAULT_PROMPT_TEMPLATES, SUCCESS_LIFT, PickCupEnv
from robotok.sim_envs.pick_cup_expert import PickCupExpert, run_expert_episode


@pytest.fixture(scope="module")
def env() -> PickCupEnv:
    e = PickCupEnv()
    yield e
    e.close()


@pytest.mark.parametrize("control", ["ee", "joint"])
def test_check_env_passes(control: str) -> None:
    e = PickCupEnv(control=control)
    check_env(e, skip_render_check=True)
    e.close()


def test_observation_shapes_and_info() -> None:
    e = gym.make("robotok/PickCup-v0", width=80, height=48, render_mode="rgb_array")
    obs, info = e.reset(seed=3)
    assert obs["pixels"]["front"].shape == (48, 80, 3) and obs["pixels"]["front"].dtype == np.uint8
    assert obs["pixels"]["wrist"].shape == (48, 80, 3) and obs["pixels"]["wrist"].dtype == np.uint8
    assert obs["agent_pos"].shape == (6,) and obs["agent_pos"].dtype == np.float32
    assert e.render().shape == (48, 80, 3)
    base = e.unwrapped
    assert info["prompt"] == base.prompt and base.target_color in base.prompt
    assert base.target_color in base.cup_colors and len(set(base.cup_colors)) == len(base.cup_colors)
    assert any(base.prompt == t.format(color=base.target_color) for t in DEFAULT_PROMPT_TEMPLATES)
    assert len(DEFAULT_PROMPT_TEMPLATES) >= 6 and len(CUP_COLORS) >= 5
    obs, reward, term, trunc, info = e.step(e.action_space.sample())
    assert {"is_success", "wrong_object", "prompt", "reward_reach", "reward_grasp", "reward_lift"} <= set(info)
    assert info["prompt"] == base.prompt and isinstance(info["is_success"], bool)
    # The start pose is fixed: grip 22 cm over the table, jaws open, yaw 0, nothing held.
    obs, _ = e.reset(seed=4)
    np.testing.assert_allclose(obs["agent_pos"], [0.30, 0.0, 0.22, 0.0, 0.098, 0.0], atol=0.01)
    e.close()


def test_front_camera_shows_each_cup_in_its_colour(env: PickCupEnv) -> None:
    """At 64x64 the pixels where each cup stands have that cup's colour (nearest in chromaticity)."""
    palette = {**CUP_COLORS, "table": tuple(env.model.geom_rgba[env._table_geom, :3])}
    names = list(palette)
    chroma = np.array([palette[n] for n in names]) / np.array([palette[n] for n in names]).max(1, keepdims=True)
    for seed in range(8):
        obs, _ = env.reset(seed=seed)
        img = obs["pixels"]["front"].astype(np.float32)
        for name, centre in zip(env.cup_colors, env.cup_positions(), strict=True):
            r, c = (int(v) for v in env.project(centre + np.array([0.0, 0.0, 0.02])))
            assert 1 <= r < env.height - 1 and 1 <= c < env.width - 1, (seed, name, r, c)
            patch = img[r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 3).mean(0)
            seen = names[int(np.argmin(np.abs(chroma - patch / patch.max()).sum(1)))]
            assert seen == name, (seed, name, seen, patch)


def test_wrist_camera_labels_the_named_cup_where_it_shows_and_nothing_behind_it() -> None:
    """The wrist-camera scenes' labels (``target_pixel("wrist")``): once the expert hovers over the named cup, the
    pixels there have its colour; a point behind the camera has no pixel (NaN), not a mirrored one."""
    from robotok.sim_envs.pick_cup_expert import PickCupExpert

    env = PickCupEnv(cameras=("wrist",))
    names = list(CUP_COLORS)
    chroma = np.array([CUP_COLORS[n] for n in names]) / np.array([CUP_COLORS[n] for n in names]).max(1, keepdims=True)
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        expert = PickCupExpert(env)
        while expert.phase == "approach":
            obs, *_ = env.step(expert(obs))
        r, c = (int(v) for v in env.target_pixel("wrist"))
        assert 1 <= r < env.height - 1 and 1 <= c < env.width - 1, (seed, r, c)
        patch = obs["pixels"]["wrist"][r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 3).astype(np.float32).mean(0)
        seen = names[int(np.argmin(np.abs(chroma - patch / patch.max()).sum(1)))]
        assert seen == env.cup_colors[env.target_index], (seed, seen, patch)
    cam = env.model.camera("wrist").id
    behind = env.data.cam_xpos[cam] + env.data.cam_xmat[cam].reshape(3, 3)[:, 2] * 0.1  # +z: behind the lens
    assert np.isnan(env.project(behind, "wrist")).all()
    env.close()


def test_same_seed_same_trajectory() -> None:
    a, b = PickCupEnv(), PickCupEnv()
    actions = np.random.default_rng(0).uniform(-1, 1, size=(40, 5)).astype(np.float32)
    for e in (a, b):
        e.reset(seed=11)
        e.reset(seed=5)  # the previous episode leaves nothing behind
    obs_a, _ = a.reset(seed=7)
    obs_b, _ = b.reset(seed=7)
    for t in range(len(actions) + 1):
        for cam in ("front", "wrist"):
            assert np.array_equal(obs_a["pixels"][cam], obs_b["pixels"][cam]), (t, cam)
        assert np.array_equal(obs_a["agent_pos"], obs_b["agent_pos"]), t
        assert np.array_equal(a.data.qpos, b.data.qpos), t
        if t < len(actions):
            obs_a, *_ = a.step(actions[t])
            obs_b, *_ = b.step(actions[t])
    other, _ = b.reset(seed=8)
    assert not np.array_equal(other["pixels"]["front"], a.reset(seed=7)[0]["pixels"]["front"])
    a.close()
    b.close()


def test_episodes_vary_scene_and_lighting(env: PickCupEnv) -> None:
    counts, tables, lights = set(), set(), set()
    for seed in range(20):
        env.reset(seed=seed)
        counts.add(len(env.cup_colors))
        tables.add(tuple(env.model.geom_rgba[env._table_geom].tolist()))
        lights.add(tuple(env.model.light_diffuse[0].tolist()))
        xy = env.cup_positions()[:, :2]
        gaps = [np.hypot(*(p - q)) for i, p in enumerate(xy) for q in xy[i + 1 :]]
        assert min(gaps) >= 0.15 and np.allclose(env.cup_heights(), 0.0, atol=2e-3), (seed, gaps)
    assert counts == {2, 3, 4} and len(tables) == 20 and len(lights) == 20
    for num_cups, allowed in ((2, {2}), ((3, 4), {3, 4})):
        e = PickCupEnv(num_cups=num_cups)
        seen = set()
        for s in range(8):
            e.reset(seed=s)
            seen.add(len(e.cup_colors))
        assert seen <= allowed, (num_cups, seen)
        e.close()


def test_expert_succeeds_without_wrong_lifts() -> None:
    e = gym.make("robotok/PickCup-v0")
    results = [run_expert_episode(e, seed) for seed in range(10)]
    assert all(r["success"] for r in results), results
    assert not any(r["wrong_object"] for r in results)
    assert all(r["highest_cup"] == r["target"] for r in results)
    assert max(r["steps"] for r in results) <= 120, [r["steps"] for r in results]
    assert e.unwrapped.cup_heights()[e.unwrapped.target_index] >= SUCCESS_LIFT
    e.close()


def test_expert_heads_straight_for_the_target_cup(env: PickCupEnv) -> None:
    """Each approach action points at the target cup (horizontal velocity scaled as a vector, not clipped per
    axis): demonstrations then say where the named cup is from the very first step, not only on which side."""
    cosines = []
    for seed in range(20):
        env.reset(seed=seed)
        expert = PickCupExpert(env)
        to_cup = env.cup_positions()[env.target_index][:2] - env.grip_pos()[:2]
        v = expert()[:2]
        cosines.append(float(v @ to_cup / (np.linalg.norm(v) * np.linalg.norm(to_cup))))
        assert np.abs(v).max() == pytest.approx(1.0, abs=1e-6)  # full speed on the leading axis while far
    assert min(cosines) > 0.999, cosines


def test_noisy_expert_recovers() -> None:
    e = gym.make("robotok/PickCup-v0")
    noisy = [run_expert_episode(e, seed, noise=0.6) for seed in range(6)]
    clean = [run_expert_episode(e, seed) for seed in range(6)]
    assert all(r["success"] and not r["wrong_object"] for r in noisy), noisy
    assert [r["steps"] for r in noisy] != [r["steps"] for r in clean]  # the perturbations do change the path
    e.close()


def test_prompt_decides_which_cup_is_lifted(env: PickCupEnv) -> None:
    seed = 0
    env.reset(seed=seed)
    while len(env.cup_colors) < 3:  # a scene with a third cup, as a distractor either way
        seed += 1
        env.reset(seed=seed)
    colors = list(env.cup_colors)
    scene = env.cup_positions()
    lifted = []
    for color in colors[:2]:
        obs, info = env.reset(seed=seed, options={"target_color": color})
        assert env.cup_colors == colors and np.array_equal(env.cup_positions(), scene)  # same scene
        assert color in info["prompt"] and env.target_color == color
        expert = PickCupExpert(env)
        for _ in range(200):
            obs, _, term, _, info = env.step(expert(obs))
            if term:
                break
        assert info["is_success"] and not info["wrong_object"], (color, info)
        lifted.append(colors[int(np.argmax(env.cup_heights()))])
    assert lifted == colors[:2]


def test_lifting_the_wrong_cup_fails(env: PickCupEnv) -> None:
    obs, _ = env.reset(seed=2)
    other = (env.target_index + 1) % len(env.cup_colors)
    expert = PickCupExpert(env, cup=other)
    steps, term = 0, False
    while not term and steps < 200:
        obs, reward, term, trunc, info = env.step(expert(obs))
        steps += 1
        assert not info["is_success"]
    assert term and info["wrong_object"] and steps < 150, (steps, info)
    assert env.cup_heights()[other] > 0.04 and reward == 0.0


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"num_cups": 5}, "5"),
        ({"num_cups": (3, 2)}, "(3, 2)"),
        ({"control": "torque"}, "torque"),
        ({"width": 0}, "width=0"),
        ({"reward_type": "shaped"}, "shaped"),
        ({"prompt_templates": ["pick a cup"]}, "pick a cup"),
        ({"render_mode": "human"}, "human"),
    ],
)
def test_bad_constructor_args_name_the_value(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=shown.replace("(", r"\(").replace(")", r"\)")):
        PickCupEnv(**kwargs)


def test_bad_target_option_and_expert_args(env: PickCupEnv) -> None:
    env.reset(seed=0)
    missing = next(c for c in CUP_COLORS if c not in env.cup_colors)
    with pytest.raises(ValueError, match=missing):
        env.reset(seed=0, options={"target_color": missing})
    with pytest.raises(ValueError, match="noise=2"):
        PickCupExpert(env, noise=2.0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(4, np.float32))


def test_custom_prompt_templates() -> None:
    e = PickCupEnv(prompt_templates=["fetch the {color} mug"])
    _, info = e.reset(seed=1)
    assert info["prompt"] == f"fetch the {e.target_color} mug"
    e.close()


def test_close_frees_renderer_and_env_still_works() -> None:
    e = PickCupEnv()
    first, _ = e.reset(seed=0)
    e.close()
    assert e._renderer is None
    again, _ = e.reset(seed=0)  # a fresh renderer is made on demand
    assert np.array_equal(first["pixels"]["front"], again["pixels"]["front"])
    e.close()


def _make() -> gym.Env:
    return gym.make("robotok/PickCup-v0")


def test_async_vector_env() -> None:
    venv = gym.vector.AsyncVectorEnv([_make, _make], context="spawn")
    obs, info = venv.reset(seed=[0, 1])
    assert obs["pixels"]["front"].shape == (2, 64, 64, 3) and obs["agent_pos"].shape == (2, 6)
    assert len(info["prompt"]) == 2 and all("cup" in p for p in info["prompt"])
    single, _ = PickCupEnv().reset(seed=1)
    assert np.array_equal(obs["pixels"]["wrist"][1], single["pixels"]["wrist"])
    for _ in range(3):
        obs, *_ = venv.step(np.zeros((2, 5), np.float32))
    venv.close()
