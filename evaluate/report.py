"""``report.json`` and ``report.md`` from episode records.

report.json schema (``"schema": "robotok.eval/1"``; keys are stable, new keys may be added):

    schema       "robotok.eval/1"
    created      ISO-8601 UTC time of writing
    config       the evaluation config as given (policy, envs, episodes, seed_start, ...)
    policy       label of the evaluated policy ("expert", "random", or the checkpoint/bundle folder name)
    policies     all labels in the run, the evaluated one first, then the --compare references
    results      {env_id: {policy_label: {
                     "overall":    METRICS over all episodes,
                     "per_prompt": {prompt: METRICS},
                     "per_target": {target: METRICS}   (target colour / route; {} when unknown),
                     "videos":     [paths relative to the report],
                     "still":      path of a PNG still relative to the report, or null}}}
    episodes     one row per episode: env, policy, episode, seed, prompt, target, success, return,
                 length, wrong_object, route_completion, collisions, off_road, driving_score,
                 decode_failures, latency_ms_mean, latency_ms_max, video

METRICS is a dict with exactly these keys (null where a metric does not apply to the env or policy):

    eval/episodes               int    episodes evaluated
    eval/successes              int    episodes with info["is_success"] at the end
    eval/success_rate           float  successes / episodes
    eval/success_ci95           [lo, hi] 95% Wilson score interval of the success rate
    eval/return_mean            float  mean undiscounted return
    eval/length_mean            float  mean episode length in steps
    eval/wrong_object_rate      float  PickCup: fraction of episodes that lifted a cup other than the target
    eval/route_completion_mean  float  Drive: mean fraction of the route completed, in [0, 1]
    eval/collisions_mean        float  Drive: mean collision events per episode
    eval/off_road_mean          float  Drive: mean off-road excursions per episode
    eval/driving_score_mean     float  Drive: mean of route completion x 0.5^collisions x 0.7^off_road
    eval/decode_failures        int    action chunks the policy could not decode (replaced by a safe action)
    eval/latency_ms_mean        float  mean wall time of select_action per executed action
    eval/latency_ms_p50, _p99   float  its median and 99th percentile
    eval/chunk_latency_ms_p50, _p99  float  per predicted chunk (policies that expose chunk timings)
    eval/control_hz_sustained   float  1000 / latency_ms_mean: actions per second the policy sustains
    eval/control_hz_p99         float  1000 / latency_ms_p99: control rate at which 99% of steps are on time
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from robotok.evaluate.metrics import METRIC_KEYS, driving_score, group_by, summarize

SCHEMA = "robotok.eval/1"
EPISODE_KEYS = (
    "env",
    "policy",
    "episode",
    "seed",
    "prompt",
    "target",
    "success",
    "return",
    "length",
    "wrong_object",
    "route_completion",
    "collisions",
    "off_road",
    "driving_score",
    "decode_failures",
    "latency_ms_mean",
    "latency_ms_max",
    "video",
)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _episode_row(r: dict[str, Any]) -> dict[str, Any]:
    lat = r.get("action_latency_ms", [])
    row = {k: r.get(k) for k in EPISODE_KEYS}
    row["success"] = bool(r["success"])
    row["driving_score"] = (
        driving_score(float(r["route_completion"]), int(r["collisions"]), int(r["off_road"]))
        if r.get("route_completion") is not None
        else None
    )
    row["latency_ms_mean"] = float(np.mean(lat)) if len(lat) else None
    row["latency_ms_max"] = float(np.max(lat)) if len(lat) else None
    return row


def build_report(
    records: Sequence[dict[str, Any]],
    config: dict[str, Any],
    policies: Sequence[str],
    stills: dict[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """Assemble the report dict (schema above) from episode records; ``policies[0]`` is the evaluated one."""
    if not records:
        raise ValueError("build_report needs at least one episode record, got none")
    stills = stills or {}
    envs = list(dict.fromkeys(r["env"] for r in records))
    results: dict[str, Any] = {}
    for env in envs:
        results[env] = {}
        for label in policies:
            rs = sorted(
                (r for r in records if r["env"] == env and r["policy"] == label),
                key=lambda r: (r["episode"], str(r.get("target"))),
            )
            if not rs:
                continue
            results[env][label] = {
                "overall": summarize(rs),
                "per_prompt": {p: summarize(g) for p, g in group_by(rs, "prompt").items()},
                "per_target": {t: summarize(g) for t, g in group_by(rs, "target").items()},
                "videos": [r["video"] for r in rs if r.get("video")],
                "still": stills.get((env, label)),
            }
    episodes = [
        _episode_row(r)
        for r in sorted(
            records, key=lambda r: (r["env"], policies.index(r["policy"]), r["episode"], str(r.get("target")))
        )
    ]
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config,
        "policy": policies[0],
        "policies": list(policies),
        "results": results,
        "episodes": episodes,
    }


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _pct(m: dict[str, Any]) -> str:
    lo, hi = m["eval/success_ci95"]
    return f"{100 * m['eval/success_rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def _lat(m: dict[str, Any], a: str, b: str) -> str:
    return "–" if m[a] is None else f"{m[a]:.2f} / {m[b]:.2f}"


# (header, formatter, metric that decides whether the column applies to an env)
_COLUMNS = (
    ("episodes", lambda m: str(m["eval/episodes"]), "eval/episodes"),
    ("success [95% CI]", _pct, "eval/success_rate"),
    ("return", lambda m: _f(m["eval/return_mean"]), "eval/return_mean"),
    ("length", lambda m: _f(m["eval/length_mean"], "{:.0f}"), "eval/length_mean"),
    ("wrong cup", lambda m: _f(m["eval/wrong_object_rate"], "{:.0%}"), "eval/wrong_object_rate"),
    ("route done", lambda m: _f(m["eval/route_completion_mean"], "{:.0%}"), "eval/route_completion_mean"),
    ("collisions", lambda m: _f(m["eval/collisions_mean"]), "eval/collisions_mean"),
    ("off-road", lambda m: _f(m["eval/off_road_mean"]), "eval/off_road_mean"),
    ("driving score", lambda m: _f(m["eval/driving_score_mean"]), "eval/driving_score_mean"),
    ("decode fails", lambda m: str(m["eval/decode_failures"]), "eval/decode_failures"),
    ("ms/action p50 / p99", lambda m: _lat(m, "eval/latency_ms_p50", "eval/latency_ms_p99"), "eval/latency_ms_p50"),
    (
        "ms/chunk p50 / p99",
        lambda m: _lat(m, "eval/chunk_latency_ms_p50", "eval/chunk_latency_ms_p99"),
        "eval/chunk_latency_ms_p50",
    ),
    ("Hz at p99", lambda m: _f(m["eval/control_hz_p99"], "{:.0f}"), "eval/control_hz_p99"),
)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _breakdown(by_policy: dict[str, Any], kind: str, title: str) -> list[str]:
    """One row per prompt (or target), one column per policy: ``successes/episodes = rate [95% CI]``."""
    keys = sorted({key for res in by_policy.values() for key in res[kind]})
    if not keys:
        return []

    def cell(m: dict[str, Any] | None) -> str:
        return "–" if m is None else f"{m['eval/successes']}/{m['eval/episodes']} = {_pct(m)}"

    rows = [[key] + [cell(res[kind].get(key)) for res in by_policy.values()] for key in keys]
    return _table([title] + [f"`{label}`" for label in by_policy], rows)


def render_markdown(report: dict[str, Any]) -> str:
    """Tables per env: one row per policy, then success per prompt and per target; links to the videos."""
    cfg = report["config"]
    sweep = ", each seed once per candidate target" if cfg.get("prompt_sweep") else ""
    lines = [
        f"# robotok-eval: {report['policy']}",
        "",
        f"Seeds {cfg.get('seed_start')}..{cfg.get('seed_start', 0) + cfg.get('episodes', 0) - 1} "
        f"({cfg.get('episodes')} episodes per env and policy{sweep}). "
        "Success with its 95% Wilson interval; latency is wall time of `select_action` per executed action "
        "and per predicted chunk.",
        "",
    ]
    for env, by_policy in report["results"].items():
        lines += [f"## {env}", ""]
        overall = {label: res["overall"] for label, res in by_policy.items()}
        cols = [c for c in _COLUMNS if any(m[c[2]] is not None for m in overall.values())]
        lines += _table(
            ["policy"] + [c[0] for c in cols],
            [[f"`{label}`"] + [c[1](m) for c in cols] for label, m in overall.items()],
        )
        for kind, title in (("per_target", "target"), ("per_prompt", "prompt")):
            table = _breakdown(by_policy, kind, title)
            if table and kind == "per_prompt":  # templates x targets: many rows, folded away
                lines += ["", f"<details><summary>Success per {title}</summary>", ""] + table + ["", "</details>"]
            elif table:
                lines += ["", f"Success per {title}:", ""] + table
        for label, res in by_policy.items():
            if res.get("still"):
                lines += ["", f"![{label} on {env}]({res['still']})"]
            if res["videos"]:
                lines += ["", f"Videos (`{label}`): " + ", ".join(f"[{Path(v).stem}]({v})" for v in res["videos"])]
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out`` (atomically); returns both paths."""
    missing = [
        k for res in report["results"].values() for r in res.values() for k in METRIC_KEYS if k not in r["overall"]
    ]
    assert not missing, f"report lacks metric keys {missing}"
    jpath, mpath = out / "report.json", out / "report.md"
    atomic_write_text(jpath, json.dumps(report, indent=2, allow_nan=False) + "\n")
    atomic_write_text(mpath, render_markdown(report))
    return jpath, mpath
