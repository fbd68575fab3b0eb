"""Routes, goal regions and per-episode layouts of the Drive-v0 intersection (pure geometry, no MuJoCo).

The intersection and its three branches are fixed (see ``drive_scene``); an episode varies how the approach
road bends (straight, then an arc of random radius and angle to the left or right, or none, then straight
into the intersection), where the car starts on it, where the red cone stands, where the two distractor
cones and the two parked cars are, their colours and the world's brightness. Every route is drivable in
every layout, so only the prompt tells which one is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robotok.sim_envs.drive_scene import (
    APPROACH_LEN,
    ARM,
    BEND_START,
    BENDS,
    GOAL_D,
    LANE,
    ROAD_HALF,
    approach_coords,
    approach_frame,
    approach_point,
)

ROUTES = ("end", "left", "right", "stop")
TURN_R = 3.0  # radius of both turns' centrelines (right lane to right lane)
# Cones stand on the road edge, their base over the kerb line (see approach_point): 0.2 m inside it they left a
# car in its lane ~0.4 m, and the scripted expert scraped the red cone on bent approaches.
CONE_LAT = ROAD_HALF + 0.1
# The stop goal: car centre this far (m, along the approach) before the red cone. The cone leaves the hood camera's
# view about 3.5 m before it, near the middle where the expert stops; the chase camera keeps it in view.
STOP_BEFORE = (2.4, 4.6)
STRAIGHT_P = 0.15  # share of layouts whose approach does not bend
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

    bend: int  # index into drive_scene.BENDS: how the approach road bends
    start: tuple[float, float, float]  # car centre x, y (m) and yaw (rad)
    cone_u: float  # the red cone's distance from the intersection along the approach
    cone: tuple[float, float]  # the red cone's x, y
    cones: tuple[tuple[float, float], ...]  # distractor cones (x, y)
    cone_colors: tuple[tuple[float, ...], ...]
    parked: tuple[tuple[float, float, float], ...]  # parked cars (x, y, yaw)
    parked_colors: tuple[tuple[float, ...], ...]
    brightness: float  # multiplies the painted world's colours
    expert_seed: int  # seeds the scripted expert's perturbations


def _edge_point(rng: np.random.Generator, bend: int, arm: str, side: float, s_lo: float, s_hi: float, lateral: float):
    """A point s in [s_lo, s_hi] m from the centre along an arm, lateral to one side, and the arm's heading there."""
    s = rng.uniform(s_lo, s_hi)
    if arm == "app":  # along the (bent) approach: s - ROAD_HALF from the intersection's edge
        p, d = (v[0] for v in approach_frame(bend, s - ROAD_HALF))
    else:
        d = np.array(_ARMS[arm])
        p = d * s
    p = p + np.array([-d[1], d[0]]) * side * lateral
    return (float(p[0]), float(p[1])), float(np.arctan2(d[1], d[0]))


def sample_layout(rng: np.random.Generator) -> Layout:
    """Draw one layout; the draws happen in a fixed order so a seed fixes the layout whatever the route."""
    bend = 0 if rng.random() < STRAIGHT_P else 1 + int(rng.integers(len(BENDS) - 1))
    u0 = rng.uniform(8.0, 13.0)  # start distance from the intersection along the approach
    away = approach_frame(bend, u0)[1]
    (x0, y0), yaw0 = approach_point(bend, u0, LANE + rng.uniform(-0.3, 0.3))[0], np.arctan2(away[0, 1], away[0, 0])
    start = (x0, y0, yaw0 + np.pi + rng.uniform(-0.08, 0.08))  # in the incoming lane, facing the intersection
    cone_u = float(rng.uniform(2.5, u0 - 5.5))
    cone = tuple(float(c) for c in approach_point(bend, cone_u, CONE_LAT)[0])
    cones: list[tuple[float, float]] = []
    while len(cones) < 2:  # distractors on road edges, clear of the turns, the red cone and each other
        arm = ("app", "str", "lft", "rgt")[rng.integers(4)]
        side = (-1.0, 1.0)[rng.integers(2)]
        lo, hi = (5.5, u0 + ROAD_HALF - 2.0) if arm == "app" else (4.5, ARM - 1.0)
        p, _ = _edge_point(rng, bend, arm, side, lo, hi, CONE_LAT)
        clear = [np.hypot(p[0] - q[0], p[1] - q[1]) > (3.0 if k == 0 else 2.0) for k, q in enumerate([cone, *cones])]
        if all(clear):
            cones.append(p)
    slots = [(a, s) for a in _ARMS for s in (-1.0, 1.0)]
    picks = rng.choice(len(slots), size=2, replace=False)
    parked = []
    for k in picks:
        arm, side = slots[int(k)]
        lo, hi = (5.0, APPROACH_LEN) if arm == "app" else (4.8, ARM - 1.5)
        (x, y), yaw = _edge_point(rng, bend, arm, side, lo, hi, ROAD_HALF + 1.3)
        parked.append((x, y, float(yaw + np.pi * rng.integers(2))))
    cone_colors = tuple(DISTRACTOR_COLORS[int(i)] for i in rng.integers(len(DISTRACTOR_COLORS), size=2))
    parked_colors = tuple(PARKED_COLORS[int(i)] for i in rng.choice(len(PARKED_COLORS), size=2, replace=False))
    return Layout(
        bend=bend,
        start=(float(start[0]), float(start[1]), float((start[2] + np.pi) % (2 * np.pi) - np.pi)),
        cone_u=cone_u,
        cone=cone,
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
    """The centreline of the right-hand lane from the approach's end wall to a bit past the goal."""
    u_app = np.arange(APPROACH_LEN, BEND_START - 1e-9, -0.1)  # along the (bent) approach, towards the centre
    a = (-ROAD_HALF - BEND_START, -LANE)  # where the approach's straight run into the intersection begins
    parts = [approach_point(layout.bend, u_app, LANE)]
    if route in ("end", "stop"):
        parts.append(_line(a, (ARM - 0.5, -LANE)))
    elif route == "left":
        parts.append(_line(a, (-LANE, -LANE)))
        parts.append(_arc((-LANE, -LANE + TURN_R), TURN_R, -np.pi / 2, 0.0))
        parts.append(_line((LANE, LANE), (LANE, ARM - 0.5)))
    elif route == "right":
        c = (-LANE - TURN_R, -LANE - TURN_R)
        parts.append(_line(a, (c[0], -LANE)))
        parts.append(_arc(c, TURN_R, np.pi / 2, 0.0))
        parts.append(_line((-LANE, c[1]), (-LANE, -ARM + 0.5)))
    else:
        raise ValueError(f"unknown route {route!r}; routes are {ROUTES}")
    turn_pts = len(parts[0]) + len(parts[1]) if route in ("left", "right") else 0
    pts = np.concatenate(parts)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    turn = (float(s[turn_pts - 1]), float(s[turn_pts - 1] + np.pi / 2 * TURN_R)) if turn_pts else (0.0, 0.0)
    if route == "stop":  # the car centre midway through the stop region, measured along the approach
        u_goal = layout.cone_u + sum(STOP_BEFORE) / 2
        s_goal = float(np.interp(-u_goal, -u_app, s[: len(u_app)]))
    else:
        s_goal = float(s[-1]) - (ARM - 0.5 - GOAL_D)
    return RoutePath(points=pts, s=s, s_goal=s_goal, turn=turn)


def goal_region(layout: Layout, x: float, y: float) -> str:
    """The route whose goal region holds the car centre (x, y), or "": a chequered strip's stretch of a branch's
    right-hand lane, or the approach's incoming lane 2.4-4.6 m before the red cone."""
    lo, hi = GOAL_D - GOAL_HALF, GOAL_D + GOAL_HALF
    if lo <= x <= hi and -ROAD_HALF <= y <= 0.0:
        return "end"
    if 0.0 <= x <= ROAD_HALF and lo <= y <= hi:
        return "left"
    if -ROAD_HALF <= x <= 0.0 and -hi <= y <= -lo:
        return "right"
    if x < -ROAD_HALF:
        u, lat, _ = approach_coords(layout.bend, x, y)
        if layout.cone_u + STOP_BEFORE[0] <= u <= layout.cone_u + STOP_BEFORE[1] and 0.0 <= lat <= ROAD_HALF:
            return "stop"
    return ""


def lane_frame(x: float, y: float, bend: int = 0) -> tuple[float, float]:
    """The heading (rad) of the right-hand lane at a point and the point's offset from its centre (m, + left).

    Route-agnostic on purpose: on the branches the lane leads away from the intersection, on the approach it
    follows the bend towards the intersection, elsewhere (intersection, straight branch) it runs along +x, so
    the state never reveals the route.
    """
    if abs(x) <= ROAD_HALF and y > ROAD_HALF:
        return np.pi / 2, LANE - x
    if abs(x) <= ROAD_HALF and y < -ROAD_HALF:
        return -np.pi / 2, x + LANE
    if x < -ROAD_HALF:
        _, lat, away = approach_coords(bend, x, y)
        return float((away + 2 * np.pi) % (2 * np.pi) - np.pi), LANE - lat
    return 0.0, y + LANE
