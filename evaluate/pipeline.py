"""robotok-pipeline: the whole demo end to end, on embedded defaults (what ``make demo`` runs).

    robotok-pipeline                                   # the cpu preset into runs/demo
    robotok-pipeline --preset gpu --out runs/gpu       # a CUDA node: more data, a bigger model
    robotok-pipeline --preset smoke --out /tmp/smoke   # a few minutes; what CI runs
    robotok-pipeline --stages train eval report --force
    robotok-pipeline --out runs/wrist --overrides cameras=front,wrist goal=true   # preset fields changed

Each stage runs the command a user would type (printed before it runs) and writes into a fixed layout
(``robotok.evaluate.pipeline_commands`` makes both):

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
correct        per round: robotok-record-corrections           data/<task>_corrections[<r>]/ (meta/info.json),
               (per task), robotok-pretokenize (demos +        shards_corrections[<r>]/ (meta.json),
               corrections so far), robotok-train --init       policy_corrections[<r>]/, the last round policy/
               (the previous round's policy or policy_demos/)  (config.json at the last step)
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

from robotok.evaluate.pipeline_commands import (
    STAGES,
    commands,
    corrected_tasks,
    correction_rounds,
    done_files,
    output_dirs,
    train_dir,
)
from robotok.evaluate.presets import PRESETS, Preset, with_overrides

PROG = "robotok-pipeline"
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
    if stage == "correct" and any(train_step_done(r.policy) < p.correction_steps for r in correction_rounds(out, p)):
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
                n = len(corrected_tasks(p))  # each round: n recordings, pretokenize, train
                for k, rnd in enumerate(correction_rounds(out, p)):
                    done[(k + 1) * (n + 2) - 1] = train_step_done(rnd.policy) >= p.correction_steps
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
