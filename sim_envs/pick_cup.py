"""robotok/PickCup-v0: a 6-joint arm on a table picks up the cup the prompt names.

Each episode puts 2-4 cups of distinct colours on the table at random non-overlapping spots,
recolours the table and dims or brightens the lights a little, and picks one cup as the target; the
prompt names its colour ("pick up the red cup", or another phrasing). Lifting a different cup ends
the episode as a failure, so a policy must read the prompt and find the colour in the image.

Actions (``control="ee"``, the default): float32[5] in [-1, 1] at 20 Hz, the gripper's velocity
(vx, vy, vz in the world frame, up to ``MAX_SPEED`` m/s; vyaw up to ``MAX_YAW_RATE`` rad/s) and the
gripper command (-1 open .. +1 closed, absolute). The env integrates a target pose and maps it to
joint position targets with damped least-squares IK on MuJoCo's site Jacobian (``arm_ik.py``).
With ``control="joint"``: float32[7], the six joint position targets scaled to their ranges, then
the gripper command.

Observation: ``{"pixels": {"front": uint8[H, W, 3], "wrist": uint8[H, W, 3]}, "agent_pos": float32[6]}``
(``cameras=`` picks the views; ``cameras=()`` renders none and leaves out "pixels")
with agent_pos = (grip x, y, z in metres, table top at z = 0; yaw in rad; gripper opening in metres;
1.0 when both finger pads touch a cup, else 0.0). With ``control="joint"`` the six joint angles follow
(float32[12]).

Success: the target cup's bottom at least 8 cm above the table, held by both finger pads, for 0.5 s
(10 steps); the episode then terminates. ``reset(seed)`` fixes the whole episode; the option
``{"target_color": "red"}`` picks the target among the same scene's cups (used to check that the
prompt matters).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

import robotok
from robotok.sim_envs.arm_ik import ArmIK, site_yaw
from robotok.sim_envs.pick_cup_expert import PickCupExpert

__all__ = ["PickCupEnv", "PickCupExpert", "DEFAULT_PROMPT_TEMPLATES", "CUP_COLORS"]

DEFAULT_PROMPT_TEMPLATES: tuple[str, ...] = (
    "pick up the {color} cup",
    "grab the {color} cup",
    "lift the {color} cup",
    "pick the {color} cup up",
    "take the {color} cup off the table",
    "get the {color} cup",
    "raise the {color} cup",
    "please pick up the {color} cup",
)
CUP_COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.08, 0.08),
    "green": (0.1, 0.65, 0.12),
    "blue": (0.1, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.05),
    "purple": (0.55, 0.12, 0.75),
    "orange": (1.0, 0.5, 0.0),
    "white": (0.95, 0.95, 0.95),
}
MAX_CUPS = 4
CONTROL_HZ = 20
MAX_SPEED = 0.25  # m/s of the grip target at |v| = 1: 1.25 cm per step
MAX_YAW_RATE = 1.5  # rad/s at |vyaw| = 1
YAW_LIMIT = np.pi / 2  # the jaws are symmetric, so +-90 degrees covers every grasp
WORKSPACE_LO = np.array([0.15, -0.40, 0.03])  # box the grip target stays in (m)
WORKSPACE_HI = np.array([0.70, 0.40, 0.30])
CUP_RADIUS = 0.033
CUP_HALF_HEIGHT = 0.045
CUP_AREA_LO = np.array([0.32, -0.23])  # where cup centres are drawn (m)
CUP_AREA_HI = np.array([0.56, 0.23])
CUP_MIN_DIST = 0.15  # centre to centre: the open jaws never touch a neighbour
FINGER_TRAVEL = 0.045  # slide joint range; opening = OPEN_WIDTH - 2 q
OPEN_WIDTH = 0.098
HOME_POS = np.array([0.30, 0.0, 0.22])  # the fixed start pose of the grip site
SUCCESS_LIFT = 0.08  # cup bottom above the table (m)
WRONG_LIFT = 0.04  # a non-target cup this high counts as lifted
SUCCESS_HOLD_STEPS = 10  # 0.5 s at 20 Hz
CAMERAS = ("front", "wrist")
ARM_JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6")


def _parse_num_cups(num_cups: int | tuple[int, int] | None) -> tuple[int, int]:
    if num_cups is None:
        return 2, MAX_CUPS
    lo, hi = (num_cups, num_cups) if isinstance(num_cups, (int, np.integer)) else tuple(num_cups)
    if not (1 <= lo <= hi <= MAX_CUPS):
        raise ValueError(f"num_cups={num_cups!r}: need an int or (lo, hi) with 1 <= lo <= hi <= {MAX_CUPS}")
    return int(lo), int(hi)


class PickCupEnv(gym.Env):
    """Pick up the prompted cup with a 6-joint arm (see the module docstring for spaces and success)."""

    CAMERAS = CAMERAS  # the views it can render

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        render_mode: str | None = None,
        width: int = 64,
        height: int = 64,
        num_cups: int | tuple[int, int] | None = None,
        prompt_templates: list[str] | None = None,
        control: str = "ee",
        reward_type: str = "sparse",
        cameras: tuple[str, ...] | list[str] = CAMERAS,
    ) -> None:
        cameras = tuple(cameras)
        bad = [c for c in cameras if c not in CAMERAS] + (["(repeated)"] if len(set(cameras)) < len(cameras) else [])
        if bad:
            raise ValueError(f"cameras {cameras!r}: unknown or repeated {bad}; choose from {CAMERAS}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: supported are None and 'rgb_array'")
        if not (isinstance(width, int) and isinstance(height, int) and 8 <= width <= 1024 and 8 <= height <= 1024):
            raise ValueError(f"width={width!r}, height={height!r}: need ints in [8, 1024]")
        if control not in ("ee", "joint"):
            raise ValueError(f"control={control!r}: choose 'ee' (end-effector velocity) or 'joint' (joint positions)")
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type={reward_type!r}: choose 'sparse' or 'dense'")
        templates = list(DEFAULT_PROMPT_TEMPLATES if prompt_templates is None else prompt_templates)
        bad = [t for t in templates if not isinstance(t, str) or "{color}" not in t]
        if not templates or bad:
            raise ValueError(
                f"prompt_templates={prompt_templates!r}: need a non-empty list of strings with '{{{{color}}}}'"
            )
        self.render_mode, self.width, self.height, self.cameras = render_mode, width, height, cameras
        self.num_cups_range = _parse_num_cups(num_cups)
        self.prompt_templates, self.control, self.reward_type = templates, control, reward_type

        self.model = mujoco.MjModel.from_xml_path(str(robotok.assets_dir() / "pick_cup.xml"))
        self.model.vis.global_.offwidth = max(width, self.model.vis.global_.offwidth)
        self.model.vis.global_.offheight = max(height, self.model.vis.global_.offheight)
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(1.0 / CONTROL_HZ / self.model.opt.timestep)
        self._ik = ArmIK(self.model, "grip", ARM_JOINTS)
        m = self.model
        self._arm_qadr = self._ik.qpos_adr
        self._arm_lo, self._arm_hi = self._ik.lo, self._ik.hi
        self._finger_qadr = np.array([m.jnt_qposadr[m.joint(f).id] for f in ("finger_l", "finger_r")])
        self._site = m.site("grip").id
        self._cup_body = np.array([m.body(f"cup{i}").id for i in range(MAX_CUPS)])
        self._cup_geom = np.array([m.geom(f"cup{i}").id for i in range(MAX_CUPS)])
        self._cup_qadr = np.array([m.jnt_qposadr[m.joint(f"cup{i}").id] for i in range(MAX_CUPS)])
        self._pad_geom = np.array([m.geom("pad_l").id, m.geom("pad_r").id])
        self._table_geom = m.geom("table_top").id
        self._base_table_rgba = m.geom_rgba[self._table_geom].copy()
        self._base_light_diffuse = m.light_diffuse.copy()
        self._base_light_pos = m.light_pos.copy()
        # The fixed start pose: IK from a hand-picked elbow-up seed, solved once.
        q = np.array([0.0, -1.5, 1.9, 1.2, 0.0, 0.0])
        for _ in range(20):
            q = self._ik.solve(q, HOME_POS, 0.0)
        self._home_q = q

        n_act = 5 if control == "ee" else 7
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n_act,), np.float32)
        pix = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        # agent_pos bounds: the arm reaches < 1 m from its base; joint angles stay within their limits.
        state_lo = [-1.0, -1.0, -1.0, -np.pi, 0.0, 0.0] + [-2 * np.pi] * (6 if control == "joint" else 0)
        state_hi = [1.0, 1.0, 1.0, np.pi, 0.1, 1.0] + [2 * np.pi] * (6 if control == "joint" else 0)
        self.observation_space = gym.spaces.Dict(
            {
                **({"pixels": gym.spaces.Dict({c: pix for c in cameras})} if cameras else {}),
                "agent_pos": gym.spaces.Box(np.array(state_lo, np.float32), np.array(state_hi, np.float32)),
            }
        )
        self._renderer: mujoco.Renderer | None = None  # made on first render, inside the worker
        self.prompt, self.target_color, self.target_index = "", "", 0
        self.cup_colors: list[str] = []
        self.expert_seed = 0

    # ----- episode set-up -------------------------------------------------------------------------
    def _draw_cup_xy(self, n: int) -> np.ndarray:
        """n cup centres [n, 2] at least CUP_MIN_DIST apart, by rejection from self.np_random."""
        for _ in range(100):
            pts: list[np.ndarray] = []
            for _ in range(200):
                p = self.np_random.uniform(CUP_AREA_LO, CUP_AREA_HI)
                if all(np.hypot(*(p - q)) >= CUP_MIN_DIST for q in pts):
                    pts.append(p)
                    if len(pts) == n:
                        return np.array(pts)
        raise RuntimeError(f"could not place {n} cups {CUP_MIN_DIST} m apart")  # never at MAX_CUPS=4

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng, m, d = self.np_random, self.model, self.data
        n = int(rng.integers(self.num_cups_range[0], self.num_cups_range[1] + 1))
        names = list(CUP_COLORS)
        self.cup_colors = [names[i] for i in rng.choice(len(names), size=n, replace=False)]
        xy = self._draw_cup_xy(n)
        target = int(rng.integers(n))  # always drawn, so a forced target leaves the scene unchanged
        template = self.prompt_templates[int(rng.integers(len(self.prompt_templates)))]
        light_scale = rng.uniform(0.8, 1.2)
        light_shift = rng.uniform(-0.15, 0.15, size=m.light_pos.shape)
        table_shift = rng.uniform(-0.05, 0.05, size=3)
        self.expert_seed = int(rng.integers(2**31))  # the expert's own stream for this episode
        if options and options.get("target_color") is not None:
            color = options["target_color"]
            if color not in self.cup_colors:
                raise ValueError(f"target_color={color!r} is not on the table; cups: {self.cup_colors}")
            target = self.cup_colors.index(color)
        self.target_index, self.target_color = target, self.cup_colors[target]
        self.prompt = template.format(color=self.target_color)

        m.light_diffuse[:] = np.clip(self._base_light_diffuse * light_scale, 0.0, 1.0)
        m.light_pos[:] = self._base_light_pos + light_shift
        m.geom_rgba[self._table_geom, :3] = np.clip(self._base_table_rgba[:3] + table_shift, 0.0, 1.0)
        mujoco.mj_resetData(m, d)
        for i in range(MAX_CUPS):
            g, b, a = self._cup_geom[i], self._cup_body[i], self._cup_qadr[i]
            used = i < n
            m.geom_contype[g] = m.geom_conaffinity[g] = 1 if used else 0
            m.body_gravcomp[b] = 0.0 if used else 1.0  # parked cups float out of sight, inert
            m.geom_rgba[g] = (*CUP_COLORS[self.cup_colors[i]], 1.0) if used else (0.0, 0.0, 0.0, 0.0)
            d.qpos[a : a + 3] = (*xy[i], CUP_HALF_HEIGHT) if used else (-2.0 - i, 0.0, -0.5)
            d.qpos[a + 3 : a + 7] = (1.0, 0.0, 0.0, 0.0)
        d.qpos[self._arm_qadr] = self._home_q
        d.ctrl[:6] = self._home_q
        d.ctrl[6:8] = 0.0
        mujoco.mj_forward(m, d)
        self._q_cmd = self._home_q.copy()
        self._target_pos = d.site_xpos[self._site].copy()
        self._target_yaw = 0.0
        self._hold_steps = 0
        return self._obs(), self._info(False, False, self._reward_terms())

    # ----- stepping -------------------------------------------------------------------------------
    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action shape {a.shape}, expected {self.action_space.shape}")
        a = np.clip(a, -1.0, 1.0)
        m, d = self.model, self.data
        if self.control == "ee":
            dt = 1.0 / CONTROL_HZ
            grip = d.site_xpos[self._site]
            # The target may lead the real grip by at most 4 cm, so a blocked arm does not wind up.
            pos = np.clip(self._target_pos + a[:3] * MAX_SPEED * dt, grip - 0.04, grip + 0.04)
            self._target_pos = np.clip(pos, WORKSPACE_LO, WORKSPACE_HI)
            self._target_yaw = float(np.clip(self._target_yaw + a[3] * MAX_YAW_RATE * dt, -YAW_LIMIT, YAW_LIMIT))
            self._q_cmd = self._ik.solve(self._q_cmd, self._target_pos, self._target_yaw, iters=2)
        else:
            self._q_cmd = self._arm_lo + (a[:6] + 1.0) * 0.5 * (self._arm_hi - self._arm_lo)
        d.ctrl[:6] = self._q_cmd
        d.ctrl[6:8] = FINGER_TRAVEL * (a[-1] + 1.0) * 0.5
        for _ in range(self.n_substeps):
            mujoco.mj_step(m, d)

        terms = self._reward_terms()
        heights = self.cup_heights()
        others = [h for i, h in enumerate(heights) if i != self.target_index]
        wrong = bool(others and max(others) > WRONG_LIFT)
        lifted = heights[self.target_index] >= SUCCESS_LIFT and terms["grasp"] > 0
        self._hold_steps = self._hold_steps + 1 if (lifted and not wrong) else 0
        success = self._hold_steps >= SUCCESS_HOLD_STEPS
        if self.reward_type == "dense":
            reward = terms["reach"] + terms["grasp"] + terms["lift"] + 5.0 * success - 5.0 * wrong
        else:
            reward = float(success)
        return self._obs(), float(reward), success or wrong, False, self._info(success, wrong, terms)

    def cup_heights(self) -> np.ndarray:
        """Height of each cup's bottom above the table [n_cups] (0 when it stands on it)."""
        n = len(self.cup_colors)
        return self.data.xpos[self._cup_body[:n], 2] - CUP_HALF_HEIGHT

    def cup_positions(self) -> np.ndarray:
        """Centres of the cups on the table [n_cups, 3] (world frame)."""
        return self.data.xpos[self._cup_body[: len(self.cup_colors)]].copy()

    def project(self, point: np.ndarray, camera: str = "front") -> tuple[float, float]:
        """Pixel (row, col) of a world point [3] in one of the env's cameras at its image size (pinhole, MuJoCo's
        fovy convention; row 0 at the top); NaN for a point behind the camera (a wrist camera can turn away from a
        cup). Training labels of where a cup is in the image come from it."""
        m, d = self.model, self.data
        cam = m.camera(camera).id
        rel = d.cam_xmat[cam].reshape(3, 3).T @ (np.asarray(point, np.float64) - d.cam_xpos[cam])  # looks along -z
        if rel[2] >= 0:  # not in front of the camera: the pinhole would mirror it into the image
            return float("nan"), float("nan")
        f = 0.5 * self.height / np.tan(np.deg2rad(m.cam_fovy[cam]) / 2)
        return float(self.height / 2 - f * rel[1] / -rel[2]), float(self.width / 2 + f * rel[0] / -rel[2])

    def target_pixel(self, camera: str = "front") -> tuple[float, float]:
        """Pixel (row, col) of the prompted cup in ``camera``: its axis 2 cm above its centre, on its visible body."""
        return self.project(self.cup_positions()[self.target_index] + np.array([0.0, 0.0, 0.02]), camera)

    def effector_pixel(self, camera: str = "front") -> tuple[float, float]:
        """Pixel (row, col) of the grip site (between the finger pads) in ``camera``."""
        return self.project(self.grip_pos(), camera)

    def grip_pos(self) -> np.ndarray:
        """Grip site position [3]: between the finger pads, at their lower third."""
        return self.data.site_xpos[self._site].copy()

    def grip_yaw(self) -> float:
        return site_yaw(self.data.site_xmat[self._site])

    def pads_touching(self, cup: int | None = None) -> bool:
        """Whether both finger pads touch cup ``cup`` (any cup when None)."""
        cups = set(self._cup_geom[: len(self.cup_colors)].tolist() if cup is None else [int(self._cup_geom[cup])])
        touched = [set(), set()]
        d = self.data
        for k in range(d.ncon):
            g1, g2 = int(d.contact.geom1[k]), int(d.contact.geom2[k])
            for side in (0, 1):
                pad = int(self._pad_geom[side])
                if g1 == pad and g2 in cups:
                    touched[side].add(g2)
                elif g2 == pad and g1 in cups:
                    touched[side].add(g1)
        return bool(touched[0] & touched[1])

    def _reward_terms(self) -> dict[str, float]:
        cup = self.data.xpos[self._cup_body[self.target_index]]
        dist = float(np.linalg.norm(self.grip_pos() - cup))
        held = self.pads_touching(self.target_index)
        lift = float(np.clip((cup[2] - CUP_HALF_HEIGHT) / SUCCESS_LIFT, 0.0, 1.0)) if held else 0.0
        return {"reach": 1.0 - float(np.tanh(5.0 * dist)), "grasp": float(held), "lift": lift}

    def _info(self, success: bool, wrong: bool, terms: dict[str, float]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "prompt": self.prompt,
            "target_color": self.target_color,
            "is_success": bool(success),
            "wrong_object": bool(wrong),
        }
        info.update({f"reward_{k}": v for k, v in terms.items()})
        return info

    # ----- observation and rendering --------------------------------------------------------------
    def _agent_pos(self) -> np.ndarray:
        d = self.data
        opening = OPEN_WIDTH - d.qpos[self._finger_qadr].sum()
        state = [*self.grip_pos(), self.grip_yaw(), opening, float(self.pads_touching())]
        if self.control == "joint":
            state += d.qpos[self._arm_qadr].tolist()
        return np.asarray(state, dtype=np.float32)

    def render_camera(self, camera: str) -> np.ndarray:
        """The named camera's view now ([H, W, 3] uint8), whether or not observations carry it."""
        if camera not in CAMERAS:
            raise ValueError(f"camera {camera!r}: choose from {CAMERAS}")
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()  # [H, W, 3] uint8, a fresh array

    def _obs(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"agent_pos": self._agent_pos()}
        if self.cameras:  # cameras=(): no rendering (a scripted expert reads the simulator)
            obs = {"pixels": {c: self.render_camera(c) for c in self.cameras}, **obs}
        return obs

    def render(self) -> np.ndarray | None:
        return self.render_camera("front") if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


if __name__ == "__main__":
    from robotok.sim_envs.pick_cup_expert import main

    main()
