"""``<run>/report.md`` of robotok-pipeline: what each stage made, how long it took, and how well the policy does.

Everything is read back from the stages' own outputs (dataset meta, tokenizer reports, the training log,
the eval reports), so the report says what is on disk, not what was asked for. Paths in it are relative
to the run directory, so the folder can be moved or published as it is.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robotok.evaluate.report import atomic_write_text


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _pct(m: dict[str, Any]) -> str:
    lo, hi = m["eval/success_ci95"]
    return f"{100 * m['eval/success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plot_training(rows: list[dict[str, Any]], path: Path) -> bool:
    """Training and validation loss against steps as a PNG; False when there is nothing to plot."""
    train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    if not train:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*train, strict=True), label="train/loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val/loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (action tokens)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def _stage_rows(log: dict[str, Any]) -> list[list[str]]:
    from robotok.evaluate.pipeline_commands import STAGES

    rows = []
    for s in STAGES:
        info = log["stages"].get(s)
        if info is None:
            continue
        wall = info.get("wall_s")
        when = "skipped (done earlier)" if info.get("skipped") else "resumed" if info.get("resumed") else "ran"
        cmds = "<br>".join(f"`{c}`" for c in info.get("commands", [])) or "–"
        rows.append([s, "–" if wall is None else f"{wall / 60:.1f} min ({wall:.0f} s)", when, cmds])
    total = sum(i.get("wall_s", 0.0) for i in log["stages"].values())
    rows.append(["**total**", f"**{total / 60:.1f} min**", "", ""])
    return rows


def _data_section(out: Path) -> list[str]:
    from robotok.evaluate.presets import TASKS

    rows = []
    for task in TASKS:
        root = out / "data" / task
        info, rec = _json(root / "meta" / "info.json"), _json(root / "meta" / "recording.json")
        if info is None:
            continue
        exp = f"{rec['expert_successes']}/{rec['attempts']}" if rec else "–"
        rows.append(
            [
                f"`data/{task}`",
                str(info["total_episodes"]),
                str(info["total_frames"]),
                str(info.get("total_tasks", "–")),
                str(rec["noise"]) if rec else "–",
                exp,
            ]
        )
    if not rows:
        return []
    return ["## Demonstrations", ""] + _table(
        ["dataset", "episodes", "frames", "prompts", "expert noise", "expert successes / attempts"], rows
    )


def _tokenizer_section(out: Path) -> list[str]:
    lines = []
    act = _json(out / "tokenizers" / "action" / "report.json")
    if act:
        rows = [
            [
                f"`{Path(e['dataset']).name}`",
                kind,
                f"{m['tokens_per_chunk_mean']:.1f}",
                str(m["vocab_size"]),
                f"{m['nrmse']:.4f}",
                f"{m['max_abs']:.3f}",
            ]
            for e in act["datasets"]
            for kind, m in e["kinds"].items()
        ]
        lines += [
            "## Tokenizers",
            "",
            f"Action chunks of {act['config']['horizon']} steps; errors normalised "
            "(each dimension's range spans [-1, 1]) on held-out episodes "
            "([details](tokenizers/action/report.md)).",
            "",
        ]
        lines += _table(["dataset", "action tokenizer", "tokens/chunk", "vocab", "nRMSE", "max abs"], rows)
    vid = _json(out / "tokenizers" / "video" / "eval.json")
    if vid:
        psnr = ", ".join(f"{name} {r['psnr_db']:.1f} dB" for name, r in vid["eval"].items())
        lines += [
            f"Video tokenizer: {vid['tokens_per_frame']} tokens per frame, codebook {vid['vocab_size']}, "
            f"{vid['train/steps']} steps on {vid['train/frames']} frames; held-out PSNR {psnr}.",
            "",
        ]
    meta = _json(out / "shards" / "meta.json")
    pol = _json(out / "policy" / "policy.json") or _json(out / "shards" / "policy.json")  # the policy's own counts
    if meta and pol:
        executed = ", ".join(
            f"{e['name']} {e.get('n_action_steps', pol['n_action_steps'])}" for e in pol.get("embodiments", [])
        ) or str(pol["n_action_steps"])
        lines += [
            f"Shards: {meta['num_sequences']} sequences of up to {meta['seq_len']} tokens, vocabulary "
            f"{meta['vocab_size']}; cameras {', '.join(pol['cameras'])}, image {pol['image_size']}, history "
            f"{pol['history']}, horizon {pol['horizon']}; actions executed per chunk: {executed}.",
            "",
        ]
    return lines


def _train_section(out: Path) -> list[str]:
    cfg = _json(out / "policy" / "config.json")
    if cfg is None:
        return []
    rows = _read_log(out / "policy" / "log.jsonl")
    lines = ["## Policy training", ""]
    last_val = next((r for r in reversed(rows) if "val/action_acc" in r), None)
    last_train = next((r for r in reversed(rows) if "train/loss" in r), None)
    tr = cfg["train"]
    text = (
        f"`{cfg['preset']}` transformer, {cfg['n_params'] / 1e6:.2f}M parameters, {cfg['step']} steps of "
        f"{tr['batch_size']} sequences, peak lr {tr['lr']}"
    )
    first = _json(out / "policy_demos" / "config.json")
    if tr.get("init") and first is not None:
        rounds: dict[str, dict[str, int]] = {}  # round suffix ("" for the first) -> task -> episodes
        for d in sorted((out / "data").glob("*_corrections*")):
            task, _, end = d.name.partition("_corrections")
            rounds.setdefault(end, {})[task] = len((_json(d / "meta" / "recording.json") or {}).get("episodes", []))
        text += (
            f", going on from `policy_demos/` ({first['step']} steps on the demonstrations alone) in "
            f"{len(rounds)} round(s) of corrections ("
            + "; ".join(
                ", ".join(f"{n} {t}" for t, n in tasks.items()) + " episodes"
                for _, tasks in sorted(rounds.items(), key=lambda kv: int(kv[0] or 1))
            )
            + "): in each the last policy drove, the expert labelled each step and finished, and training went on "
            f"for {tr['steps']} steps on the demonstrations plus every round's corrections so far"
        )
    if last_train:
        text += f"; final train/loss {last_train['train/loss']:.4f}"
    if last_val:
        text += (
            f", val/action_loss {last_val['val/action_loss']:.4f}, val/action_acc "
            f"{last_val['val/action_acc']:.1%} (held-out episodes)"
        )
    lines += [text + ".", ""]
    if _plot_training(rows, out / "plots" / "train_loss.png"):
        lines += ["![training loss](plots/train_loss.png)", ""]
    return lines


def _eval_section(out: Path) -> list[str]:
    rep = _json(out / "eval" / "report.json")
    if rep is None:
        return []
    cfg = rep["config"]
    lines = [
        "## Evaluation on unseen seeds",
        "",
        f"Seeds {cfg['seed_start']}..{cfg['seed_start'] + cfg['episodes'] - 1} ({cfg['episodes']} per env; "
        "demonstrations used seeds from 0). The prompt names the target (cup colour, route); the scene "
        "holds the other candidates too. Success with its 95% Wilson interval "
        "([full report](eval/report.md)).",
        "",
    ]
    rows = []
    for env, by_policy in rep["results"].items():
        for label, res in by_policy.items():
            m = res["overall"]
            extra = (
                f"wrong cup {m['eval/wrong_object_rate']:.0%}"
                if m["eval/wrong_object_rate"] is not None
                else f"route {m['eval/route_completion_mean']:.0%}, collisions {m['eval/collisions_mean']:.2f}, "
                f"off-road {m['eval/off_road_mean']:.2f}"
                if m["eval/route_completion_mean"] is not None
                else ""
            )
            lat = "–" if m["eval/latency_ms_p99"] is None else f"{m['eval/latency_ms_p99']:.2f}"
            rows.append(
                [env, f"`{label}`", str(m["eval/episodes"]), _pct(m), extra, str(m["eval/decode_failures"]), lat]
            )
    lines += _table(
        ["env", "policy", "episodes", "success [95% CI]", "infractions", "decode fails", "ms/action p99"], rows
    )
    sweep = _json(out / "eval" / "sweep" / "report.json")
    if sweep:
        scfg = sweep["config"]
        lines += [
            "### Prompt grounding",
            "",
            f"Each of {scfg['episodes']} seeds run once per candidate target of its scene, the prompt naming "
            "it: a policy that follows the prompt succeeds for every target, one with a favourite fails for "
            "the others ([full report](eval/sweep/report.md)).",
            "",
        ]
        rows = []
        for env, by_policy in sweep["results"].items():
            res = by_policy.get(sweep["policy"])
            if res is None:
                continue
            for target, m in sorted(res["per_target"].items()):
                rows.append([env, target, f"{m['eval/successes']}/{m['eval/episodes']}", _pct(m)])
            rows.append(
                [
                    env,
                    "**all**",
                    f"{res['overall']['eval/successes']}/{res['overall']['eval/episodes']}",
                    _pct(res["overall"]),
                ]
            )
        lines += _table(["env", "prompted target", "successes", "success [95% CI]"], rows)
    media = []
    for env, by_policy in rep["results"].items():
        for label, res in by_policy.items():
            if res.get("still"):
                media.append(f"![{label} on {env}](eval/{res['still']})")
            if res.get("videos"):
                media.append(
                    f"Videos of `{label}` on {env}: " + ", ".join(f"[{Path(v).stem}](eval/{v})" for v in res["videos"])
                )
    if media:
        lines += ["### Videos", ""] + [x for m in media for x in (m, "")]
    return lines


def write_pipeline_report(out: Path, log: dict[str, Any]) -> Path:
    """Write ``<out>/report.md`` from the stage outputs and the pipeline log; returns its path."""
    s = log.get("settings", {})
    lines = [
        f"# robotok demo: preset `{log.get('preset')}`"
        + (f" with {', '.join(f'`{o}`' for o in log['overrides'])}" if log.get("overrides") else ""),
        "",
        f"Written {datetime.now(UTC).isoformat(timespec='seconds')} by robotok-pipeline. One `{s.get('model')}` "
        "transformer, prompted in plain language, reads video tokens and state and emits action tokens for "
        "both tasks.",
        "",
        "## Stages",
        "",
    ]
    lines += _table(["stage", "wall time", "status", "command"], _stage_rows(log))
    for section in (_data_section, _tokenizer_section, _train_section, _eval_section):
        lines += section(out)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
