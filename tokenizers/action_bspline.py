"""B-spline action tokens: BEAST (Zhou et al., 2025, "BEAST: Efficient Tokenization of B-Splines Encoded
Action Sequences for Imitation Learning").

Each action dimension of a chunk ``[H, D]`` is normalised to ``[-1, 1]`` (fitted min/max) and fitted, by least
squares, with a clamped cubic B-spline of ``K`` control points on uniform knots over the chunk's time span. The
control points are quantised to ``bins`` uniform bins over the control-point range seen at fit time (at least
``[-1, 1]``). A chunk is always ``K * D`` tokens, control-point-major (``c0d0 c0d1 ... c1d0 ...``), ids
``0 .. bins-1``, and decodes to a C2-smooth chunk; since the decoded curve is a spline, ``decode`` can
resample it at any horizon.

Round-trip bound: the B-spline basis functions are non-negative and sum to one at every time, so a control
point error of at most half a bin moves the curve by at most half a bin. The decoded value is therefore off
by at most (least-squares fit residual) + (half a control-point bin), in normalised units, for chunks whose
control points fall inside the quantisation range.

A two-valued dimension (a gripper open or closed) is a step, which a cubic spline can only smear. With
``binary_dims=True`` such dimensions (detected at fit time) are still coded by their control points, but the
decoded curve is snapped to the nearer of the two levels: the switch lands where the spline crosses the middle.
The bound above then holds for the continuous dimensions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robotok.tokenizers.action_common import (
    CONFIG_NAME,
    FORMAT_VERSION,
    RangeNormalizer,
    check_chunks,
    check_decode_args,
    detect_binary_dims,
    read_config,
    sanitize_ids,
    write_json_atomic,
)

DEGREE = 3


def bspline_basis(num_points: int, horizon: int, degree: int = DEGREE) -> np.ndarray:
    """``B[horizon, num_points]``: clamped B-spline basis on uniform knots, sampled at ``t = h / (horizon - 1)``.

    Cox–de Boor recursion; rows are non-negative and sum to one (partition of unity).
    """
    k, p = num_points, degree
    interior = np.linspace(0.0, 1.0, k - p + 1)[1:-1]
    knots = np.concatenate([np.zeros(p + 1), interior, np.ones(p + 1)])  # [k + p + 1]
    t = np.linspace(0.0, 1.0, horizon) if horizon > 1 else np.zeros(1)
    # Degree 0: indicator of the knot span; the right end t=1 belongs to the last non-empty span.
    b = ((knots[None, :-1] <= t[:, None]) & (t[:, None] < knots[None, 1:])).astype(np.float64)
    b[t >= 1.0, :] = 0.0
    b[t >= 1.0, k - 1] = 1.0
    for q in range(1, p + 1):
        n = b.shape[1] - 1
        left_den = knots[q : q + n] - knots[:n]
        right_den = knots[q + 1 : q + 1 + n] - knots[1 : 1 + n]
        with np.errstate(divide="ignore", invalid="ignore"):
            left = np.where(left_den > 0, (t[:, None] - knots[None, :n]) / left_den, 0.0)
            right = np.where(right_den > 0, (knots[None, q + 1 : q + 1 + n] - t[:, None]) / right_den, 0.0)
        b = left * b[:, :n] + right * b[:, 1 : n + 1]
    assert b.shape == (horizon, k), f"basis shape {b.shape} != {(horizon, k)}"
    return b


class BSplineTokenizer:
    """``K * D`` tokens per chunk; ids ``0 .. bins-1``."""

    kind = "bspline"

    def __init__(self, num_control_points: int = 8, bins: int = 256, binary_dims: bool = True):
        if num_control_points < DEGREE + 1:
            raise ValueError(f"a cubic B-spline needs num_control_points >= {DEGREE + 1}, got {num_control_points}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.num_control_points = int(num_control_points)
        self.bins = int(bins)
        self.binary_dims = bool(binary_dims)
        self.binary: list[int] = []  # dims snapped to two levels on decode
        self.levels = np.zeros((0, 2))  # [nb, 2] (low, high) of each binary dim
        self.norm: RangeNormalizer | None = None
        self.horizon = 0
        self.cp_low = self.cp_high = np.zeros(0)  # [D] quantisation range of the control points (normalised)
        self._basis: dict[int, np.ndarray] = {}
        self._pinv: dict[int, np.ndarray] = {}

    def basis(self, horizon: int) -> np.ndarray:
        """``[horizon, K]`` basis matrix: a chunk dimension is ``basis @ control_points``."""
        if horizon not in self._basis:
            self._basis[horizon] = bspline_basis(self.num_control_points, horizon)
        return self._basis[horizon]

    def control_points(self, chunks: np.ndarray) -> np.ndarray:
        """Least-squares control points (normalised units) of raw ``chunks[N, H, D]`` -> ``[N, K, D]``."""
        x = check_chunks(chunks, self.dim)
        h = x.shape[1]
        if h not in self._pinv:
            self._pinv[h] = np.linalg.pinv(self.basis(h))  # [K, H]; minimum-norm when K > H
        return np.einsum("kt,ntd->nkd", self._pinv[h], self.norm.normalize(x))

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, chunks: np.ndarray) -> BSplineTokenizer:
        """Fit the normalisation and the control-point range on ``chunks[N, H, D]``."""
        x = check_chunks(chunks)
        self.horizon = x.shape[1]
        self.norm = RangeNormalizer.fit(x, 0.0)
        if self.binary_dims:
            self.binary, self.levels = detect_binary_dims(x.reshape(-1, x.shape[-1]))
        cp = self.control_points(x)
        self.cp_low = np.minimum(cp.min(axis=(0, 1)), -1.0)
        self.cp_high = np.maximum(cp.max(axis=(0, 1)), 1.0)
        return self

    def _require_fit(self) -> RangeNormalizer:
        if self.norm is None:
            raise RuntimeError("BSplineTokenizer is not fitted: call fit(chunks) or load(dir) first")
        return self.norm

    # ---- the interface ---------------------------------------------------------------------------------------
    @property
    def continuous(self) -> list[int]:
        return [d for d in range(self.dim) if d not in self.binary]

    @property
    def vocab_size(self) -> int:
        return self.bins

    @property
    def dim(self) -> int:
        return self._require_fit().dim

    def tokens_per_chunk(self, horizon: int, dim: int) -> int:
        """Fixed: ``K * dim`` whatever the horizon."""
        return self.num_control_points * int(dim)

    def max_tokens_per_chunk(self, horizon: int, dim: int) -> int:
        return self.tokens_per_chunk(horizon, dim)

    def bin_width(self) -> np.ndarray:
        """``[D]`` control-point bin width in normalised units."""
        self._require_fit()
        return (self.cp_high - self.cp_low) / (self.bins - 1)

    def encode_array(self, chunks: np.ndarray) -> np.ndarray:
        """``chunks[N, H, D]`` -> int64 ids ``[N, K * D]``."""
        self._require_fit()
        cp = self.control_points(chunks)  # [N, K, D]
        ids = np.rint((cp - self.cp_low) / self.bin_width())
        return np.clip(ids, 0, self.bins - 1).astype(np.int64).reshape(cp.shape[0], -1)

    def encode(self, chunk: np.ndarray) -> list[int]:
        return self.encode_array(np.asarray(chunk)[None])[0].tolist()

    def encode_batch(self, chunks: np.ndarray) -> list[list[int]]:
        return self.encode_array(chunks).tolist()

    def _curve(self, ids: np.ndarray, horizon: int) -> np.ndarray:
        """Ids ``[N, K, D]`` -> raw chunks ``[N, horizon, D]`` clipped to the fitted range."""
        cp = self.cp_low + ids * self.bin_width()
        z = np.einsum("tk,nkd->ntd", self.basis(horizon), cp)
        out = self.norm.clip(self.norm.unnormalize(z))
        for b, j in enumerate(self.binary):
            out[..., j] = np.where(out[..., j] > self.levels[b].mean(), self.levels[b, 1], self.levels[b, 0])
        return out

    def decode(self, ids: Any, horizon: int, dim: int) -> tuple[np.ndarray, bool]:
        """Ids -> ``(chunk[horizon, dim] float32, ok)``. Never raises for any ids.

        Repairs: out-of-range ids are dropped; missing control points repeat the last complete one (the curve
        holds still at its end); extra ids are cut. ``ok`` is False whenever a repair was needed.
        """
        norm = self._require_fit()
        check_decode_args(horizon, dim, norm.dim)
        ids, ok = sanitize_ids(ids, self.bins)
        n = self.num_control_points * dim
        if ids.size != n:
            ok = False
        ids = ids[:n]
        full, rest = divmod(ids.size, dim)
        neutral = np.clip(np.rint(-self.cp_low / self.bin_width()), 0, self.bins - 1)  # normalised 0
        grid = np.empty((self.num_control_points, dim), dtype=np.float64)
        if full:
            grid[:full] = ids[: full * dim].reshape(full, dim)
        if full < self.num_control_points:
            last = grid[full - 1].copy() if full else neutral.copy()
            last[:rest] = ids[full * dim :]
            grid[full:] = last
        return self._curve(grid[None], horizon)[0].astype(np.float32), ok

    def decode_batch(self, ids_list: list[Any], horizon: int, dim: int) -> list[tuple[np.ndarray, bool]]:
        return [self.decode(ids, horizon, dim) for ids in ids_list]

    def decode_array(self, ids: np.ndarray, horizon: int, dim: int) -> np.ndarray:
        """Fast path for well-formed ids ``[N, K * dim]`` -> chunks ``[N, horizon, dim]`` float32."""
        self._require_fit()
        ids = np.clip(np.asarray(ids, dtype=np.int64), 0, self.bins - 1).reshape(-1, self.num_control_points, dim)
        return self._curve(ids, horizon).astype(np.float32)

    # ---- files -----------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        norm = self._require_fit()
        return {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "num_control_points": self.num_control_points,
            "degree": DEGREE,
            "bins": self.bins,
            "binary_dims": self.binary_dims,
            "horizon": self.horizon,
            "normalizer": norm.to_json(),
            "binary": self.binary,
            "levels": self.levels.tolist(),
            "cp_low": self.cp_low.tolist(),
            "cp_high": self.cp_high.tolist(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``<dir>/config.json``."""
        directory = Path(directory)
        write_json_atomic(directory / CONFIG_NAME, self.to_json())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BSplineTokenizer:
        cfg = read_config(directory, cls.kind)
        if cfg.get("degree", DEGREE) != DEGREE:
            raise ValueError(f"{directory}: degree {cfg['degree']} B-splines are not supported (only {DEGREE})")
        tok = cls(cfg["num_control_points"], cfg["bins"], cfg["binary_dims"])
        tok.binary = [int(j) for j in cfg["binary"]]
        tok.levels = np.asarray(cfg["levels"], dtype=np.float64).reshape(-1, 2)
        tok.norm = RangeNormalizer.from_json(cfg["normalizer"])
        tok.horizon = int(cfg["horizon"])
        tok.cp_low = np.asarray(cfg["cp_low"], dtype=np.float64)
        tok.cp_high = np.asarray(cfg["cp_high"], dtype=np.float64)
        return tok

    def __repr__(self) -> str:
        return f"BSplineTokenizer(num_control_points={self.num_control_points}, bins={self.bins}, binary={self.binary})"
