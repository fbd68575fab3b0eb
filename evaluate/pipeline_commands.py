"""The demo's stages as command lines, and the files each stage owns (``robotok-pipeline``'s layout).

Plain functions of the run directory and the preset: ``commands(stage, out, preset)`` gives the commands a user
would type, ``done_files`` the files that mark a stage complete, ``output_dirs`` what it replaces when it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from robotok.evaluate.presets import EVAL_SEED_START, TASKS, Preset

STAGES = ("record", "fit", "video", "pretokenize", "train", "correct", "eval", "report")
CORRECTION_SEED_START = 50_000  # corrections: scenes the demonstrations (seeds from 0) and evaluation do not use
CORRECTION_ROUND_SEEDS = 10_000  # round r records from CORRECTION_SEED_START + (r - 1) * this


@dataclass(frozen=True)
class CorrectionRound:
    """One round of the correct stage: corrections of ``init``'s policy, the shards of the demonstrations plus
    every round's corrections so far, and ``policy``, trained on them from ``init``."""

    index: int  # 1-based
    init: Path
    data: dict[str, Path]  # corrected task -> this round's recording
    shards: Path
    policy: Path
    seed_start: int


def correction_rounds(out: Path, p: Preset) -> list[CorrectionRound]:
    """The rounds of the correct stage (none without ``Preset.corrections``). Round 1 writes
    ``data/<task>_corrections/`` and ``shards_corrections/``, round r > 1 the same names ending in r; every round
    but the last trains ``policy_corrections[r]/``, the last ``policy/``."""
    if not corrected_tasks(p):
        return []
    rounds: list[CorrectionRound] = []
    init = train_dir(out, p)
    for r in range(1, p.correction_rounds + 1):
        end = "" if r == 1 else str(r)
        policy = out / ("policy" if r == p.correction_rounds else f"policy_corrections{end}")
        data = {t: out / "data" / f"{t}_corrections{end}" for t in corrected_tasks(p)}
        seeds = CORRECTION_SEED_START + (r - 1) * CORRECTION_ROUND_SEEDS
        rounds.append(CorrectionRound(r, init, data, out / f"shards_corrections{end}", policy, seeds))
        init = policy
    return rounds


def commands(stage: str, out: Path, p: Preset) -> list[list[str]]:
    """The command lines of one stage (console-script name first), exactly as a user would type them."""
    d = {t: str(out / "data" / t) for t in TASKS}
    act, vid, shards, pol = (str(out / x) for x in ("tokenizers/action", "tokenizers/video", "shards", "policy"))
    size = ["--width", str(p.image_size), "--height", str(p.image_size)]
    if stage == "record":
        return [
            [
                "robotok-record",
                "--env",
                env,
                "--episodes",
                str(p.episodes[t]),
                "--out",
                d[t],
                "--workers",
                str(p.record_workers),
                "--noise",
                str(p.noise),
                "--label",
                p.label,
                "--seed-start",
                "0",
                *size,
            ]
            for t, env in TASKS.items()
        ] + [
            [
                "robotok-record-scenes",
                "--env",
                TASKS[t],
                "--scenes",
                str(p.scenes[t]),
                "--out",
                str(path),
                "--rollout",
                str(p.scene_rollout),
                "--workers",
                str(p.record_workers),
                "--noise",
                str(p.noise),
                *size,
                # a camera on the gripper sees the cup it reaches for: reach for any cup, not only the named one
                *(["--camera", cam, "--rollout-any-cup"] if cam != "front" else []),
            ]
            for t, cam, path in scene_files(out, p)
        ]
    if stage == "fit":
        return [
            [
                "robotok-fit-tokenizers",
                "--dataset",
                *d.values(),
                "--horizon",
                str(p.horizon),
                "--out",
                act,
                "--kinds",
                p.action_kind,
                "--control-points",
                str(p.control_points),
            ]
        ]
    if stage == "video":
        return [
            [
                "robotok-train-video-tokenizer",
                "--dataset",
                *d.values(),
                "--out",
                vid,
                "--cameras",
                *p.cameras,
                "--steps",
                str(p.video_steps),
                "--batch-size",
                str(p.video_batch),
                "--downsample",
                str(p.video_downsample),
                "--channels",
                *map(str, p.video_channels),
                "--device",
                p.device,
            ]
        ]
    if stage == "pretokenize":
        return [_pretokenize(out, p, list(d.values()), shards)]
    if stage == "train":
        return [_train(p, shards, str(train_dir(out, p)), p.train_steps, p.lr, p.warmup)]
    if stage == "correct":
        cmds: list[list[str]] = []
        rounds = correction_rounds(out, p)
        for k, rnd in enumerate(rounds):
            cmds += [
                [
                    "robotok-record-corrections",
                    "--env",
                    TASKS[t],
                    "--episodes",
                    str(p.corrections[t]),
                    "--out",
                    str(path),
                    "--workers",
                    str(p.record_workers),
                    "--noise",
                    str(p.noise),
                    "--seed-start",
                    str(rnd.seed_start),
                    *size,
                    "--policy",
                    str(rnd.init),
                    "--handover",
                    str(p.handover[t]),
                ]
                for t, path in rnd.data.items()
            ]
            grouped = ["+".join([d[t], *(str(q.data[t]) for q in rounds[: k + 1] if t in q.data)]) for t in TASKS]
            cmds += [
                _pretokenize(out, p, grouped, str(rnd.shards)),
                [
                    *_train(
                        p, str(rnd.shards), str(rnd.policy), p.correction_steps, p.correction_lr, p.correction_warmup
                    ),
                    "--init",
                    str(rnd.init),
                ],
            ]
        return cmds
    if stage == "eval":
        envs = [a for env in TASKS.values() for a in ("--env", env)]
        common = [
            *envs,
            "--policy",
            pol,
            "--seed-start",
            str(EVAL_SEED_START),
            "--workers",
            str(p.eval_workers),
            "--device",
            p.device,
        ]
        if p.image_size != 64:
            common += ["--env-kwargs", json.dumps({"width": p.image_size, "height": p.image_size})]
        return [
            [
                "robotok-eval",
                *common,
                "--episodes",
                str(p.eval_episodes),
                "--compare",
                "expert,random",
                "--videos",
                str(p.videos),
                "--out",
                str(out / "eval"),
            ],
            [
                "robotok-eval",
                *common,
                "--episodes",
                str(p.sweep_episodes),
                "--prompt-sweep",
                "--videos",
                "0",
                "--out",
                str(out / "eval" / "sweep"),
            ],
            # Videos of the scripted expert solving each task, next to the policy's.
            [
                "robotok-eval",
                *envs,
                "--policy",
                "expert",
                "--seed-start",
                str(EVAL_SEED_START),
                "--workers",
                "1",
                "--episodes",
                str(max(p.videos, 1)),
                "--videos",
                str(max(p.videos, 1)),
                "--out",
                str(out / "eval" / "expert"),
            ],
        ]
    return []  # report: written by this module


def corrected_tasks(p: Preset) -> list[str]:
    """Tasks whose policy the ``correct`` stage corrects (``Preset.corrections``), in ``TASKS`` order."""
    return [t for t in TASKS if p.corrections.get(t, 0) > 0]


def train_dir(out: Path, p: Preset) -> Path:
    """Where the train stage writes its checkpoint: ``policy/``, or ``policy_demos/`` when the correct stage goes
    on from it (``policy/`` is always the final checkpoint)."""
    return out / ("policy_demos" if corrected_tasks(p) else "policy")


def _pretokenize(out: Path, p: Preset, datasets: list[str], shards: str) -> list[str]:
    """robotok-pretokenize of ``datasets`` (one per task, ``A+B`` groups allowed) into ``shards``."""
    act, vid = str(out / "tokenizers/action"), str(out / "tokenizers/video")
    return [
        "robotok-pretokenize",
        "--dataset",
        *datasets,
        "--action-tokenizer",
        *(f"{act}/{t}/{p.action_kind}" for t in TASKS),
        "--video-tokenizer",
        vid,
        "--out",
        shards,
        "--code-cache",  # each correction round then encodes only its own episodes' frames
        str(out / "cache/video_codes"),
        "--cameras",
        *p.cameras,
        "--horizon",
        str(p.horizon),
        "--n-action-steps",
        str(p.n_action_steps),
        "--history",
        str(p.history),
        "--stride",
        *(str(p.stride.get(t, 1)) for t in TASKS),
        *(["--frame-loss"] if p.frame_loss_weight > 0 else []),
        *(["--goal"] if p.goal else []),
        *(["--scenes", *(str(f) for _, _, f in scene_files(out, p))] if scene_tasks(p) else []),
    ]


def _train(p: Preset, shards: str, pol: str, steps: int, lr: float, warmup: int) -> list[str]:
    """robotok-train of the preset's model on ``shards`` into ``pol``."""
    return [
        "robotok-train",
        "--data",
        shards,
        "--out",
        pol,
        "--preset",
        p.model,
        "--steps",
        str(steps),
        "--batch-size",
        str(p.train_batch),
        "--lr",
        str(lr),
        "--warmup-steps",
        str(warmup),
        "--frame-loss-weight",
        str(p.frame_loss_weight),
        "--video-stem",
        str(p.video_stem),
        "--prompt-film",
        str(p.prompt_film),
        "--ground-weight",
        str(p.ground_weight if scene_tasks(p) else 0.0),
        *(["--keypoint"] if p.keypoint and scene_tasks(p) else []),
        *(["--keypoint-effector"] if p.keypoint and p.keypoint_effector and scene_tasks(p) else []),
        *(
            ["--keypoint-cameras", str(len(p.scene_cameras))]
            if p.keypoint and scene_tasks(p) and len(p.scene_cameras) > 1
            else []
        ),
        *(["--prompt-context"] if p.prompt_context else []),
        *(["--ema", str(p.ema)] if p.ema else []),
        *(["--length-buckets", str(p.length_buckets)] if p.length_buckets > 1 else []),
        *(["--n-action-steps", *(str(p.execute_steps[t]) for t in TASKS)] if p.execute_steps else []),
        "--device",
        p.device,
    ]


def scene_tasks(p: Preset) -> list[str]:
    """Tasks that record scenes for the pointing loss (``Preset.scenes``; none when the loss is off)."""
    return [t for t in TASKS if p.scenes.get(t, 0) > 0] if p.ground_weight > 0 else []


def scene_files(out: Path, p: Preset) -> list[tuple[str, str, Path]]:
    """(task, camera, file) of each scene file the record stage writes: ``scenes/<task>.npz`` for the first of
    ``Preset.scene_cameras`` (the policy's first cameras, in its order: ``Preset`` checks it),
    ``scenes/<task>_<camera>.npz`` for the others."""
    return [
        (t, cam, out / "scenes" / (f"{t}.npz" if i == 0 else f"{t}_{cam}.npz"))
        for t in scene_tasks(p)
        for i, cam in enumerate(p.scene_cameras)
    ]


def done_files(stage: str, out: Path, p: Preset) -> list[Path]:
    """The files whose presence marks a stage complete (each written last, or atomically with its folder), in
    the order of the stage's commands."""
    return {
        "record": [out / "data" / t / "meta" / "info.json" for t in TASKS] + [f for _, _, f in scene_files(out, p)],
        "fit": [out / "tokenizers" / "action" / "report.json"],
        "video": [out / "tokenizers" / "video" / "eval.json"],
        "pretokenize": [out / "shards" / "meta.json"],
        "train": [train_dir(out, p) / "config.json"],
        "correct": [
            f
            for rnd in correction_rounds(out, p)
            for f in [*(d / "meta" / "info.json" for d in rnd.data.values()), rnd.shards / "meta.json"]
            + [rnd.policy / "config.json"]
        ],
        "eval": [
            out / "eval" / "report.json",
            out / "eval" / "sweep" / "report.json",
            out / "eval" / "expert" / "report.json",
        ],
        "report": [out / "report.md"],
    }[stage]


def output_dirs(stage: str, out: Path, p: Preset) -> list[Path]:
    """What a stage owns and replaces when it runs (folders, and the scene files), in its commands' order."""
    return {
        "record": [out / "data" / t for t in TASKS] + [f for _, _, f in scene_files(out, p)],
        "fit": [out / "tokenizers" / "action"],
        "video": [out / "tokenizers" / "video"],
        "pretokenize": [out / "shards"],
        "train": [train_dir(out, p)],
        "correct": [d for rnd in correction_rounds(out, p) for d in [*rnd.data.values(), rnd.shards, rnd.policy]],
        "eval": [out / "eval"],
        "report": [],
    }[stage]
