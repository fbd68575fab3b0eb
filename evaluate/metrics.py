"""Evaluation metrics: per-episode records in, namespaced summaries (``eval/...``) out.

An episode record is a plain JSON-able dict written by ``robotok.evaluate.rollout``:

    env, policy, episode, seed, prompt, target (str | None), success (bool), return (float),
    length (int), wrong_object (bool | None; PickCup), route_completion (float in [0, 1] | None; Drive),
    collisions, off_road (int event counts | None; Drive), decode_failures (int),
    action_latency_ms (list[float], one per executed action), chunk_latency_ms (list[float], one per
    predicted chunk; empty when the policy does not expose chunk timings), video (str | None)

Success rates carry a 95% Wilson score interval (Wilson 1927, "Probable inference, the law of succession,
and statistical inference"): unlike the normal approximation it stays inside [0, 1] and is honest at
0/n and n/n, which is where a good or a broken policy lands. Means over seeds of a continuous figure
(e.g. PSNR gained over a baseline by ``robotok-imagine``) carry a seeded 95% bootstrap interval.

The driving score follows the CARLA leaderboard (https://leaderboard.carla.org/#driving-score): route
completion times a multiplicative infraction penalty. robotok's road has no pedestrians or traffic
lights, so two infractions count: each collision multiplies by 0.50 (CARLA's coefficient for a
collision with a pedestrian, the harshest) and each off-road event (leaving the road, counted once per
excursion) by 0.70 (CARLA's coefficient for running a red light).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
COLLISION_PENALTY = 0.50
OFF_ROAD_PENALTY = 0.70

# Every summary carries exactly these keys (value None where a metric does not apply), so that
# consumers can rely on them; the module docstring of robotok.evaluate.report documents each one.
METRIC_KEYS = (
    "eval/episodes",
    "eval/successes",
    "eval/success_rate",
    "eval/success_ci95",
    "eval/return_mean",
    "eval/length_mean",
    "eval/wrong_object_rate",
    "eval/route_completion_mean",
    "eval/collisions_mean",
    "eval/off_road_mean",
    "eval/driving_score_mean",
    "eval/decode_failures",
    "eval/latency_ms_mean",
    "eval/latency_ms_p50",
    "eval/latency_ms_p99",
    "eval/chunk_latency_ms_p50",
    "eval/chunk_latency_ms_p99",
    "eval/control_hz_sustained",
    "eval/control_hz_p99",
)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion ``successes / n`` (default 95%)."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n >= 1 trials, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got successes={successes}, n={n}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At k=0 (k=n) the lower (upper) end is exactly 0 (1); float round-off would leave ~1e-17.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def bootstrap_mean_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap (percentile) interval of the mean of ``values``, e.g. per-seed gains over a baseline;
    one value gives (value, value). Seeded, so a table is reproducible."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_mean_interval needs at least one value")
    if v.size < 2:
        return float(v[0]), float(v[0])
    means = v[np.random.default_rng(seed).integers(0, v.size, (resamples, v.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def infraction_penalty(collisions: int, off_road: int) -> float:
    """CARLA-style multiplicative penalty in (0, 1]: 0.5 per collision, 0.7 per off-road event."""
    if collisions < 0 or off_road < 0:
        raise ValueError(f"infraction counts must be >= 0, got collisions={collisions}, off_road={off_road}")
    return COLLISION_PENALTY**collisions * OFF_ROAD_PENALTY**off_road


def driving_score(route_completion: float, collisions: int, off_road: int) -> float:
    """Route completion in [0, 1] times the infraction penalty (CARLA leaderboard's driving score)."""
    if not 0.0 <= route_completion <= 1.0 + 1e-6:
        raise ValueError(f"route_completion must lie in [0, 1], got {route_completion}")
    return min(route_completion, 1.0) * infraction_penalty(collisions, off_road)


def count_events(flags: Iterable[bool]) -> int:
    """Number of rising edges in a per-step flag (an excursion that lasts 30 steps counts once)."""
    count, prev = 0, False
    for f in flags:
        f = bool(f)
        count += f and not prev
        prev = f
    return count


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate episode records into one ``eval/...`` metric dict with every key of ``METRIC_KEYS``."""
    if not records:
        raise ValueError("summarize needs at least one episode record, got none")
    n = len(records)
    k = sum(bool(r["success"]) for r in records)
    lo, hi = wilson_interval(k, n)
    out: dict[str, Any] = {
        "eval/episodes": n,
        "eval/successes": k,
        "eval/success_rate": k / n,
        "eval/success_ci95": [lo, hi],
        "eval/return_mean": _mean([float(r["return"]) for r in records]),
        "eval/length_mean": _mean([float(r["length"]) for r in records]),
    }
    wrong = [bool(r["wrong_object"]) for r in records if r.get("wrong_object") is not None]
    out["eval/wrong_object_rate"] = _mean(wrong)
    drive = [r for r in records if r.get("route_completion") is not None]
    out["eval/route_completion_mean"] = _mean([float(r["route_completion"]) for r in drive])
    out["eval/collisions_mean"] = _mean([float(r["collisions"]) for r in drive])
    out["eval/off_road_mean"] = _mean([float(r["off_road"]) for r in drive])
    out["eval/driving_score_mean"] = _mean(
        [driving_score(float(r["route_completion"]), int(r["collisions"]), int(r["off_road"])) for r in drive]
    )
    out["eval/decode_failures"] = int(sum(int(r.get("decode_failures", 0)) for r in records))
    lat = [x for r in records for x in r.get("action_latency_ms", [])]
    chunk = [x for r in records for x in r.get("chunk_latency_ms", [])]
    out["eval/latency_ms_mean"] = _mean(lat)
    out["eval/latency_ms_p50"] = _pct(lat, 50)
    out["eval/latency_ms_p99"] = _pct(lat, 99)
    out["eval/chunk_latency_ms_p50"] = _pct(chunk, 50)
    out["eval/chunk_latency_ms_p99"] = _pct(chunk, 99)
    # Sustained: actions per second the policy can produce on average (chunking amortises inference).
    # p99: the rate at which 99% of control periods still get their action in time (hard real time).
    mean_ms, p99_ms = out["eval/latency_ms_mean"], out["eval/latency_ms_p99"]
    out["eval/control_hz_sustained"] = 1000.0 / max(mean_ms, 1e-6) if mean_ms is not None else None
    out["eval/control_hz_p99"] = 1000.0 / max(p99_ms, 1e-6) if p99_ms is not None else None
    assert tuple(out) == METRIC_KEYS, f"summary keys drifted from METRIC_KEYS: {tuple(out)}"
    return out


def group_by(records: Sequence[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by ``record[key]`` (records where it is None are left out), keys sorted."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get(key) is not None:
            groups.setdefault(str(r[key]), []).append(r)
    return dict(sorted(groups.items()))
