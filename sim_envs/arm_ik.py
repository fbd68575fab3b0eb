"""Damped least-squares inverse kinematics for an arm in an MJCF model, from MuJoCo's site Jacobian.

DLS (Wampler 1986; Buss, "Introduction to inverse kinematics with Jacobian transpose, pseudoinverse
and damped least squares methods", 2004): ``dq = J^T (J J^T + lambda^2 I)^-1 e`` stays bounded near
singularities, where the plain pseudoinverse blows up. The solver runs on its own ``MjData`` so that
solving never disturbs the simulation it serves.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np

# A top-down grasp: the site's z axis (approach) points down and its x axis points back along the
# heading, so yaw 0 is the arm's natural pose with every joint near zero.
_R_DOWN = np.diag([-1.0, 1.0, -1.0])


def rot_z(yaw: float) -> np.ndarray:
    """Rotation matrix [3, 3] about the world z axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def down_frame(yaw: float) -> np.ndarray:
    """Target orientation [3, 3] of the grasp site: pointing down, turned by ``yaw`` about world z."""
    return rot_z(yaw) @ _R_DOWN


def site_yaw(xmat: np.ndarray) -> float:
    """Yaw of a site frame (row-major 3x3 or flat 9) in the convention of ``down_frame``."""
    x_axis = np.asarray(xmat).reshape(3, 3)[:, 0]
    return float(np.arctan2(-x_axis[1], -x_axis[0]))


class ArmIK:
    """Solves joint positions that put ``site`` at a position with a top-down orientation and a yaw."""

    def __init__(self, model: mujoco.MjModel, site: str, joints: Sequence[str], damping: float = 0.05) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.site_id = model.site(site).id
        self.qpos_adr = np.array([model.jnt_qposadr[model.joint(j).id] for j in joints])
        self.dof_adr = np.array([model.jnt_dofadr[model.joint(j).id] for j in joints])
        self.lo = np.array([model.jnt_range[model.joint(j).id][0] for j in joints])
        self.hi = np.array([model.jnt_range[model.joint(j).id][1] for j in joints])
        self.damping = damping
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position [3] and rotation [3, 3] for arm joints ``q`` [n] (other joints at their defaults)."""
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        return self.data.site_xpos[self.site_id].copy(), self.data.site_xmat[self.site_id].reshape(3, 3).copy()

    def solve(
        self, q_seed: np.ndarray, pos: np.ndarray, yaw: float, iters: int = 4, max_step: float = 0.25
    ) -> np.ndarray:
        """Joint positions [n] near ``q_seed`` that reach ``pos`` [3] pointing down at ``yaw``.

        A few DLS iterations from the seed: called every control step with the previous command as the
        seed, it tracks a moving target smoothly and stays on the seed's branch (elbow up).
        """
        target_r = down_frame(yaw)
        q = np.array(q_seed, dtype=np.float64)
        for _ in range(iters):
            p, r = self.forward(q)
            # Orientation error as a world-frame rotation vector (small-angle form, matching jacr):
            # sum_i r_i x t_i over the frame axes, i.e. the vee of T R^T - R T^T.
            a = target_r @ r.T
            err_r = 0.5 * np.array([a[2, 1] - a[1, 2], a[0, 2] - a[2, 0], a[1, 0] - a[0, 1]])
            err = np.concatenate([pos - p, err_r])  # [6]
            if np.max(np.abs(err)) < 1e-5:
                break
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site_id)
            jac = np.vstack([self._jacp[:, self.dof_adr], self._jacr[:, self.dof_adr]])  # [6, n]
            jjt = jac @ jac.T + (self.damping**2) * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            scale = max(1.0, np.max(np.abs(dq)) / max_step)  # bound the step far from the target
            q = np.clip(q + dq / scale, self.lo, self.hi)
        return q
