"""robotok/Drive-v0: gymnasium contract, determinism, expert success, prompt-following, crashes, arguments."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robotok.sim_envs  # noqa: F401  (registers the ids)
from robotok.sim_envs import make_expert
from robotok.sim_envs.drive import DEFAULT_PROMPTS, ROUTES, STATE_DIM, DriveEnv, DriveExpert
from robotok.sim_envs.drive_scene import APPROACH_LEN, BENDS, approach_frame, approach_point, on_road
from robotok.sim_envs.drive_track import lane_frame, route_path


def run_episode(env: gym.Env, expert, max_steps: int = 400) -> tuple[dict, int]:
    obs, info = None, {}
    for t in range(max_steps):
        obs, _, term, trunc, info = env.step(expert(obs))
        if term or trunc:
            return info, t + 1
    return info, max_steps


def test_check_env() -> None:
    env = gym.make("robotok/Drive-v0", render_mode="rgb_array").unwrapped
    check_env(env)
    frame = env.render()
    assert frame.shape == (64, 128, 3) and frame.dtype == np.uint8
    env.close()


def test_spaces_shapes_and_dtypes() -> None:
    env = gym.make("robotok/Drive-v0", width=48, height=32)
    obs, info = env.reset(seed=3)
    assert set(obs["pixels"]) == {"front", "top"}
    for img in obs["pixels"].values():
        assert img.shape == (32, 48, 3) and img.dtype == np.uint8, img.shape
        assert img.std() > 5, "an image without contrast: the camera sees nothing"
    assert obs["agent_pos"].shape == (STATE_DIM,) and obs["agent_pos"].dtype == np.float32
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    assert info["prompt"] == env.unwrapped.prompt and info["prompt"] in DEFAULT_PROMPTS[env.unwrapped.route]
    obs, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert {"route_completion", "collision", "off_road", "is_success", "prompt"} <= set(info)
    assert 0.0 <= info["route_completion"] <= 1.0
    no_pixels = DriveEnv(cameras=())
    obs, _ = no_pixels.reset(seed=3)
    assert set(obs) == {"agent_pos"} and no_pixels.observation_space.contains(obs)
    env.close()


def test_determinism_bit_identical() -> None:
    actions = np.random.default_rng(0).uniform(-0.5, 1.0, size=(40, 2)).astype(np.float32)
    runs = []
    for _ in range(2):
        env = DriveEnv()
        obs, info = env.reset(seed=11)
        traj = [obs]
        for a in actions:
            traj.append(env.step(a)[0])
        runs.append((info["prompt"], traj))
        env.close()
    assert runs[0][0] == runs[1][0]
    for o1, o2 in zip(runs[0][1], runs[1][1], strict=True):
        assert np.array_equal(o1["agent_pos"], o2["agent_pos"])
        for cam in ("front", "top"):
            assert np.array_equal(o1["pixels"][cam], o2["pixels"][cam])
    env = DriveEnv()
    first, _ = env.reset(seed=11)
    env.reset(seed=12)
    again, _ = env.reset(seed=11)  # resetting the same env to a seed gives the same episode too
    assert np.array_equal(first["pixels"]["top"], again["pixels"]["top"])
    different, _ = env.reset(seed=12)
    assert not np.array_equal(first["agent_pos"], different["agent_pos"])


def test_route_only_in_the_prompt() -> None:
    """The same seed under two routes: identical first observation, different prompt."""
    env = DriveEnv()
    obs = {r: env.reset(seed=5, options={"route": r}) for r in ROUTES}
    for r in ROUTES[1:]:
        assert np.array_equal(obs[r][0]["agent_pos"], obs["end"][0]["agent_pos"])
        assert np.array_equal(obs[r][0]["pixels"]["front"], obs["end"][0]["pixels"]["front"])
        assert obs[r][1]["prompt"] in DEFAULT_PROMPTS[r]
    assert len({obs[r][1]["prompt"] for r in ROUTES}) == len(ROUTES)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_expert_succeeds_on_every_route(noise: float) -> None:
    env = gym.make("robotok/Drive-v0", cameras=())
    results = []
    for k in range(8):
        route = ROUTES[k % 4]
        env.reset(seed=100 + k, options={"route": route})
        info, steps = run_episode(env, make_expert(env, noise=noise))
        results.append((route, info["is_success"], info["goal_region"], steps))
    assert all(ok and goal == route for route, ok, goal, _ in results), results
    assert all(steps <= 250 for *_, steps in results), results  # short episodes


@pytest.mark.parametrize("past", [1.0, 2.5])
def test_expert_backs_up_to_a_stop_goal_it_was_driven_past(past: float) -> None:
    """A car driven on past the stop region (a policy that braked late) is not lost: the expert brakes, backs up
    with the wheels straight and stops inside the region, on every approach shape."""
    env = gym.make("robotok/Drive-v0", cameras=())
    for k in range(6):
        obs, _ = env.reset(seed=300 + k, options={"route": "stop"})
        car, expert = env.unwrapped, make_expert(env)
        for _ in range(200):  # steered by pure pursuit at a steady 2 m/s, never braking
            steer, s_centre = expert.pursuit()
            obs, _, term, _, info = env.step(np.array([steer / 0.6, 2.0 / 6.0], dtype=np.float32))
            assert not term, info
            if s_centre > car.path.s_goal + 1.1 + past:  # the region ends 1.1 m past its middle (the goal)
                break
        assert s_centre > car.path.s_goal + 1.1 + past and info["goal_region"] == "", (k, s_centre, info)
        speeds: list[float] = []

        def act(o: dict, speeds: list[float] = speeds, car=car, expert=expert) -> np.ndarray:
            speeds.append(car.car_speed())
            return expert(o)

        info, steps = run_episode(env, act)
        assert info["is_success"] and info["goal_region"] == "stop", (k, info, steps)
        assert min(speeds) < -0.3 and steps < 150, (k, min(speeds), steps)


def test_expert_keeps_clear_of_every_obstacle() -> None:
    """The cones stand on the road edge, clear of a car in its lane: the clean expert passes each obstacle with
    at least 0.2 m to spare (with the cones 0.2 m inside the edge it scraped the red cone on bent approaches)."""
    import mujoco

    env = gym.make("robotok/Drive-v0", cameras=())
    m, d = env.unwrapped.model, env.unwrapped.data
    car = [m.geom(g).id for g in ("chassis", "wheel_fl", "wheel_fr", "wheel_rl", "wheel_rr")]
    obstacles = [m.geom(g).id for g in ("cone_red", "cone_a", "cone_b", "parked_a", "parked_b")]
    closest = []
    for k in range(24):
        obs, _ = env.reset(seed=200 + k, options={"route": ROUTES[k % 4]})
        expert, done, gap = make_expert(env), False, np.inf
        while not done:
            obs, _, term, trunc, _ = env.step(expert(obs))
            done = term or trunc
            gap = min(gap, *(mujoco.mj_geomDistance(m, d, c, o, 1.0, None) for c in car for o in obstacles))
        closest.append(round(float(gap), 3))
    assert min(closest) > 0.2, closest


def test_prompt_matters() -> None:
    """Same seed, different prompted routes: the expert stops in different goal regions, and success is
    judged against the prompted route (driving the left route under a right prompt is no success)."""
    env = DriveEnv(cameras=())
    goals = {}
    for route in ("left", "right", "stop"):
        env.reset(seed=21, options={"route": route})
        info, _ = run_episode(env, DriveExpert(env))
        assert info["is_success"]
        goals[route] = (info["goal_region"], tuple(np.round(env.car_pose()[:2], 1)))
    assert len({g for g, _ in goals.values()}) == 3 and len({p for _, p in goals.values()}) == 3, goals

    env.reset(seed=21, options={"route": "right"})
    wrong = DriveExpert(env)
    wrong.path = route_path("left", env.layout)  # drive the other route
    successes, info = [], {}
    for _ in range(250):
        _, _, term, _, info = env.step(wrong(None))
        successes.append(info["is_success"])
        if term:
            break
    assert info["goal_region"] == "left" and abs(info["speed"]) < 0.3  # stopped on the left goal strip ...
    assert not any(successes) and not info["collision"] and not info["off_road"]  # ... which is no success


def test_driving_off_road_ends_the_episode() -> None:
    env = DriveEnv(cameras=())
    env.reset(seed=2, options={"route": "end"})
    for _ in range(400):
        _, reward, term, _, info = env.step(np.array([-1.0, 0.6], np.float32))  # hard right
        if term:
            break
    assert term and info["off_road"] and not info["is_success"] and reward < 0


def test_driving_into_the_end_wall_is_a_collision() -> None:
    env = DriveEnv(cameras=())
    env.reset(seed=2, options={"route": "end"})
    expert = DriveExpert(env)
    for _ in range(400):
        steer = expert(None)[0]  # keep the lane but never brake
        _, _, term, _, info = env.step(np.array([steer, 1.0], np.float32))
        if term:
            break
    assert term and info["collision"] and not info["is_success"]
    assert env.car_pose()[0] > 8.0  # it went past the goal strip into the wall


def test_custom_prompt_templates_and_route_option() -> None:
    env = DriveEnv(cameras=(), prompt_templates={"left": ["hang a left"], "stop": ["wait at the red cone"]})
    seen = {env.reset(seed=s)[1]["prompt"] for s in range(12)}
    assert seen == {"hang a left", "wait at the red cone"}
    assert env.reset(seed=0, options={"route": "stop"})[1]["prompt"] == "wait at the red cone"
    assert env.unwrapped.route == "stop"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"width": 0}, "0"),
        ({"height": "64"}, "'64'"),
        ({"cameras": ("front", "rear")}, "rear"),
        ({"prompt_templates": {"north": ["go north"]}}, "north"),
        ({"prompt_templates": {"left": []}}, "left"),
        ({"render_mode": "human"}, "human"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        DriveEnv(**kwargs)


def test_bad_reset_option_and_action_raise_value_error() -> None:
    env = DriveEnv(cameras=())
    with pytest.raises(ValueError, match="north"):
        env.reset(seed=0, options={"route": "north"})
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="1.5"):
        DriveExpert(env, noise=1.5)


def test_async_vector_env() -> None:
    """Renderers are made lazily inside the workers (spawned), so vectorised envs render."""
    # "module:id" makes gym import robotok.sim_envs (which registers the id) inside each spawned worker
    envs = gym.vector.AsyncVectorEnv([lambda: gym.make("robotok.sim_envs:robotok/Drive-v0")] * 2, context="spawn")
    obs, infos = envs.reset(seed=[1, 2])
    assert obs["pixels"]["front"].shape == (2, 64, 64, 3) and obs["agent_pos"].shape == (2, STATE_DIM)
    for _ in range(3):
        obs, _, _, _, infos = envs.step(np.tile(np.array([0.0, 0.5], np.float32), (2, 1)))
    assert not np.array_equal(obs["pixels"]["top"][0], obs["pixels"]["top"][1])  # different seeds, layouts
    envs.close()


def test_curved_approaches_both_ways_and_the_expert_follows_them() -> None:
    """Layouts bend the approach left and right (and sometimes not at all) across seeds; the road, the lane
    frame and the off-road test follow the bend, and the expert drives every route through left and right bends."""
    env = DriveEnv(cameras=())
    kinds: dict[int, list[int]] = {-1: [], 0: [], 1: []}
    for seed in range(40):
        env.reset(seed=seed)
        kinds[int(np.sign(BENDS[env.unwrapped.layout.bend][0]))].append(seed)
    assert all(kinds.values()), kinds
    for sign in (-1, 1):
        seed = kinds[sign][0]
        env.reset(seed=seed)
        ang, radius = BENDS[env.layout.bend]
        assert radius >= 12.0 and 0.2 < abs(ang) < 0.9
        (x, y), (dx, dy) = (v[0] for v in approach_frame(env.layout.bend, APPROACH_LEN - 1.0))
        assert np.sign(dy) == sign and on_road(x, y, env.layout.bend)  # the far end lies off the old straight
        assert not on_road(x, y, 0) and not on_road(x - 4.0 * dy, y + 4.0 * dx, env.layout.bend)
        heading, lateral = lane_frame(*approach_point(env.layout.bend, 6.0, 1.5 + 0.4)[0], env.layout.bend)
        away = approach_frame(env.layout.bend, 6.0)[1][0]  # past the bend start: the lane heads along the bend
        assert abs(lateral + 0.4) < 1e-6 and np.allclose((np.cos(heading), np.sin(heading)), -away, atol=1e-6)
        assert abs(heading) > 0.05
        for route in ROUTES:
            env.reset(seed=seed, options={"route": route})
            info, _ = run_episode(env, DriveExpert(env))
            assert info["is_success"] and info["goal_region"] == route, (seed, route, info)
            assert info["route_completion"] > 0.95
