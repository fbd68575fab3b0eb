"""Feature statistics as LeRobot stores them (meta/stats.json and the ``stats/...`` episode columns).

Each feature gets min, max, mean, std, count and the quantiles q01, q10, q50, q90, q99 over frames.
Vectors [T, D] give per-dimension stats of shape [D]. Images give per-channel stats of shape [3, 1, 1]
on values scaled to [0, 1], as LeRobot does; they come from a per-channel histogram of the uint8
values, which is exact (quantiles included), tiny, and adds up across episodes and processes, so
no one ever needs a whole dataset's frames at once. Quantiles follow ``np.quantile`` (linear).
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over axis 0 of x [T] or [T, D]: min/max keep x's dtype, the rest are float64."""
    if x.ndim == 1:
        x = x[:, None]
    xf = x.astype(np.float64)
    out = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": xf.mean(axis=0),
        "std": xf.std(axis=0),
        "count": np.array([len(x)], dtype=np.int64),
    }
    for name, q in QUANTILES.items():
        out[name] = np.quantile(xf, q, axis=0)
    return out


def image_histogram(frames: np.ndarray) -> np.ndarray:
    """Per-channel counts of each uint8 value: frames [T, H, W, 3] -> int64 [3, 256]."""
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3, f"got {frames.dtype} {frames.shape}"
    return np.stack([np.bincount(frames[..., c].ravel(), minlength=256) for c in range(3)]).astype(np.int64)


def histogram_stats(hist: np.ndarray, num_frames: int) -> dict[str, np.ndarray]:
    """Per-channel stats [3, 1, 1] of values/255 from a [3, 256] histogram; count is the number of frames."""
    values = np.arange(256, dtype=np.float64) / 255.0
    out: dict[str, list] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILES)}
    for h in hist:
        n = int(h.sum())
        present = np.nonzero(h)[0]
        mean = float((h * values).sum() / n)
        out["min"].append(values[present[0]])
        out["max"].append(values[present[-1]])
        out["mean"].append(mean)
        out["std"].append(float(np.sqrt(max((h * (values - mean) ** 2).sum() / n, 0.0))))
        cum = np.cumsum(h)
        for name, q in QUANTILES.items():  # np.quantile's linear rule on the sorted values
            pos = q * (n - 1)
            lo, hi = int(np.floor(pos)), int(np.ceil(pos))
            v_lo, v_hi = values[np.searchsorted(cum, lo, side="right")], values[np.searchsorted(cum, hi, side="right")]
            out[name].append(v_lo + (pos - lo) * (v_hi - v_lo))
    stats = {k: np.asarray(v, dtype=np.float64).reshape(3, 1, 1) for k, v in out.items()}
    stats["count"] = np.array([num_frames], dtype=np.int64)
    return {k: stats[k] for k in ("min", "max", "mean", "std", "count", *QUANTILES)}  # LeRobot's order


def to_json(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    """numpy stats -> nested lists (ints stay ints), for JSON and parquet."""
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


def from_json(stats: dict[str, Any]) -> dict[str, np.ndarray]:
    """Nested lists -> numpy arrays."""
    return {k: np.asarray(v) for k, v in stats.items()}
