"""Code shared by the action tokenizers: per-dimension range normalisation, id sanitising, JSON files, metrics.

It lives apart from ``action.py`` (which re-exports it) so that each tokenizer module can import it without a
circular import through the module that re-exports the tokenizers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"


class RangeNormalizer:
    """Affine map of each action dimension from ``[low, high]`` to ``[-1, 1]``.

    ``low``/``high`` are quantiles (or min/max) of the fitted actions. Values outside the range map outside
    ``[-1, 1]``; whether to clip is each tokenizer's choice. ``data_min``/``data_max`` are the fitted extremes:
    decoders clip their output to them, so a decoded chunk never leaves the range the tokenizer was fitted on.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, data_min: np.ndarray, data_max: np.ndarray):
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        self.data_min = np.asarray(data_min, dtype=np.float64)
        self.data_max = np.asarray(data_max, dtype=np.float64)
        assert self.low.shape == self.high.shape == self.data_min.shape == self.data_max.shape, "per-dim stats [D]"
        # A constant dimension has no range: give it a tiny one so the map stays finite and invertible.
        self.half = np.maximum((self.high - self.low) / 2.0, 1e-8)
        self.mid = (self.high + self.low) / 2.0

    @classmethod
    def fit(cls, actions: np.ndarray, quantile: float = 0.0) -> RangeNormalizer:
        """Fit on ``actions[..., D]``; ``quantile=0.01`` gives the q01/q99 range, ``0`` the min/max range."""
        flat = np.asarray(actions, dtype=np.float64).reshape(-1, actions.shape[-1])
        if not 0.0 <= quantile < 0.5:
            raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
        lo, hi = (flat.min(0), flat.max(0)) if quantile == 0 else np.quantile(flat, [quantile, 1 - quantile], axis=0)
        return cls(lo, hi, flat.min(0), flat.max(0))

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mid) / self.half

    def unnormalize(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.half + self.mid

    def clip(self, x: np.ndarray) -> np.ndarray:
        """Clip raw actions to the fitted extremes (per dimension)."""
        return np.clip(x, self.data_min, self.data_max)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist() for k in ("low", "high", "data_min", "data_max")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RangeNormalizer:
        return cls(d["low"], d["high"], d["data_min"], d["data_max"])


def detect_binary_dims(flat: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Dimensions of ``flat[M, D]`` that take only two values (a gripper open or closed): their indices and
    levels ``[n, 2]`` (low, high). Every sample must lie within 0.1% of the range from one of the two."""
    dims, levels = [], []
    for j in range(flat.shape[1]):
        lo, hi = float(flat[:, j].min()), float(flat[:, j].max())
        near = np.minimum(np.abs(flat[:, j] - lo), np.abs(flat[:, j] - hi))
        if hi - lo > 1e-6 and near.max() <= 1e-3 * (hi - lo):
            dims.append(j)
            levels.append((lo, hi))
    return dims, np.asarray(levels, dtype=np.float64).reshape(-1, 2)


def check_chunks(chunks: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Return ``chunks`` as float64 ``[N, H, D]``; reject other shapes and non-finite values."""
    x = np.asarray(chunks, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"expected action chunks [N, H, D] with N, H, D >= 1, got shape {x.shape}")
    if dim is not None and x.shape[2] != dim:
        raise ValueError(f"chunks have {x.shape[2]} action dims, the tokenizer was fitted on {dim}")
    if not np.isfinite(x).all():
        raise ValueError("action chunks contain NaN or inf")
    return x


def check_decode_args(horizon: int, dim: int, fitted_dim: int) -> None:
    """Decode accepts any ids, but its shape arguments are the caller's contract."""
    if int(horizon) < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if int(dim) != fitted_dim:
        raise ValueError(f"dim={dim} but the tokenizer was fitted on {fitted_dim}-D actions")


def sanitize_ids(ids: Any, vocab_size: int) -> tuple[np.ndarray, bool]:
    """Turn any id sequence into int64 ``[n]`` of ids in ``[0, vocab_size)``, dropping the rest.

    Returns ``(ids, ok)``; ``ok`` is False when anything had to be dropped or the input was not a flat sequence
    of integers. Never raises.
    """
    if ids is None:
        return np.zeros(0, dtype=np.int64), False
    try:
        arr = np.asarray(ids)
        ok = arr.ndim == 1  # a scalar or a nested array is not an id sequence: use its ids, but flag it
        if arr.dtype.kind not in "iu":
            raise TypeError("not integers")
        arr = arr.reshape(-1).astype(np.int64)
        valid = (arr >= 0) & (arr < vocab_size)
    except (TypeError, ValueError, OverflowError):
        # Mixed types, huge Python ints, nested ragged lists: sort it out element by element.
        out = []
        try:
            seq = list(ids)
        except TypeError:
            return np.zeros(0, dtype=np.int64), False
        for v in seq:
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= int(v) < vocab_size:
                out.append(int(v))
        return np.asarray(out, dtype=np.int64), False
    return arr[valid], bool(ok and valid.all())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    write_text_atomic(path, json.dumps(obj, indent=1))


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_config(directory: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read ``<dir>/config.json``; check its ``kind`` when one is expected."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no action tokenizer at {directory} ({CONFIG_NAME} missing)")
    cfg = json.loads(path.read_text())
    if kind is not None and cfg.get("kind") != kind:
        raise ValueError(f"{path} holds a {cfg.get('kind')!r} tokenizer, not {kind!r}")
    return cfg


def reconstruction_metrics(true: np.ndarray, pred: np.ndarray, low: np.ndarray, high: np.ndarray) -> dict[str, float]:
    """Errors of ``pred`` vs ``true`` ``[N, H, D]`` in units where each dim's ``[low, high]`` spans ``[-1, 1]``."""
    half = np.maximum((np.asarray(high, np.float64) - np.asarray(low, np.float64)) / 2.0, 1e-8)
    err = (np.asarray(pred, np.float64) - np.asarray(true, np.float64)) / half
    return {
        "nrmse": float(np.sqrt(np.mean(err**2))),
        "max_abs": float(np.abs(err).max()),
        "nrmse_per_dim": np.sqrt(np.mean(err**2, axis=(0, 1))).tolist(),
    }
