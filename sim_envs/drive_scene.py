"""The Drive-v0 world: the road network geometry, the compiled MuJoCo model, and a fast two-camera renderer.

The approach road is straight for its last BEND_START metres before the intersection, then bends (an arc of
one of BENDS: radius and angle, left or right, or no bend at all), then runs straight to its end wall. The
painted world is compiled once per bend (the same static scenery plus that bend's approach); an episode
shows one of them (the others have alpha 0, which MuJoCo skips when it builds the scene, so the world stays
one draw call) and moves the approach's end wall, so reset never recompiles.

Why one painted mesh: on a CPU rasteriser (Mesa llvmpipe) every geom costs one draw call of ~25 us at
64x64, far more than its pixels. The static scenery (grass, asphalt, dashed centre lines, kerbs, stop
line, chequered goal strips, end walls and a sky backdrop) is therefore one textured mesh whose faces
sample flat cells of a small palette texture: one draw call for the whole world. Only the car, the
cones and the parked cars are separate geoms (they move per episode). Both cameras render from the
same scene into two viewports of one framebuffer and are read back with a single glReadPixels.
"""

from __future__ import annotations

from functools import cache, lru_cache

import mujoco
import numpy as np

import robotok

# Road network (metres, intersection centre at the origin, approach along +x, traffic on the right).
ROAD_HALF = 3.0  # half width of every road: two 3 m lanes
LANE = 1.5  # lane centre offset from the road axis
ARM = 10.0  # the three branches end at walls this far from the centre
APPROACH_END = -20.0  # the approach road starts (at a wall) here
GOAL_D = 7.5  # goal strips sit this far from the centre on each branch
APPROACH_LEN = -APPROACH_END - ROAD_HALF  # 17 m of approach road, measured along its axis from the intersection
BEND_START = 2.5  # the approach is straight this long before the intersection (the right turn starts 1.5 m out)
# The approach's bends as (angle rad, radius m); angle > 0 bends left for a car driving towards the intersection.
BENDS: tuple[tuple[float, float], ...] = ((0.0, 0.0),) + tuple(
    (sign * np.radians(deg), radius) for deg in (15, 30, 45) for radius in (12.0, 18.0) for sign in (1.0, -1.0)
)

PALETTE = {  # texture cells: name -> RGB in [0, 1]
    "grass": (0.36, 0.52, 0.30),
    "asphalt": (0.27, 0.27, 0.29),
    "yellow": (0.95, 0.80, 0.10),
    "white": (0.95, 0.95, 0.95),
    "kerb": (0.80, 0.80, 0.78),
    "green": (0.10, 0.85, 0.25),
    "wall": (0.62, 0.60, 0.58),
    "sky": (0.80, 0.92, 1.00),  # lit by ambient light only (the sun points straight down)
    "paint": (1.0, 1.0, 1.0),  # car bodies: the geom's rgba gives the colour
    "glass": (0.25, 0.28, 0.32),
    "tyre": (0.10, 0.10, 0.10),
}
_CELL = 8  # texture pixels per palette cell


def approach_frame(bend: int, u: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Points [N, 2] of the approach's axis at distances u [N] (m) from the intersection edge along it, and the
    unit directions [N, 2] pointing away from the intersection there (closed form: straight, arc, straight)."""
    ang, radius = BENDS[bend]
    u = np.atleast_1d(np.asarray(u, float))
    arc_len = abs(ang) * radius
    k = 0.0 if ang == 0 else -np.sign(ang) / radius  # curvature going away (a left bend for the driver)
    t = np.clip(u - BEND_START, 0.0, arc_len)  # distance run on the arc
    phi = np.pi + k * t
    rest = np.maximum(u - BEND_START - arc_len, 0.0)
    x = -ROAD_HALF - np.minimum(u, BEND_START)
    y = np.zeros_like(u)
    if k:
        x, y = x + np.sin(phi) / k, y - (np.cos(phi) + 1.0) / k
    else:
        x = x - t
    d = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    return np.stack([x, y], axis=1) + rest[:, None] * d, d


def approach_point(bend: int, u: np.ndarray | float, lat: np.ndarray | float) -> np.ndarray:
    """World points [N, 2] at distance u along the approach and lat (m) to the left of its away direction
    (lat > 0 is the incoming, right-hand lane of a car driving towards the intersection)."""
    p, d = approach_frame(bend, u)
    left = np.stack([-d[:, 1], d[:, 0]], axis=1)
    return p + np.asarray(lat, float).reshape(-1, 1) * left


@cache
def _axis_samples(bend: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = np.arange(0.0, APPROACH_LEN + 1.0, 0.1)
    p, d = approach_frame(bend, u)
    return u, p, d


@lru_cache(maxsize=8)  # a step asks for the same point up to three times (off road, goal, lane frame)
def approach_coords(bend: int, x: float, y: float) -> tuple[float, float, float]:
    """(u, lat, away heading rad) of a world point in the approach's frame (see approach_point)."""
    u, p, d = _axis_samples(bend)
    dx, dy = x - p[:, 0], y - p[:, 1]
    i = int(np.argmin(dx * dx + dy * dy))
    return (
        float(u[i] + dx[i] * d[i, 0] + dy[i] * d[i, 1]),
        float(dy[i] * d[i, 0] - dx[i] * d[i, 1]),
        float(np.arctan2(d[i, 1], d[i, 0])),
    )


def on_road(x: float, y: float, bend: int = 0) -> bool:
    """Whether a point lies on the drivable surface: the two crossing road strips or the (bent) approach."""
    if -ROAD_HALF <= x <= ARM and abs(y) <= ROAD_HALF or abs(x) <= ROAD_HALF and abs(y) <= ARM:
        return True
    if x >= -ROAD_HALF:
        return False
    u, lat, _ = approach_coords(bend, x, y)
    return 0.0 <= u <= APPROACH_LEN and abs(lat) <= ROAD_HALF


class _MeshBuilder:
    """Collects flat-coloured quads: 4 own vertices each (flat normals), texcoords at a palette cell centre."""

    def __init__(self) -> None:
        self.verts: list[tuple[float, float, float]] = []
        self.uv: list[tuple[float, float]] = []
        self.faces: list[tuple[int, int, int]] = []
        self.names = list(PALETTE)

    def quad(self, corners: list[tuple[float, float, float]], color: str) -> None:
        """Corners counter-clockwise as seen from the visible side."""
        i = len(self.verts)
        u = (self.names.index(color) + 0.5) / len(self.names)
        self.verts += corners
        self.uv += [(u, 0.5)] * 4
        self.faces += [(i, i + 1, i + 2), (i, i + 2, i + 3)]

    def flat(self, x0: float, x1: float, y0: float, y1: float, z: float, color: str) -> None:
        self.quad([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)], color)

    def block(self, x0: float, x1: float, y0: float, y1: float, h: float, color: str, z0: float = 0.0) -> None:
        """A box from z0 up to h: top and four sides (no bottom)."""
        self.flat(x0, x1, y0, y1, h, color)
        self.quad([(x0, y0, z0), (x1, y0, z0), (x1, y0, h), (x0, y0, h)], color)  # -y side
        self.quad([(x1, y1, z0), (x0, y1, z0), (x0, y1, h), (x1, y1, h)], color)  # +y side
        self.quad([(x0, y1, z0), (x0, y0, z0), (x0, y0, h), (x0, y1, h)], color)  # -x side
        self.quad([(x1, y0, z0), (x1, y1, z0), (x1, y1, h), (x1, y0, h)], color)  # +x side

    def ribbon(
        self, bend: int, u0: float, u1: float, l0: float, l1: float, z: float, color: str, h: float = 0.0
    ) -> None:
        """A strip of the approach between distances u0 < u1 and lateral offsets l0 < l1: flat at z, or a kerb
        or wall of height h (top, both sides and both end caps). Straight runs are one piece and the arc is cut
        every 0.15 rad: each triangle costs the CPU rasteriser time, so there are no more than the look needs."""
        ang, radius = BENDS[bend]
        n_arc = int(np.ceil(abs(ang) / 0.15))
        knots = BEND_START + abs(ang) * radius * np.arange(n_arc + 1) / max(n_arc, 1)
        us = np.concatenate([[u0], knots[(knots > u0 + 1e-6) & (knots < u1 - 1e-6)], [u1]])
        n = len(us) - 1
        a, c = approach_point(bend, us, l0), approach_point(bend, us, l1)
        top = h if h > 0 else z
        for i in range(n):
            self.quad([(*a[i], top), (*a[i + 1], top), (*c[i + 1], top), (*c[i], top)], color)
            if h > 0:
                self.quad([(*a[i], 0.0), (*a[i + 1], 0.0), (*a[i + 1], h), (*a[i], h)], color)
                self.quad([(*c[i + 1], 0.0), (*c[i], 0.0), (*c[i], h), (*c[i + 1], h)], color)
        if h > 0:
            self.quad([(*c[0], 0.0), (*a[0], 0.0), (*a[0], h), (*c[0], h)], color)
            self.quad([(*a[n], 0.0), (*c[n], 0.0), (*c[n], h), (*a[n], h)], color)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.verts, float), np.array(self.faces, np.int32), np.array(self.uv, float)


def palette_texture() -> np.ndarray:
    """The palette as a texture: one flat cell per colour, uint8 [_CELL, _CELL * n, 3]."""
    names = list(PALETTE)
    tex = np.zeros((_CELL, _CELL * len(names), 3), np.uint8)
    for i, name in enumerate(names):
        tex[:, i * _CELL : (i + 1) * _CELL] = np.round(np.array(PALETTE[name]) * 255).astype(np.uint8)
    return tex


def car_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Look of a car in its body frame (centre 0.4 m above the ground): body, cabin and four (fixed) wheels.

    One draw call per car; the physics uses the hidden convex hull and wheel cylinders of assets/drive.xml.
    """
    b = _MeshBuilder()
    b.block(-1.0, 1.0, -0.5, 0.5, 0.12, "paint", z0=-0.15)
    b.block(-0.7, 0.3, -0.42, 0.42, 0.36, "glass", z0=0.12)
    b.flat(-0.7, 0.25, -0.38, 0.38, 0.39, "paint")  # roof
    for x in (-0.65, 0.65):
        for y in (-0.55, 0.55):
            b.block(x - 0.24, x + 0.24, y - 0.1, y + 0.1, 0.08, "tyre", z0=-0.4)
    return b.arrays()


def _arms() -> list[tuple[np.ndarray, float, float]]:
    """Each branch (not the approach) as (unit direction away from the centre, start, end distance)."""
    return [
        (np.array([1.0, 0.0]), ROAD_HALF, ARM),
        (np.array([0.0, 1.0]), ROAD_HALF, ARM),
        (np.array([0.0, -1.0]), ROAD_HALF, ARM),
    ]


def _rect_along(
    b: _MeshBuilder, d: np.ndarray, s0: float, s1: float, l0: float, l1: float, z: float, color: str, h: float = 0.0
) -> None:
    """An axis-aligned rectangle given in arm coordinates (s along d, l to the left of d)."""
    left = np.array([-d[1], d[0]])
    pts = [d * s + left * lat for s in (s0, s1) for lat in (l0, l1)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if h > 0:
        b.block(min(xs), max(xs), min(ys), max(ys), h, color)
    else:
        b.flat(min(xs), max(xs), min(ys), max(ys), z, color)


def static_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The painted static world but the approach: vertices [V,3], faces [F,3], texcoords [V,2], palette
    texture [h,w,3] uint8."""
    b = _MeshBuilder()
    far = 60.0
    b.flat(-far, far, -far, far, 0.0, "grass")
    for x0, x1, y0, y1 in [
        (-far, far, -far, -far),
        (far, far, -far, far),
        (far, -far, far, far),
        (-far, -far, far, -far),
    ]:  # sky backdrop, facing inwards
        b.quad([(x1, y1, -1.0), (x0, y0, -1.0), (x0, y0, 60.0), (x1, y1, 60.0)], "sky")
    b.flat(-ROAD_HALF, ARM, -ROAD_HALF, ROAD_HALF, 0.01, "asphalt")
    b.flat(-ROAD_HALF, ROAD_HALF, -ARM, -ROAD_HALF, 0.01, "asphalt")
    b.flat(-ROAD_HALF, ROAD_HALF, ROAD_HALF, ARM, 0.01, "asphalt")
    for d, s0, s1 in _arms():
        for s in np.arange(s0 + 0.5, s1 - 0.5, 2.5):  # dashed centre line: 1.5 m dash, 1 m gap
            _rect_along(b, d, s, min(s + 1.5, s1 - 0.3), -0.08, 0.08, 0.02, "yellow")
        for side in (-1.0, 1.0):  # raised kerbs
            _rect_along(b, d, s0, s1, side * ROAD_HALF, side * (ROAD_HALF + 0.2), 0.0, "kerb", h=0.12)
        _rect_along(b, d, s1, s1 + 0.6, -ROAD_HALF - 0.3, ROAD_HALF + 0.3, 0.0, "wall", h=1.0)
        for row in range(2):  # chequered goal strip across the outgoing (right-hand) lane: 2 rows x 6 squares
            for k in range(6):
                color = "white" if (row + k) % 2 else "green"
                sa = GOAL_D - 0.5 + 0.5 * row
                la = -ROAD_HALF + 0.5 * k
                _rect_along(b, d, sa, sa + 0.5, la, la + 0.5, 0.02, color)
    return (*b.arrays(), palette_texture())


def approach_mesh(bend: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The painted approach road of one bend: asphalt, dashed centre line, kerbs, stop line and end wall."""
    b = _MeshBuilder()
    b.ribbon(bend, 0.0, APPROACH_LEN, -ROAD_HALF, ROAD_HALF, 0.01, "asphalt")
    for u in np.arange(0.5, APPROACH_LEN - 0.5, 2.5):  # dashed centre line: 1.5 m dash, 1 m gap
        b.ribbon(bend, u, min(u + 1.5, APPROACH_LEN - 0.3), -0.08, 0.08, 0.02, "yellow")
    for side in (-1.0, 1.0):
        lo, hi = sorted((side * ROAD_HALF, side * (ROAD_HALF + 0.2)))
        b.ribbon(bend, 0.0, APPROACH_LEN, lo, hi, 0.0, "kerb", h=0.12)
    b.ribbon(bend, APPROACH_LEN, APPROACH_LEN + 0.6, -ROAD_HALF - 0.3, ROAD_HALF + 0.3, 0.0, "wall", h=1.0)
    b.ribbon(bend, 0.05, 0.35, 0.0, ROAD_HALF, 0.02, "white")  # stop line across the incoming lane
    return b.arrays()


def build_model() -> mujoco.MjModel:
    """Compile assets/drive.xml plus the painted static mesh (about 10 ms; done once per env)."""
    spec = mujoco.MjSpec.from_file(str(robotok.assets_dir() / "drive.xml"))
    verts, faces, uv, tex = static_mesh()
    t = spec.add_texture(
        name="palette", type=mujoco.mjtTexture.mjTEXTURE_2D, width=tex.shape[1], height=tex.shape[0], nchannel=3
    )
    t.data = tex.tobytes()
    mat = spec.add_material(name="world")
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "palette"
    mat.specular = 0.0
    car = spec.add_material(name="car")
    car.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "palette"
    car.specular = 0.0
    meshes = [("car_look", car_mesh())]
    for k in range(len(BENDS)):  # the static scenery plus this bend's approach road, one mesh
        av, af, auv = approach_mesh(k)
        meshes.append(
            (
                f"world_{k}",
                (np.concatenate([verts, av]), np.concatenate([faces, af + len(verts)]), np.concatenate([uv, auv])),
            )
        )
    for name, (v, f, t) in meshes:
        mesh = spec.add_mesh(
            name=name, uservert=v.ravel().tolist(), userface=f.ravel().tolist(), usertexcoord=t.ravel().tolist()
        )
        mesh.inertia = mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL
    for k in range(len(BENDS)):  # one visible per episode (DriveEnv sets the alphas)
        spec.worldbody.add_geom(
            name=f"world_{k}",
            type=mujoco.mjtGeom.mjGEOM_MESH,
            meshname=f"world_{k}",
            material="world",
            rgba=(1.0, 1.0, 1.0, float(k == 0)),
            contype=0,
            conaffinity=0,
            group=1,
            mass=0,
        )
    for body, rgba in (
        ("car", (0.95, 0.45, 0.1, 1.0)),
        ("parked_a", (1.0, 1.0, 1.0, 1.0)),
        ("parked_b", (1.0, 1.0, 1.0, 1.0)),
    ):
        spec.body(body).add_geom(
            name=f"{body}_look",
            type=mujoco.mjtGeom.mjGEOM_MESH,
            meshname="car_look",
            material="car",
            rgba=rgba,
            contype=0,
            conaffinity=0,
            group=1,
            mass=0,
            pos=(0, 0, 0 if body == "car" else 0.4),
        )
    return spec.compile()


class MultiCamRenderer:
    """Renders several fixed cameras side by side in one offscreen framebuffer (one scene update, one read).

    Create it lazily, inside the process that renders: a process forked after a GL context exists hangs.
    """

    def __init__(self, model: mujoco.MjModel, cameras: tuple[str, ...], width: int, height: int) -> None:
        self.model, self.width, self.height = model, width, height
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width * len(cameras))
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self._gl = _OwnedGLContext(width * len(cameras), height)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=100)
        self._opt, self._pert = mujoco.MjvOption(), mujoco.MjvPerturb()
        self._cams = []
        for name in cameras:
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = model.camera(name).id
            self._cams.append(cam)
        self._rects = [mujoco.MjrRect(i * width, 0, width, height) for i in range(len(cameras))]
        self._full = mujoco.MjrRect(0, 0, width * len(cameras), height)
        self._buf = np.empty((height, width * len(cameras), 3), np.uint8)

    def render(self, data: mujoco.MjData) -> list[np.ndarray]:
        """One uint8 [H, W, 3] image per camera, rows top to bottom."""
        self._gl.make_current()
        mujoco.mjv_updateScene(
            self.model, data, self._opt, self._pert, self._cams[0], mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        for i, (cam, rect) in enumerate(zip(self._cams, self._rects, strict=True)):
            if i:  # same geoms, other viewpoint (the scene has no headlight that would follow the camera)
                mujoco.mjv_updateCamera(self.model, data, cam, self._scene)
            mujoco.mjr_render(rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._buf, None, self._full, self._ctx)
        img = self._buf[::-1]
        return [np.ascontiguousarray(img[:, i * self.width : (i + 1) * self.width]) for i in range(len(self._cams))]

    def close(self) -> None:
        """Free the GL objects in OUR context: freed while another renderer's context is current, they
        would delete that renderer's framebuffer (GL object ids repeat across contexts)."""
        if getattr(self, "_gl", None) is not None:
            self._gl.make_current()
            self._ctx.free()
            self._gl.free()
            self._gl = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit EGL may be torn down first; the OS reclaims everything then
            pass


class _OwnedGLContext(mujoco.GLContext):
    """A GL context freed only by its MultiCamRenderer (in the right order), never by the garbage collector."""

    def __del__(self) -> None:
        pass
