"""The demo's presets: every choice of ``robotok-pipeline`` in one place, as plain data.

``cpu`` is sized for a 2-core laptop CPU (the target is about 45 minutes; the last whole run measured, before the
corrections, took 80), ``gpu`` for one CUDA GPU with 16 CPU cores, ``smoke`` runs every stage on a handful of episodes
and steps (what CI runs; its policy is not expected to succeed). The other presets differ from the cpu one only
where written.

Sizing the cpu preset (measured on 2 cores of an AMD EPYC with AVX512-BF16, fresh clone, nothing else running): the
preset before the prompt context and goal took 62 min 55 s with set-up (record with the front and wrist scenes 132
s, video 287 s, pretokenize 135 s, train 2,754 s at 1.10 s per step, eval 404 s; the current one 67 min 16 s
(record 136 s, video 249 s, pretokenize 91 s, train 2,820 s at 1.13 s per step, eval 680 s);
the one before the wrist keypoints and per-robot replanning 59 min 49 s (record 106 s, video 263 s, pretokenize 111
s, train 2,592 s at 1.04 s per step, eval 435 s); the preset before the keypoints and the wrist took 42 min 27 s
with set-up (record with the 5,000 scenes 54 s, video 218 s, pretokenize 72 s, train 1,647 s at 0.66 s per step,
eval 490 s); an earlier preset, the same model without the prompt FiLM and 2,500 steps as well, took 54 min 40 s
with set-up (record 58 s, video 306 s, pretokenize 77 s, train 2,367 s at 0.95 s per step of 32 sequences of up to
225 tokens in bf16, eval 412 s); the previous measured run, before the next state joined the world-model targets,
trained at 0.79 s per step and took 47 min 43 s. The Intel CPU with AMX on which the preset was first sized trained
about 2x faster (3,500 steps in 1,490 s, the whole demo 33 min 28 s); there 3,500 steps with the next-frame loss
reached Drive 84%, here 2,500 reach 70%. Training computes the output head only at the positions that carry a loss,
which took 3,500 steps from 35.4 to 24.8 minutes. PickCup records 500 episodes to Drive's 200 because its episodes
are 2.7x shorter: both tasks then give about the same number of training sequences (with 200 each, PickCup had 27%
of them). The video tokenizer weights pixels away from the frame's dominant colour (``--object-weight``, on by
default): without it the 1,000-step tokenizer of the first demo drew no cups at all. The policy trains with the
next-frame (world-model) loss at weight 0.5: with the same data, tokenizers and steps, Drive success on 100 unseen
seeds rose from 62% [52.2, 70.9] without it to 84% [76, 90] with it. The prompt-conditioned stem learns which cup is
named from a pointing loss on 5,000 fresh scenes (``scenes``, ``ground_weight``; docs/demo_log.md),
each shown after 0 to 45 steps of the noisy expert (``scene_rollout``), and the policy is handed the places its
read-outs point at, the named cup's and the gripper's (``keypoint``, ``keypoint_effector``): PickCup 22% against
1-7% without the second or both, Drive 53% against 65-68% (one run each, README). With the wrist camera added to
PickCup's context PickCup rose to 39% and Drive to 68% on the same demonstrations, for 64 more ids per PickCup frame
(observed and predicted): 2,592 s of training against 2,060, with batches drawn by length (``length_buckets``) so
that a PickCup row does not pad Drive's. The same checkpoint executing 2 actions per chunk instead of 5 lifts the
cup in 50% of the 100 unseen seeds, Drive falls to 55%: each robot now executes its own count (``execute_steps``).
Pointing scenes from the wrist camera too and the place read in the wrist view handed to the policy
(``scene_cameras``) took PickCup to 82% on the same demonstrations; Drive was at 56% in that run. Traced, Drive's
failures ignored the route (through the intersection at cruising speed for a turn, late braking for the stop): with
the prompt's encoding added to every position (``prompt_context``) Drive reached 66% and PickCup 78% on the same
shards, and with the goal state predicted before each chunk as well (``goal``) PickCup 85% and Drive 66%, for about
50 ms more per chunk at inference and 2,893 s of training against 2,633 s (docs/demo_log.md, "Which choices mattered").
The policy trains 1,500 steps on the demonstrations and is then corrected (``corrections``, the pipeline's correct
stage): in 250 PickCup and 100 Drive episodes it drives first and the expert labels every step and finishes, and
training goes on from it for 500 steps on demonstrations plus corrections. Against 500 more steps on the
demonstrations alone, on the same 100 unseen seeds (an AVX2-only machine, fp32): PickCup 74% against 57%, Drive 74%
against 82% (docs/demo_log.md). A second round (``correction_rounds``: 250 + 100 corrections of that
corrected policy, 500 more steps on the demonstrations plus both rounds) took PickCup to 84% and Drive to 79%, and
a third PickCup to 89% and Drive to 90% (from a round-2 run at 79% and 84%). 250 steps per round instead of 500
(``correction_steps``) reached PickCup 89% and Drive 81%, Drive 3 seeds against 12 on the same seeds (p = 0.035)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, replace
from typing import Any, Literal

TASKS = {"pickcup": "robotok/PickCup-v0", "drive": "robotok/Drive-v0"}  # data/<task>/ <- env id
EVAL_SEED_START = 100_000  # demonstrations use seeds from 0: evaluation scenes are unseen


@dataclass(frozen=True)
class Preset:
    """Every choice of the demo in one place; see the module docstring of each command for its meaning."""

    episodes: dict[str, int]  # demonstrations per task (TASKS key): a PickCup episode is ~46 steps, a Drive one ~125
    stride: dict[str, int]  # per task: one training sequence every N steps of an episode (robotok-pretokenize)
    noise: float  # expert noise: perturbations the expert recovers from, so the data shows recoveries
    record_workers: int
    image_size: int  # square camera images
    horizon: int  # action chunk length H
    n_action_steps: int  # steps from a context frame to the next-frame target (and the default executed count)
    action_kind: Literal["binning", "bspline", "dct_bpe"]
    control_points: int  # B-spline control points per action dimension
    cameras: tuple[str, ...]  # cameras tokenised into the policy's context (each task uses those it has)
    history: int  # observed steps in the context
    video_downsample: int  # 8: 64x64 -> 8x8 tokens, 16: 4x4
    video_channels: tuple[int, ...]
    video_steps: int
    video_batch: int
    model: str  # robotok.policy.model.PRESETS
    train_steps: int
    train_batch: int
    lr: float
    warmup: int
    frame_loss_weight: float  # next-frame (world-model) loss; > 0 also pre-tokenises the next frames
    goal: bool  # predict the episode's final state before each chunk (robotok-pretokenize --goal)
    eval_episodes: int  # per env, on unseen seeds
    sweep_episodes: int  # seeds of the prompt-grounding sweep, per env (each run once per candidate target)
    eval_workers: int
    videos: int
    video_stem: int = 64  # channels of the policy's convolution stem over observed frames (0: none)
    prompt_film: int = 64  # width of the prompt encoder that conditions that stem (FiLM; 0: none)
    # per task: fresh first frames with the prompted object's pixel (robotok-record-scenes), for the pointing
    # loss of robotok-train (--ground-weight); tasks whose prompt names no object get 0
    scenes: dict[str, int] = field(default_factory=lambda: {"pickcup": 5000, "drive": 0})
    ground_weight: float = 1.0  # weight of that loss (0: off; > 0 needs prompt_film)
    scene_rollout: int = 45  # a scene's frame follows 0..N steps of the noisy expert (the arm in view; 0: first)
    # cameras of those scenes, one file each, the first cameras of ``cameras`` in order: the read-outs learn to
    # point in each, and with ``keypoint`` the policy is handed the places read in each (robotok-train
    # --keypoint-cameras): ("front", "wrist") hands over where the named cup is in the wrist view as well
    scene_cameras: tuple[str, ...] = ("front",)
    keypoint: bool = True  # hand the policy the pointed place (robotok-train --keypoint; needs the scenes)
    keypoint_effector: bool = True  # and the effector's place (robotok-train --keypoint-effector)
    # group this many batches by sequence length (robotok-train --length-buckets): with a wrist camera a PickCup
    # sequence is ~1.7x a Drive one, and a mixed batch pads every row to the longest
    length_buckets: int = 1
    # per task: actions the trained policy executes per chunk before it predicts the next (robotok-train
    # --n-action-steps; empty: n_action_steps for all). PickCup corrects its reach more often at 2; Drive does
    # better at 5 (docs/demo_log.md, "Which choices mattered")
    execute_steps: dict[str, int] = field(default_factory=dict)
    # the prompt encoder's output added to every position (robotok-train --prompt-context; needs prompt_film)
    prompt_context: bool = False
    # what a demonstration step's action holds under ``noise`` (robotok-record --label): the expert's intended
    # command (the perturbation moves the robot, the label never copies it) or the perturbed one it executed
    label: Literal["intended", "executed"] = "intended"
    # decay of the weight average that the checkpoint holds (robotok-train --ema; 0: the last weights)
    ema: float = 0.0
    # per task: episodes of corrections (robotok-record-corrections, the ``correct`` stage). The policy trained on the
    # demonstrations for train_steps drives the first 1..handover[task] steps of each, the expert labels every
    # step and finishes; then training goes on from that policy for correction_steps on the demonstrations plus
    # the corrections (robotok-train --init). Empty: no correct stage, the train stage's policy is final.
    corrections: dict[str, int] = field(default_factory=dict)
    # rounds of that (DAgger): round r records the corrections of round r-1's policy (in scenes of its own) and goes
    # on from it on the demonstrations plus every round's corrections so far
    correction_rounds: int = 1
    handover: dict[str, int] = field(default_factory=lambda: {"pickcup": 80, "drive": 300})
    correction_steps: int = 500
    correction_lr: float = 3e-4
    correction_warmup: int = 30
    device: str = "cpu"

    def __post_init__(self) -> None:
        if tuple(self.cameras[: len(self.scene_cameras)]) != tuple(self.scene_cameras):
            raise ValueError(
                f"scene_cameras {self.scene_cameras} must be the first of cameras {self.cameras}, in that order: the "
                "keypoints read each frame's cameras from the first (override both, e.g. cameras=front "
                "scene_cameras=front)"
            )
        if self.correction_rounds < 1:
            raise ValueError(f"correction_rounds {self.correction_rounds}: at least 1 (corrections={{}}: none)")
        if any(n > 0 and self.handover.get(t, 0) < 1 for t, n in self.corrections.items()):
            raise ValueError(
                f"corrections {self.corrections}: give each corrected task a handover >= 1 (handover {self.handover})"
            )
        if self.prompt_context and not self.prompt_film:
            raise ValueError(
                "prompt_context adds the prompt encoder's output: set prompt_film too, or prompt_context=false"
            )


_CPU = Preset(
    episodes={"pickcup": 500, "drive": 200},
    stride={"pickcup": 1, "drive": 1},
    noise=0.3,
    record_workers=2,
    image_size=64,
    horizon=10,
    n_action_steps=5,
    action_kind="bspline",
    control_points=4,
    cameras=("front", "wrist"),  # PickCup has both; Drive only the front one
    history=1,
    video_downsample=8,
    video_channels=(32, 64, 96),
    video_steps=2000,
    video_batch=32,
    model="tiny",
    train_steps=1500,
    train_batch=32,
    lr=1e-3,
    warmup=150,
    frame_loss_weight=0.5,
    goal=True,
    eval_episodes=100,
    sweep_episodes=20,
    eval_workers=2,
    videos=2,
    length_buckets=4,
    execute_steps={"pickcup": 2, "drive": 5},
    scene_cameras=("front", "wrist"),
    prompt_context=True,
    ema=0.995,  # the last ~200 steps, where the cosine is near its floor
    corrections={"pickcup": 250, "drive": 100},
    correction_rounds=3,
)
# The other presets differ from the cpu one only where written: same chunking and tokenizers everywhere.
PRESETS: dict[str, Preset] = {
    "cpu": _CPU,
    "gpu": replace(
        _CPU,
        episodes={"pickcup": 2500, "drive": 1000},
        scenes={"pickcup": 20000, "drive": 0},
        record_workers=16,
        cameras=("front", "wrist", "top"),
        history=2,
        video_channels=(32, 64, 96),
        video_steps=3000,
        video_batch=64,
        model="small",
        train_steps=20000,
        train_batch=128,
        corrections={"pickcup": 1000, "drive": 400},
        correction_steps=5000,
        lr=6e-4,
        warmup=500,
        ema=0.999,
        eval_episodes=200,
        sweep_episodes=100,
        eval_workers=16,
        videos=4,
        device="cuda",
    ),
    "smoke": replace(
        _CPU,
        episodes={"pickcup": 3, "drive": 3},
        scenes={"pickcup": 40, "drive": 0},
        record_workers=1,
        video_channels=(8, 16, 16),
        video_steps=10,
        video_batch=8,
        model="micro",
        train_steps=10,
        train_batch=8,
        warmup=2,
        corrections={"pickcup": 1, "drive": 1},
        handover={"pickcup": 5, "drive": 5},
        correction_rounds=2,
        correction_steps=3,
        correction_warmup=1,
        eval_episodes=1,
        sweep_episodes=1,
        eval_workers=1,
        videos=1,
    ),
}


def _parse(name: str, hint: Any, text: str) -> Any:
    """One ``--overrides`` value as the field's type: ints, floats, bools, comma lists, a choice, a JSON object."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if text.lower() not in ("true", "false", "1", "0", "on", "off"):
            raise ValueError(f"{name}={text!r}: a bool (true or false)")
        return text.lower() in ("true", "1", "on")
    if hint in (int, float, str):
        return hint(text)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(item(v) for v in text.split(",") if v)
    if origin is Literal:
        if text not in typing.get_args(hint):
            raise ValueError(f"{name}={text!r}: one of {list(typing.get_args(hint))}")
        return text
    if origin is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"{name}={text!r}: a JSON object")
        return value
    raise ValueError(f"{name}: no --overrides parser for its type {hint}")


def with_overrides(preset: Preset, overrides: typing.Sequence[str]) -> Preset:
    """``preset`` with ``field=value`` overrides (``robotok-pipeline --overrides``), e.g. ``cameras=front,wrist``,
    ``goal=true``, ``train_steps=3000``, ``episodes={"pickcup": 1000, "drive": 200}``; ValueError names a bad
    field or value."""
    hints = typing.get_type_hints(Preset)
    fields = [f.name for f in dataclasses.fields(Preset)]
    changes: dict[str, Any] = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or name not in hints:
            raise ValueError(f"--overrides {item!r}: expected field=value with a field of {fields}")
        try:
            changes[name] = _parse(name, hints[name], text)
        except (TypeError, ValueError) as e:  # int("x"), json errors, the messages above
            raise ValueError(f"--overrides {item!r}: {e}") from None
    for name in ("episodes", "stride", "scenes", "execute_steps"):
        empty_ok = name == "execute_steps" and not changes.get(name)  # {}: every robot executes n_action_steps
        if name in changes and not empty_ok and set(changes[name]) != set(TASKS):
            raise ValueError(f"--overrides {name}: give every task, {sorted(TASKS)}")
    return replace(preset, **changes)
