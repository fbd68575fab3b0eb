"""Routes, goal regions and per-episode layouts of the Drive-v0 intersection (pure geometry, no MuJoCo).

The road network is fixed (see ``drive_scene``); an episode varies where the car starts on the approach
(so the straight into the intersection has a random length), where the red cone stands, where the two
distractor cones and the two parked cars are, their colours and the world's brightness. Every route is
drivable in every layout, so only the prompt tells which one is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robotok.sim_envs.drive_scene import APPROACH_END, ARM, GOAL_D, LANE, ROAD_HALF

ROUTES = ("end", "left", "right", "stop")
TURN_R = 3.0  # radius of both turns' centrelines (right lane to right lane)
CONE_Y = -(ROAD_HALF - 0.2)  # the red cone stands at the right edge of the approach
STOP_BEFORE = (1.6, 3.8)  # the stop goal: car centre this far (m) before the red cone
GOAL_HALF = 1.0  # branch goal regions: car centre within this distance (m) of the goal strip
DISTRACTOR_COLORS = ((0.1, 0.3, 0.9, 1.0), (0.95, 0.85, 0.1, 1.0), (0.55, 0.2, 0.75, 1.0))
PARKED_COLORS = (
    (0.85, 0.85, 0.88, 1.0),
    (0.15, 0.25, 0.55, 1.0),
    (0.1, 0.1, 0.12, 1.0),
    (0.2, 0.5, 0.3, 1.0),
    (0.8, 0.75, 0.6, 1.0),
    (0.5, 0.5, 0.55, 1.0),
)
_ARMS = {"app": (-1.0, 0.0), "str": (1.0, 0.0), "lft": (0.0, 1.0), "rgt": (0.0, -1.0)}


@dataclass(frozen=True)
class Layout:
    """Everything an episode varies, drawn from the env's RNG at reset."""

    start: tuple[float, float, float]  # car centre x, y (m) and yaw (rad)
    cone_x: float  # the red cone's x on the approach (its y is CONE_Y)
    cones: tuple[tuple[float, float], ...]  # distractor cones (x, y)
    cone_colors: tuple[tuple[float, ...], ...]
    parked: tuple[tuple[float, float, float], ...]  # parked cars (x, y, yaw)
    parked_colors: tuple[tuple[float, ...], ...]
    brightness: float  # multiplies the painted world's colours
    expert_seed: int  # seeds the scripted expert's perturbations


def _edge_point(rng: np.random.Generator, arm: str, side: float, s_lo: float, s_hi: float, lateral: float):
    d = np.array(_ARMS[arm])
    left = np.array([-d[1], d[0]])
    p = d * rng.uniform(s_lo, s_hi) + left * side * lateral
    return float(p[0]), float(p[1])


def sample_layout(rng: np.random.Generator) -> Layout:
    """Draw one layout; the draws happen in a fixed order so a seed fixes the layout whatever the route."""
    x0 = -ROAD_HALF - rng.uniform(8.0, 13.0)
    start = (x0, -LANE + rng.uniform(-0.3, 0.3), rng.uniform(-0.08, 0.08))
    cone_x = rng.uniform(x0 + 5.5, -5.5)
    cones: list[tuple[float, float]] = []
    while len(cones) < 2:  # distractors on road edges, clear of the turns, the red cone and each other
        arm = ("app", "str", "lft", "rgt")[rng.integers(4)]
        side = (-1.0, 1.0)[rng.integers(2)]
        lo, hi = (5.5, -x0 - 2.0) if arm == "app" else (4.5, ARM - 1.0)
        p = _edge_point(rng, arm, side, lo, hi, -CONE_Y)
        clear = [
            np.hypot(p[0] - q[0], p[1] - q[1]) > (3.0 if k == 0 else 2.0)
            for k, q in enumerate([(cone_x, CONE_Y), *cones])
        ]
        if all(clear):
            cones.append(p)
    slots = [(a, s) for a in _ARMS for s in (-1.0, 1.0)]
    picks = rng.choice(len(slots), size=2, replace=False)
    parked = []
    for k in picks:
        arm, side = slots[int(k)]
        lo, hi = (5.0, -APPROACH_END - 3.0) if arm == "app" else (4.8, ARM - 1.5)
        x, y = _edge_point(rng, arm, side, lo, hi, ROAD_HALF + 1.3)
        yaw = float(np.arctan2(_ARMS[arm][1], _ARMS[arm][0]) + np.pi * rng.integers(2))
        parked.append((x, y, yaw))
    cone_colors = tuple(DISTRACTOR_COLORS[int(i)] for i in rng.integers(len(DISTRACTOR_COLORS), size=2))
    parked_colors = tuple(PARKED_COLORS[int(i)] for i in rng.choice(len(PARKED_COLORS), size=2, replace=False))
    return Layout(
        start=start,
        cone_x=float(cone_x),
        cones=tuple(cones),
        cone_colors=cone_colors,
        parked=tuple(parked),
        parked_colors=parked_colors,
        brightness=float(rng.uniform(0.88, 1.0)),
        expert_seed=int(rng.integers(2**31)),
    )


def _line(a, b, step: float = 0.1) -> np.ndarray:
    n = max(int(np.ceil(np.hypot(b[0] - a[0], b[1] - a[1]) / step)), 1)
    t = np.linspace(0.0, 1.0, n + 1)[1:, None]
    return np.asarray(a) + t * (np.asarray(b) - np.asarray(a))


def _arc(centre, radius: float, a0: float, a1: float, step: float = 0.1) -> np.ndarray:
    n = max(int(np.ceil(abs(a1 - a0) * radius / step)), 1)
    ang = np.linspace(a0, a1, n + 1)[1:]
    return np.stack([centre[0] + radius * np.cos(ang), centre[1] + radius * np.sin(ang)], axis=1)


@dataclass(frozen=True)
class RoutePath:
    """A route's lane centreline as a dense polyline, with arc length and where its goal and turn lie."""

    points: np.ndarray  # [N, 2]
    s: np.ndarray  # [N] arc length from the approach wall
    s_goal: float  # arc length of the goal (stopping point)
    turn: tuple[float, float]  # arc-length interval of the turn (empty for straight routes)


def route_path(route: str, layout: Layout) -> RoutePath:
    """The centreline of the right-hand lane from the start of the approach to a bit past the goal."""
    a = (APPROACH_END, -LANE)
    if route in ("end", "stop"):
        parts = [np.asarray([a]), _line(a, (ARM - 0.5, -LANE))]
        turn_pts = 0
    elif route == "left":
        parts = [np.asarray([a]), _line(a, (-LANE, -LANE))]
        turn_pts = len(parts[1]) + 1
        parts.append(_arc((-LANE, -LANE + TURN_R), TURN_R, -np.pi / 2, 0.0))
        parts.append(_line((LANE, LANE), (LANE, ARM - 0.5)))
    elif route == "right":
        c = (-LANE - TURN_R, -LANE - TURN_R)
        parts = [np.asarray([a]), _line(a, (c[0], -LANE))]
        turn_pts = len(parts[1]) + 1
        parts.append(_arc(c, TURN_R, np.pi / 2, 0.0))
        parts.append(_line((-LANE, c[1]), (-LANE, -ARM + 0.5)))
    else:
        raise ValueError(f"unknown route {route!r}; routes are {ROUTES}")
    pts = np.concatenate(parts)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    turn = (float(s[turn_pts - 1]), float(s[turn_pts - 1] + np.pi / 2 * TURN_R)) if turn_pts else (0.0, 0.0)
    if route == "stop":
        s_goal = layout.cone_x - sum(STOP_BEFORE) / 2 - APPROACH_END
    else:
        s_goal = float(s[-1]) - (ARM - 0.5 - GOAL_D)
    return RoutePath(points=pts, s=s, s_goal=float(s_goal), turn=turn)


def goal_boxes(layout: Layout) -> dict[str, tuple[float, float, float, float]]:
    """Each route's goal region for the car centre as (x_min, x_max, y_min, y_max), in its right-hand lane."""
    lo, hi = GOAL_D - GOAL_HALF, GOAL_D + GOAL_HALF
    return {
        "end": (lo, hi, -ROAD_HALF, 0.0),
        "left": (0.0, ROAD_HALF, lo, hi),
        "right": (-ROAD_HALF, 0.0, -hi, -lo),
        "stop": (layout.cone_x - STOP_BEFORE[1], layout.cone_x - STOP_BEFORE[0], -ROAD_HALF, 0.0),
    }


def lane_frame(x: float, y: float) -> tuple[float, float]:
    """The heading (rad) of the right-hand lane at a point and the point's offset from its centre (m, + left).

    Route-agnostic on purpose: on the branches the lane leads away from the intersection, elsewhere
    (approach, intersection, straight branch) it runs along +x, so the state never reveals the route.
    """
    if abs(x) <= ROAD_HALF and y > ROAD_HALF:
        return np.pi / 2, LANE - x
    if abs(x) <= ROAD_HALF and y < -ROAD_HALF:
        return -np.pi / 2, x + LANE
    return 0.0, y + LANE
