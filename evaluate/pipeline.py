"""robotok-pipeline: the whole demo end to end, on embedded defaults (what ``make demo`` runs).

    robotok-pipeline                                   # the cpu preset into runs/demo
    robotok-pipeline --preset gpu --out runs/gpu       # a CUDA node: more data, a bigger model
    robotok-pipeline --preset smoke --out /tmp/smoke   # a few minutes; what CI runs
    robotok-pipeline --stages train eval report --force
    robotok-pipeline --out runs/wrist --overrides cameras=front,wrist goal=true   # preset fields changed

Each stage runs the command a user would type (printed before it runs) and writes into a fixed layout:

=============  ==============================================  =================================
stage          command                                         output (the file that marks it done)
=============  ==============================================  =================================
record         robotok-record (once per task),                 data/<task>/ (meta/info.json),
               robotok-record-scenes (PickCup, per camera)     scenes/<task>[_<camera>].npz
fit            robotok-fit-tokenizers                          tokenizers/action/ (report.json)
video          robotok-train-video-tokenizer                   tokenizers/video/ (eval.json)
pretokenize    robotok-pretokenize                             shards/ (meta.json)
train          robotok-train                                   policy/ (config.json at the last step),
                                                               policy_demos/ when the preset corrects
correct        robotok-record-corrections (per task),          data/<task>_corrections/ (meta/info.json),
               robotok-pretokenize (demos+corrections),        shards_corrections/ (meta.json),
               robotok-train --init policy_demos/              policy/ (config.json at the last step)
eval           robotok-eval (policy, --prompt-sweep, expert)   eval/, eval/sweep/, eval/expert/
report         (this module)                                   report.md, pipeline.json, plots/
=============  ==============================================  =================================

A stage is skipped when its output is complete and newer than the outputs it reads (make's rule), so a
second run is a no-op and ``--force`` on an early stage redoes everything after it; an interrupted
``train`` resumes from its last checkpoint. Wall time per stage goes to ``pipeline.json`` and the report.

Presets (``robotok.evaluate.presets.PRESETS``, plain data, with how the cpu one was sized): ``cpu`` is sized for a
2-core laptop CPU (about 45 minutes is the target; the last measured whole took 80), ``gpu`` for one CUDA GPU with 16
CPU cores, ``smoke`` runs every stage on a handful of episodes and steps to check the wiring (its policy is not
expected to succeed).

On a shared machine set OMP_NUM_THREADS=1: with more threads than free cores every step waits on
a descheduled thread (8x slower, measured).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from robotok.evaluate.presets import EVAL_SEED_START, PRESETS, TASKS, Preset, with_overrides

PROG = "robotok-pipeline"
STAGES = ("record", "fit", "video", "pretokenize", "train", "correct", "eval", "report")
CORRECTION_SEED_START = 50_000  # corrections: scenes the demonstrations (seeds from 0) and evaluation do not use
CLI_MODULES = {
    "robotok-record": "robotok.sim_envs.record",
    "robotok-record-scenes": "robotok.sim_envs.scenes",
    "robotok-record-corrections": "robotok.evaluate.corrections",
    "robotok-fit-tokenizers": "robotok.tokenizers.fit",
    "robotok-train-video-tokenizer": "robotok.tokenizers.train_video",
    "robotok-pretokenize": "robotok.policy.pretokenize",
    "robotok-train": "robotok.policy.train",
    "robotok-eval": "robotok.evaluate.cli",
}


@dataclass
class PipelineConfig:
    """robotok-pipeline: record, tokenise, train and evaluate the demo end to end."""

    out: Path = Path("runs/demo")
    """Run directory; every stage writes a fixed sub-folder of it (see the module docstring)."""
    preset: Literal["cpu", "gpu", "smoke"] = "cpu"
    """cpu: a 2-core CPU in about an hour; gpu: one CUDA GPU, more data and a bigger model; smoke: a wiring check."""
    stages: tuple[Literal["record", "fit", "video", "pretokenize", "train", "correct", "eval", "report"], ...] = STAGES
    """Stages to consider (in pipeline order); each still skips when its output is complete."""
    force: bool = False
    """Redo the selected stages even when their outputs are complete (later stages then redo too)."""
    dry_run: bool = False
    """Print the commands without running them."""
    overrides: tuple[str, ...] = ()
    """Preset fields to change, as field=value (robotok.evaluate.presets.Preset), e.g. cameras=front,wrist
    goal=true train_steps=3000; a run directory made with other settings needs --force or another --out."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ValueError(f"stages {list(self.stages)}: unknown {bad}; choose from {list(STAGES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        self.settings()  # a bad override fails here, before anything runs

    def settings(self) -> Preset:
        """The preset with ``overrides`` applied: every choice this run makes."""
        return with_overrides(PRESETS[self.preset], self.overrides)


# ---- commands ---------------------------------------------------------------------------------------------


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
        if not corrected_tasks(p):
            return []
        first, grouped = str(train_dir(out, p)), []
        for t in TASKS:
            grouped.append(f"{d[t]}+{out / 'data' / f'{t}_corrections'}" if t in corrected_tasks(p) else d[t])
        return [
            [
                "robotok-record-corrections",
                "--env",
                TASKS[t],
                "--episodes",
                str(p.corrections[t]),
                "--out",
                str(out / "data" / f"{t}_corrections"),
                "--workers",
                str(p.record_workers),
                "--noise",
                str(p.noise),
                "--seed-start",
                str(CORRECTION_SEED_START),
                *size,
                "--policy",
                first,
                "--handover",
                str(p.handover[t]),
            ]
            for t in corrected_tasks(p)
        ] + [
            _pretokenize(out, p, grouped, str(out / "shards_corrections")),
            [
                *_train(
                    p, str(out / "shards_corrections"), pol, p.correction_steps, p.correction_lr, p.correction_warmup
                ),
                "--init",
                first,
            ],
        ]
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
        "correct": [out / "data" / f"{t}_corrections" / "meta" / "info.json" for t in corrected_tasks(p)]
        + ([out / "shards_corrections" / "meta.json", out / "policy" / "config.json"] if corrected_tasks(p) else []),
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
        "correct": [out / "data" / f"{t}_corrections" for t in corrected_tasks(p)]
        + ([out / "shards_corrections", out / "policy"] if corrected_tasks(p) else []),
        "eval": [out / "eval"],
        "report": [],
    }[stage]


def _mtime(paths: list[Path]) -> float | None:
    """Oldest modification time of the paths, None when one is missing."""
    return min(p.stat().st_mtime for p in paths) if all(p.is_file() for p in paths) else None


def train_step_done(policy: Path) -> int:
    """The step of the checkpoint in the folder ``policy`` (0 when there is none)."""
    path = policy / "config.json"
    return int(json.loads(path.read_text()).get("step", 0)) if path.is_file() else 0


def stage_state(stage: str, out: Path, p: Preset) -> str:
    """``done``, ``resume`` (train only: an unfinished checkpoint) or ``todo``."""
    if not done_files(stage, out, p):
        return "done"  # nothing to make (a preset without corrections)
    own = _mtime(done_files(stage, out, p))
    i = STAGES.index(stage)
    inputs = [f for s in STAGES[:i] if s != "report" for f in done_files(s, out, p)]
    newest_input = max((f.stat().st_mtime for f in inputs if f.is_file()), default=0.0)
    if stage == "report":
        return "todo"  # cheap, and it should reflect the latest outputs
    if stage == "train" and own is not None and own >= newest_input:
        if train_step_done(train_dir(out, p)) >= p.train_steps:
            return "done"
        return "resume" if (train_dir(out, p) / "train_state.pt").is_file() else "todo"
    if stage == "correct" and train_step_done(out / "policy") < p.correction_steps:
        return "todo"
    return "done" if own is not None and own >= newest_input else "todo"


def resolve(argv: list[str]) -> list[str]:
    """The console script next to this Python (a venv's bin/) when installed, else ``python -m module``."""
    exe = shutil.which(argv[0], path=str(Path(sys.executable).parent))
    return [exe, *argv[1:]] if exe else [sys.executable, "-m", CLI_MODULES[argv[0]], *argv[1:]]


def run_command(argv: list[str], dry_run: bool = False) -> None:
    """Print and run one command; a failure stops the pipeline with a one-line error."""
    full = resolve(argv)
    print(f"$ {shlex.join(argv)}", flush=True)
    if dry_run:
        return
    rc = subprocess.run(full, check=False).returncode
    if rc != 0:
        raise SystemExit(
            f"{PROG}: error: `{shlex.join(argv)}` failed with exit code {rc} (its output is above); "
            "fix the cause and rerun: finished stages are skipped"
        )


# ---- the pipeline -----------------------------------------------------------------------------------------


def _load_log(out: Path) -> dict:
    path = out / "pipeline.json"
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}


def _save_log(out: Path, log: dict) -> None:
    tmp = out / ".pipeline.json.tmp"
    tmp.write_text(json.dumps(log, indent=2))
    os.replace(tmp, out / "pipeline.json")


def run(cfg: PipelineConfig) -> dict:
    """Run the selected stages in order; returns the pipeline log (also written to ``<out>/pipeline.json``)."""
    from robotok.evaluate.pipeline_report import write_pipeline_report

    p, out = cfg.settings(), cfg.out
    out.mkdir(parents=True, exist_ok=True)
    log = _load_log(out)
    if log.get("preset") not in (None, cfg.preset) and not cfg.force:
        raise SystemExit(
            f"{PROG}: error: {out} holds a run of preset {log['preset']!r}, not {cfg.preset!r}; "
            "choose another --out, or pass --force to redo it"
        )
    settings = json.loads(json.dumps(asdict(p)))  # as pipeline.json stores them (tuples become lists)
    changed = sorted(k for k, v in log.get("settings", {}).items() if settings.get(k, v) != v)
    if changed and not cfg.force:  # stages skip by the age of their outputs, not by what made them
        raise SystemExit(
            f"{PROG}: error: {out} was made with other settings ("
            + ", ".join(f"{k}: {log['settings'][k]} there, {settings[k]} now" for k in changed)
            + "); choose another --out, or pass --force to redo it"
        )
    log.update({"preset": cfg.preset, "overrides": list(cfg.overrides), "settings": settings})
    t_start = time.perf_counter()
    selected = [s for s in STAGES if s in cfg.stages]
    forced = set(selected) if cfg.force else set()
    for k, stage in enumerate(selected, 1):
        state = "todo" if stage in forced else stage_state(stage, out, p)
        head = f"[{k}/{len(selected)}] {stage}"
        if state == "done" and not done_files(stage, out, p):
            print(f"{head}: nothing to do (the preset has no {stage} stage)", flush=True)
            continue
        if state == "done":
            print(f"{head}: done already ({', '.join(str(f) for f in done_files(stage, out, p))}); skipped", flush=True)
            log["stages"].setdefault(stage, {})["skipped"] = True
            continue
        print(f"{head}: {'resuming' if state == 'resume' else 'running'}", flush=True)
        t0 = time.perf_counter()
        cmds, dirs = commands(stage, out, p), output_dirs(stage, out, p)
        if stage in ("record", "correct") and stage not in forced:  # keep a task's finished recording
            done = [f.is_file() for f in done_files(stage, out, p)]
            if stage == "correct":  # an unfinished --init run starts again; what follows a redone step redoes
                done[-1] = train_step_done(out / "policy") >= p.correction_steps
                n = len(corrected_tasks(p))
                done = [x if i < n else x and all(done[:i]) for i, x in enumerate(done)]
            todo = [i for i, x in enumerate(done) if not x] or list(range(len(cmds)))
            cmds, dirs = [cmds[i] for i in todo], [dirs[i] for i in todo]
        if state == "resume":
            cmds = [[*cmds[0], "--resume"]]
        elif not cfg.dry_run:
            for d in dirs:
                if d.is_dir():
                    shutil.rmtree(d)
                elif d.exists():
                    d.unlink()
            forced |= {s for s in STAGES[STAGES.index(stage) + 1 :]}  # everything after it redoes
        for argv in cmds:
            run_command(argv, cfg.dry_run)
        wall = time.perf_counter() - t0
        log["stages"][stage] = {
            "commands": [shlex.join(c) for c in cmds],
            "wall_s": round(wall, 1),
            "skipped": False,
            "resumed": state == "resume",
        }
        if stage == "report" and not cfg.dry_run:
            write_pipeline_report(out, log)
        if not cfg.dry_run:
            _save_log(out, log)
        print(f"{head}: finished in {wall:.1f} s (pipeline {time.perf_counter() - t_start:.1f} s)", flush=True)
    if not cfg.dry_run:
        _save_log(out, log)
        if "report" in selected:
            write_pipeline_report(out, log)  # again, so that its own wall time is in it
    return log


def main() -> None:
    import tyro

    cfg = tyro.cli(PipelineConfig)
    log = run(cfg)
    total = sum(s.get("wall_s", 0.0) for s in log["stages"].values())
    print(f"{PROG}: {cfg.out / 'report.md'} written; stage wall times add up to {total / 60:.1f} min")


if __name__ == "__main__":
    main()
