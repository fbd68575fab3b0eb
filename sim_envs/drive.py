"""robotok/Drive-v0: a car on a bending approach road to an X intersection drives the route its prompt names.

The car is simulated with real wheel contacts: a chassis on a free joint, two front wheels on steering
hinges driven by position servos, two rear wheels driven by wheel-speed servos with a force limit
(so acceleration and braking are bounded). Routes: ``end`` (straight through to the end of the road),
``left``, ``right`` (turn at the intersection) and ``stop`` (stop before the red cone on the approach).
Every route is drivable in every layout; only the prompt tells which one is asked for.

Action (float32 [2] in [-1, 1], 20 Hz): ``steer`` (+1 = full left, 0.6 rad at the wheels) and
``throttle``: the commanded wheel speed as a fraction of 6 m/s; lifting off (0) brakes to a halt and
negative values brake then reverse.

Observation: ``{"pixels": {"front": uint8 [H, W, 3] (hood camera), "top": uint8 [H, W, 3] (chase
camera)}, "agent_pos": float32 [9]}`` with agent_pos = (forward speed m/s, yaw rate rad/s, steering
angle rad, heading error to the lane rad, lateral offset from the lane centre m (+ left), x m, y m,
cos yaw, sin yaw) in the intersection frame; the lane is the right-hand lane of the road the car is on
(following the approach's bend), never the route's, so the state does not reveal the route.

Success: the car centre inside the prompted goal region (a chequered strip on a branch, or 2.4-4.6 m
before the red cone) at under 0.3 m/s, with no collision and not off road. The episode ends on
success, on a collision (any contact of the car with a wall, cone or parked car) or off road (the car
centre leaves the asphalt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from robotok.sim_envs.drive_expert import DriveExpert
from robotok.sim_envs.drive_scene import APPROACH_LEN, BENDS, MultiCamRenderer, approach_frame, build_model, on_road
from robotok.sim_envs.drive_track import ROUTES, Layout, goal_region, lane_frame, route_path, sample_layout

__all__ = ["DEFAULT_PROMPTS", "DriveEnv", "DriveExpert", "ROUTES"]

DEFAULT_PROMPTS: dict[str, list[str]] = {
    "end": [
        "drive to the end of the road",
        "go straight through the intersection to the end of the road",
        "keep going straight until the road ends",
        "continue straight ahead to the end of the road",
    ],
    "left": [
        "turn left at the intersection",
        "take the next left",
        "at the crossing, turn left",
        "go left at the junction",
    ],
    "right": [
        "turn right at the intersection",
        "take the next right",
        "at the crossing, turn right",
        "go right at the junction",
    ],
    "stop": [
        "stop before the red cone",
        "pull up just before the red cone",
        "halt in front of the red cone",
        "drive up to the red cone and stop",
    ],
}
CAMERAS = ("front", "top")
STATE_DIM = 9
MAX_SPEED = 6.0  # m/s at throttle 1
MAX_STEER = 0.6  # rad at steer 1
WHEEL_RADIUS = 0.25
WHEELBASE = 1.3
FRAME_SKIP = 5  # 5 x 10 ms physics steps per 20 Hz control step
STOPPED = 0.3  # m/s: "at low speed" for success
# agent_pos bounds (generous; the state is clipped to them so it always lies in the observation space)
_STATE_HIGH = np.array([20.0, 20.0, 1.0, np.pi, 30.0, 60.0, 60.0, 1.0, 1.0], np.float32)
_OBSTACLES = ("wall_app", "wall_str", "wall_lft", "wall_rgt", "cone_red", "cone_a", "cone_b", "parked_a", "parked_b")


class DriveEnv(gym.Env):
    """A prompted driving task at an X intersection behind a bend (see the module docstring for the spaces)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        width: int = 64,
        height: int = 64,
        cameras: tuple[str, ...] | list[str] = CAMERAS,
        prompt_templates: dict[str, list[str]] | None = None,
        render_mode: str | None = None,
    ) -> None:
        for name, v in (("width", width), ("height", height)):
            if not isinstance(v, int | np.integer) or not 8 <= v <= 2048:
                raise ValueError(f"{name} must be an int in [8, 2048], got {v!r}")
        cameras = tuple(cameras)
        bad = [c for c in cameras if c not in CAMERAS] + (["(repeated)"] if len(set(cameras)) < len(cameras) else [])
        if bad:
            raise ValueError(f"cameras {cameras!r}: unknown or repeated {bad}; choose from {CAMERAS}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r} is not supported; use None or 'rgb_array'")
        templates = DEFAULT_PROMPTS if prompt_templates is None else prompt_templates
        if not isinstance(templates, dict) or not templates:
            raise ValueError(f"prompt_templates must be a non-empty dict route -> list[str], got {templates!r}")
        for route, texts in templates.items():
            if route not in ROUTES:
                raise ValueError(f"prompt_templates has unknown route {route!r}; routes are {ROUTES}")
            if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(
                    f"prompt_templates[{route!r}] must be a non-empty list of non-empty str, got {texts!r}"
                )
        self.width, self.height, self.cameras, self.render_mode = int(width), int(height), cameras, render_mode
        self.prompt_templates = {r: list(t) for r, t in templates.items()}
        self.routes = tuple(r for r in ROUTES if r in self.prompt_templates)

        self.model = build_model()
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._steer_qpos = [m.joint(n).qposadr[0] for n in ("steer_fl", "steer_fr")]
        car_geoms = [g for g in range(m.ngeom) if m.body_rootid[m.geom_bodyid[g]] == m.body("car").id]
        self._is_car = np.zeros(m.ngeom, bool)
        self._is_car[car_geoms] = True
        self._is_obstacle = np.zeros(m.ngeom, bool)
        self._is_obstacle[[m.geom(n).id for n in _OBSTACLES]] = True
        self._world_mat = m.material("world").id
        self._world_geoms = [m.geom(f"world_{k}").id for k in range(len(BENDS))]
        self._renderer: MultiCamRenderer | None = None
        self._frames: list[np.ndarray] | None = None

        image = spaces.Box(0, 255, (self.height, self.width, 3), np.uint8)
        obs: dict[str, spaces.Space] = {"agent_pos": spaces.Box(-_STATE_HIGH, _STATE_HIGH, (STATE_DIM,), np.float32)}
        if cameras:
            obs = {"pixels": spaces.Dict({c: image for c in cameras}), **obs}
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

        self.layout: Layout | None = None
        self.route, self.prompt = "", ""
        self.path = None
        self._completion, self._s_start = 0.0, 0.0

    # --- episode ---------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"route"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the only option is 'route'")
        self.layout = sample_layout(self.np_random)  # first, so a seed fixes the layout whatever the route
        forced = options.get("route")
        if forced is not None and forced not in self.routes:
            raise ValueError(f"route {forced!r} is not one of this env's routes {self.routes}")
        self.route = forced if forced is not None else self.routes[int(self.np_random.integers(len(self.routes)))]
        texts = self.prompt_templates[self.route]
        self.prompt = texts[int(self.np_random.integers(len(texts)))]
        self.path = route_path(self.route, self.layout)
        self._apply_layout(self.layout)
        self._completion, self._s_start = 0.0, 0.0
        self._s_start = self._progress()[0]
        obs = self._observation()
        return obs, self._info(collision=False, off_road=False, success=False, goal="")

    def _apply_layout(self, lay: Layout) -> None:
        m, d = self.model, self.data
        m.body_pos[m.body("cone_red").id] = (*lay.cone, 0.0)
        for k, g in enumerate(self._world_geoms):  # show the world with this layout's bend only
            m.geom_rgba[g, 3] = float(k == lay.bend)
        (wx, wy), (dx, dy) = (v[0] for v in approach_frame(lay.bend, APPROACH_LEN + 0.3))
        m.geom_pos[m.geom("wall_app").id] = (wx, wy, 0.5)
        half = 0.5 * np.arctan2(dy, dx)
        m.geom_quat[m.geom("wall_app").id] = (np.cos(half), 0.0, 0.0, np.sin(half))
        for name, (x, y), rgba in zip(("cone_a", "cone_b"), lay.cones, lay.cone_colors, strict=True):
            m.body_pos[m.body(name).id] = (x, y, 0.0)
            m.geom_rgba[m.geom(name).id] = rgba
        for name, (x, y, yaw), rgba in zip(("parked_a", "parked_b"), lay.parked, lay.parked_colors, strict=True):
            m.body_pos[m.body(name).id] = (x, y, 0.0)
            m.body_quat[m.body(name).id] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
            m.geom_rgba[m.geom(f"{name}_look").id] = rgba
        m.mat_rgba[self._world_mat] = (lay.brightness, lay.brightness, lay.brightness, 1.0)
        mujoco.mj_resetData(m, d)
        x, y, yaw = lay.start
        d.qpos[:7] = (x, y, 0.4, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        mujoco.mj_forward(m, d)
        self._frames = None

    def step(self, action):
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (2,):
            raise ValueError(f"action must have shape (2,) (steer, throttle), got {a.shape}")
        if self.layout is None:
            raise RuntimeError("call reset() before step()")
        steer, throttle = np.clip(np.nan_to_num(a), -1.0, 1.0)
        d = self.data
        d.ctrl[:] = (
            steer * MAX_STEER,
            steer * MAX_STEER,
            throttle * MAX_SPEED / WHEEL_RADIUS,
            throttle * MAX_SPEED / WHEEL_RADIUS,
        )
        collision = False
        for _ in range(FRAME_SKIP):
            mujoco.mj_step(self.model, d)
            collision = collision or self._crashed()
        self._frames = None
        x, y = d.qpos[0], d.qpos[1]
        off_road = not on_road(x, y, self.layout.bend)
        goal = goal_region(self.layout, x, y)
        success = goal == self.route and abs(self.car_speed()) < STOPPED and not collision and not off_road
        before = self._completion
        self._completion = max(self._completion, self._progress()[1])
        crash = float(collision or off_road)
        reward = (self._completion - before) + float(success) - crash
        info = self._info(collision=collision, off_road=off_road, success=success, goal=goal)
        info.update(
            {"reward_progress": self._completion - before, "reward_success": float(success), "reward_crash": -crash}
        )
        return self._observation(), float(reward), bool(success or collision or off_road), False, info

    # --- state -----------------------------------------------------------------------------------------
    def _crashed(self) -> bool:
        n = self.data.ncon
        if n == 0:
            return False
        g = self.data.contact.geom[:n]
        a, b = g[:, 0], g[:, 1]
        return bool(np.any((self._is_car[a] & self._is_obstacle[b]) | (self._is_car[b] & self._is_obstacle[a])))

    def car_pose(self) -> tuple[float, float, float]:
        """The car centre x, y (m) and yaw (rad) in the intersection frame."""
        q = self.data.qpos
        yaw = np.arctan2(2 * (q[3] * q[6] + q[4] * q[5]), 1 - 2 * (q[5] ** 2 + q[6] ** 2))
        return float(q[0]), float(q[1]), float(yaw)

    def car_speed(self) -> float:
        """Forward speed of the car (m/s, negative when reversing)."""
        _, _, yaw = self.car_pose()
        return float(self.data.qvel[0] * np.cos(yaw) + self.data.qvel[1] * np.sin(yaw))

    def _progress(self) -> tuple[float, float]:
        """Arc length of the nearest route point, and the route completion in [0, 1] (kept if off the route)."""
        x, y, _ = self.car_pose()
        dist2 = np.sum((self.path.points - (x, y)) ** 2, axis=1)
        i = int(np.argmin(dist2))
        s = float(self.path.s[i])
        if dist2[i] > 2.0**2:
            return s, self._completion
        span = self.path.s_goal - self._s_start
        return s, float(np.clip((s - self._s_start) / max(span, 1e-6), 0.0, 1.0))

    def _state(self) -> np.ndarray:
        x, y, yaw = self.car_pose()
        lane_yaw, lateral = lane_frame(x, y, self.layout.bend)
        heading_err = (yaw - lane_yaw + np.pi) % (2 * np.pi) - np.pi
        steer = float(np.mean(self.data.qpos[self._steer_qpos]))
        state = np.array(
            [self.car_speed(), self.data.qvel[5], steer, heading_err, lateral, x, y, np.cos(yaw), np.sin(yaw)],
            dtype=np.float32,
        )
        return np.clip(state, -_STATE_HIGH, _STATE_HIGH)

    def _render_frames(self) -> list[np.ndarray]:
        if self._frames is None:
            if self._renderer is None:  # lazily, inside the process that renders
                self._renderer = MultiCamRenderer(self.model, self.cameras or CAMERAS, self.width, self.height)
            self._frames = self._renderer.render(self.data)
        return self._frames

    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"agent_pos": self._state()}
        if self.cameras:
            obs = {"pixels": dict(zip(self.cameras, self._render_frames(), strict=True)), **obs}
        return obs

    def _info(self, *, collision: bool, off_road: bool, success: bool, goal: str) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "route": self.route,
            "route_completion": self._completion,
            "collision": bool(collision),
            "off_road": bool(off_road),
            "is_success": bool(success),
            "goal_region": goal,
            "speed": self.car_speed(),
        }

    def render(self) -> np.ndarray | None:
        """rgb_array: the cameras side by side, uint8 [H, W * n_cameras, 3]."""
        if self.render_mode != "rgb_array":
            return None
        return np.concatenate(self._render_frames(), axis=1)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


# --- command line: python -m robotok.sim_envs.drive --check-expert 100 ------------------------------------
@dataclass
class CheckConfig:
    """Run the scripted expert over many seeds and print its success rate per route."""

    check_expert: int = 100
    """number of episodes (seeds seed_start .. seed_start + n - 1; routes cycle end, left, right, stop)"""
    seed_start: int = 0
    """first seed"""
    noise: float = 0.0
    """expert perturbation level (0 = clean demonstrations)"""
    save_images: str = ""
    """if set, write PNGs of both cameras at 64 and 256 px of seed 0's first frame to this prefix"""

    def __post_init__(self) -> None:
        if self.check_expert < 1:
            raise ValueError(f"check_expert must be >= 1, got {self.check_expert}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {self.noise}")


def check_expert(n: int, seed_start: int = 0, noise: float = 0.0) -> dict[str, tuple[int, int, float]]:
    """{route: (successes, episodes, mean steps)} over n seeds, routes cycling so each gets n / 4."""
    env = gym.make("robotok/Drive-v0", cameras=())
    out: dict[str, list] = {r: [0, 0, 0] for r in ROUTES}
    for k in range(n):
        route = ROUTES[k % len(ROUTES)]
        obs, info = env.reset(seed=seed_start + k, options={"route": route})
        expert = DriveExpert(env, noise=noise)
        done, steps = False, 0
        while not done:
            obs, _, term, trunc, info = env.step(expert(obs))
            done, steps = term or trunc, steps + 1
        out[route][0] += int(info["is_success"])
        out[route][1] += 1
        out[route][2] += steps
    env.close()
    return {r: (s, e, t / max(e, 1)) for r, (s, e, t) in out.items()}


def save_images(prefix: str, seed: int = 0) -> list[str]:
    """PNGs of both cameras at 64 and 256 px after reset(seed): <prefix>_<camera>_<size>.png."""
    from PIL import Image

    paths = []
    for size in (64, 256):
        env = DriveEnv(width=size, height=size)
        obs, _ = env.reset(seed=seed, options={"route": "stop"})
        for cam, img in obs["pixels"].items():
            paths.append(f"{prefix}_{cam}_{size}.png")
            Image.fromarray(img).save(paths[-1])
        env.close()
    return paths


def main() -> None:
    import tyro

    import robotok.sim_envs  # noqa: F401  (registers the env ids)

    cfg = tyro.cli(CheckConfig)
    if cfg.save_images:
        print("wrote", ", ".join(save_images(cfg.save_images)))
    res = check_expert(cfg.check_expert, cfg.seed_start, cfg.noise)
    total = sum(s for s, _, _ in res.values()), sum(e for _, e, _ in res.values())
    for route, (s, e, steps) in res.items():
        print(f"{route:6s} success {s}/{e} = {s / max(e, 1):.1%}  mean steps {steps:.0f}")
    print(f"all    success {total[0]}/{total[1]} = {total[0] / total[1]:.1%}  (noise {cfg.noise})")


if __name__ == "__main__":
    main()
