"""robotok-imagine: the policy's transformer dreams the episode, the simulator plays it, side by side.

    robotok-imagine --policy runs/demo/policy --env robotok/PickCup-v0 --seed 100000 --steps 10 --out runs/imagine

From the real first frame of seed S, the model alternates an action chunk and the video ids of the frame
that follows it, for ``--steps`` chunks, with no simulator in the loop (``robotok.policy.world_model``).
In the same run the simulator, reset with the same seed, executes the same actions (the first
``frame_steps`` of each chunk (policy.json: the actions between a context frame and the frame the model
learned to predict). Outputs in ``--out``:

- ``metrics.json``: PSNR of imagined vs real frames at every horizon step (all cameras pooled), averaged
  over seeds. An imagined frame is drawn on the last real frame the model saw, as a change to it: the real
  frame plus the decoder's difference between the imagined codes and that frame's own codes
  (:func:`on_reference`), so that what the model leaves unchanged keeps the real pixels and the score
  measures the change it predicts, not the video tokenizer's loss on the static scene
  (``model_decoder`` is the decoder's frame alone). Next to it, references measured on the same frames:
  ``copy_last``, the last real frame the model saw (the first one) repeated, a baseline any world model
  must beat; ``copy_last_tokens``, that
  frame through the video tokenizer repeated (the same "nothing moves" guess made of video ids, so it
  pays the tokenizer's loss like the model does); ``tokenizer``, the real frame through the video
  tokenizer, the ceiling no frame made of video ids can pass; and ``tokenizer_reference``, the real
  frame's own codes drawn on the reference as the model's are: what a model that predicts every code
  right would score. ``ratio`` is PSNR(model) / PSNR(copy_last)
  and ``gain_db`` their difference.
- ``<Env>_seed<S>.mp4`` (first ``--videos`` seeds): imagined | real at every chunk boundary, shown in
  real time, with the prompt, the horizon and both PSNRs drawn on; ``.png``: a filmstrip still.

With ``--start-step N`` the policy first drives the simulator for N env steps on real frames (closed
loop, as ``robotok-eval`` runs it) and imagining starts from the frame reached: a scene in motion rather
than the reset frame, where e.g. the car of Drive stands still.

A rollout ends early when the simulated episode ends (success or failure) before a chunk is done: both
sequences then stop there, and each horizon step is averaged over the seeds that reached it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from robotok.evaluate.metrics import bootstrap_mean_interval
from robotok.evaluate.video import _font, annotate, tile_cameras, write_mp4, write_png

PROG = "robotok-imagine"
PSNR_MAX = 100.0  # dB for identical frames, so that means over seeds stay finite
SCORES = ("model", "model_decoder", "copy_last", "copy_last_tokens", "tokenizer", "tokenizer_reference")
"""The per-step PSNRs of an episode record (``psnr_<name>``), averaged per horizon as ``psnr/<name>``."""


@dataclass
class ImagineConfig:
    """robotok-imagine: imagined vs simulated rollouts of a checkpoint trained with the next-frame loss."""

    policy: str = "runs/demo/policy"
    """Checkpoint directory from robotok-train, trained on --frame-loss shards with --frame-loss-weight > 0."""
    env: str = "robotok/PickCup-v0"
    """Env id whose first frame starts the rollout and whose simulator plays the same actions."""
    seed: int = 100_000
    """Seed of the first episode (demonstrations are recorded from seed 0, so these scenes are unseen)."""
    seeds: int = 1
    """Episodes: seeds seed .. seed + seeds - 1; the metrics are averaged over them."""
    prompt: str = ""
    """Prompt given to the model (empty: the env's own prompt for the scene)."""
    steps: int = 10
    """Chunks to imagine; each advances frame_steps env steps (the checkpoint's policy.json)."""
    start_step: int = 0
    """Env steps the policy first plays in the simulator, closed loop on real frames; imagining starts
    from the frame it reaches (0: from the reset frame). A seed whose episode ends before is skipped."""
    out: str = "runs/imagine"
    """Folder for metrics.json, the mp4 videos and PNG stills."""
    state: Literal["model", "hold", "real"] = "model"
    """State in the context after the first frame: model, the state the model imagines after each frame
    (a checkpoint trained without next-state targets holds the first one); hold, the real first state held;
    real, as a diagnostic, the simulator's state at each chunk boundary (the frames stay imagined). model
    and hold are pure imagination."""
    temperature: float = 0.0
    """0: greedy decoding of actions and frames; > 0 samples (from a generator seeded per episode)."""
    stay_bias: float = 0.0
    """Added to the logit of each cell's current code when a frame is generated: a prior that what the model is
    unsure of stays as it is (0: the model's own distribution; large values approach copy-last)."""
    videos: int = 1
    """Side-by-side mp4 + PNG still for the first K seeds."""
    size: int = 192
    """Height in pixels of each upscaled camera view in the video."""
    device: str = "cpu"
    """Torch device of the model ('cpu', 'cuda')."""

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.steps < 1 or self.seed < 0 or self.start_step < 0:
            raise ValueError(
                f"seeds {self.seeds} and steps {self.steps} must be >= 1, seed {self.seed} and start_step "
                f"{self.start_step} >= 0"
            )
        if self.videos < 0 or self.temperature < 0 or self.size < 16:
            raise ValueError(
                f"videos {self.videos} and temperature {self.temperature} must be >= 0, size {self.size} >= 16"
            )


# ---- metrics -----------------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (any equal shapes): 10 log10(255^2 / MSE)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"psnr needs two uint8 arrays of one shape, got {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_MAX if mse == 0 else min(PSNR_MAX, 10.0 * math.log10(255.0**2 / mse))


def frames_psnr(pred: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> float:
    """PSNR over all cameras of ``pred`` pooled (one MSE over every pixel of every camera)."""
    cams = sorted(pred)
    return psnr(np.stack([pred[c] for c in cams]), np.stack([np.asarray(real[c]) for c in cams]))


def on_reference(
    decoded: dict[str, np.ndarray], reference: dict[str, np.ndarray], reference_decoded: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """An imagined frame drawn as a change to a real one: ``reference + decoded - reference_decoded``.

    ``reference`` is the last real frame the model saw and ``reference_decoded`` its codes through the
    decoder: where the imagined codes equal the reference's, the real pixels come back exactly, and where
    they differ the decoder's difference is added. (A video codec's predicted frame: the residual on a
    reference.) All {camera: uint8 [H, W, 3]}."""
    out = {}
    for c, d in decoded.items():
        x = reference[c].astype(np.int16) + d.astype(np.int16) - reference_decoded[c].astype(np.int16)
        out[c] = np.clip(x, 0, 255).astype(np.uint8)
    return out


def summarize(episodes: list[dict[str, Any]], steps: int, n_action_steps: int, fps: float) -> list[dict[str, Any]]:
    """Per horizon step 1..steps: seeds that reached it and the mean PSNR of model and references."""
    rows = []
    for k in range(1, steps + 1):
        reached = [e for e in episodes if len(e["psnr_model"]) >= k]
        if not reached:
            break
        mean = {key: float(np.mean([e[f"psnr_{key}"][k - 1] for e in reached])) for key in SCORES}
        lo, hi = bootstrap_mean_interval([e["psnr_model"][k - 1] - e["psnr_copy_last"][k - 1] for e in reached])
        rows.append(
            {
                "step": k,
                "t_s": round(k * n_action_steps / fps, 4),
                "episodes": len(reached),
                **{f"psnr/{key}": mean[key] for key in SCORES},
                "ratio": mean["model"] / mean["copy_last"],
                "gain_db": mean["model"] - mean["copy_last"],
                "gain_db_ci95": [lo, hi],
            }
        )
    return rows


def beaten_until_s(rows: list[dict[str, Any]]) -> float:
    """The longest horizon (s) up to which the model beats copy_last at every step (0.0: not at the first):
    a step counts when the 95% interval of its gain over the seeds lies above 0, not only its mean."""
    t = 0.0
    for r in rows:
        if r["gain_db_ci95"][0] <= 0:
            break
        t = r["t_s"]
    return t


def beaten_words(until_s: float) -> str:
    """``beaten_until_s`` in words: "beats copy-last at every step up to 0.75 s", or that it does not at the first."""
    if until_s <= 0:
        return "does not surely beat copy-last at the first step"
    return f"beats copy-last at every step up to {until_s:.2f} s"


# ---- one episode -------------------------------------------------------------------------------------------


def make_env(env_id: str, wm: Any) -> Any:
    """The env at the image size the checkpoint was trained on (ValueError naming the ids for an unknown id)."""
    import gymnasium as gym

    from robotok.sim_envs import ENV_IDS

    if env_id not in gym.registry:
        raise ValueError(f"unknown env id {env_id!r}; choose one of {', '.join(ENV_IDS)}")
    h, w = wm.policy.config["image_size"]
    return gym.make(env_id, width=int(w), height=int(h))


def imagine_episode(
    wm: Any, env: Any, seed: int, steps: int, prompt: str = "", state: str = "model", start_step: int = 0
) -> dict[str, Any]:
    """Imagine ``steps`` chunks from seed's first frame while the sim plays the same actions (``state``,
    ``start_step``: see :class:`ImagineConfig`; after a lead-in the "first" frame is the one it reached).

    Returns the episode record: frames (``real``, ``imagined`` (drawn on the first real frame, see
    :func:`on_reference`), ``decoded`` (the decoder's alone), ``tokenizer``: lists of {camera: uint8
    [H, W, 3]}, index 0 the start), ``states`` (the state the context holds at each of those steps), the
    per-step PSNRs (lists, index 0 = horizon step 1), the actions.
    """
    import torch

    obs, info = env.reset(seed=seed)
    prompt = prompt or str(info["prompt"])
    if wm.policy.generator is not None:
        wm.policy.generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
    low, high = env.action_space.low, env.action_space.high
    if start_step:  # the lead-in: the policy acts on real frames; the imagined rollout starts where it ends
        wm.policy.reset()
        for _ in range(start_step):
            action = wm.policy.select_action({**obs, "task": prompt})
            obs, _, terminated, truncated, _ = env.step(np.clip(action, low, high).astype(np.float32))
            if terminated or truncated:
                return {"seed": seed, "prompt": prompt, "skipped": f"the episode ended within {start_step} steps"}
    fail0 = wm.policy.decode_failures
    rollout = wm.start(obs, prompt)
    vt, cams = wm.policy.video_tokenizer, rollout.cameras
    first = {c: np.asarray(obs["pixels"][c]) for c in cams}
    first_state = np.asarray(obs["agent_pos"], dtype=np.float32)

    def through_tokenizer(pixels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(cams, vt.decode(vt.encode(np.stack([pixels[c] for c in cams]))), strict=True))

    real, recon = [first], [through_tokenizer(first)]
    decoded, imagined = [recon[0]], [first]
    actions, states, ended = [], [first_state], False
    for _ in range(steps):
        chunk = rollout.step()
        executed = chunk.actions[: wm.frame_steps]
        played = 0
        for a in executed:
            obs, _, terminated, truncated, _ = env.step(np.clip(a, low, high).astype(np.float32))
            played += 1
            ended = bool(terminated or truncated)
            if ended:
                break
        actions.append(executed[:played])
        if played < len(executed):  # the episode ended before the imagined frame's time: nothing to compare
            break
        if state == "real":
            rollout.set_state(obs["agent_pos"])
        elif state == "hold":
            rollout.set_state(first_state)
        states.append(rollout.current_state())
        real.append({c: np.asarray(obs["pixels"][c]) for c in cams})
        decoded.append(rollout.decode_frames(chunk.codes))
        imagined.append(on_reference(decoded[-1], first, recon[0]))
        recon.append(through_tokenizer(real[-1]))
        if ended:
            break
    return {
        "seed": seed,
        "prompt": prompt,
        "cameras": cams,
        "steps_done": len(real) - 1,
        "ended_early": ended,
        "real": real,
        "imagined": imagined,
        "decoded": decoded,
        "tokenizer": recon,
        "actions": actions,
        "states": states,
        "psnr_model": [frames_psnr(i, r) for i, r in zip(imagined[1:], real[1:], strict=True)],
        "psnr_model_decoder": [frames_psnr(i, r) for i, r in zip(decoded[1:], real[1:], strict=True)],
        "psnr_copy_last": [frames_psnr(first, r) for r in real[1:]],
        "psnr_copy_last_tokens": [frames_psnr(recon[0], r) for r in real[1:]],
        "psnr_tokenizer": [frames_psnr(t, r) for t, r in zip(recon[1:], real[1:], strict=True)],
        "psnr_tokenizer_reference": [
            frames_psnr(on_reference(t, first, recon[0]), r) for t, r in zip(recon[1:], real[1:], strict=True)
        ],
        "decode_failures": wm.policy.decode_failures - fail0,
    }


# ---- video and still ---------------------------------------------------------------------------------------


def _panel(pixels: dict[str, np.ndarray], label: str, size: int) -> np.ndarray:
    """Cameras side by side (upscaled) with ``label`` in the top-left corner."""
    img = Image.fromarray(tile_cameras(pixels, size))
    draw, font = ImageDraw.Draw(img), _font(12)
    draw.rectangle((0, 0, int(draw.textlength(label, font=font)) + 10, 18), fill=(20, 20, 24))
    draw.text((5, 2), label, font=font, fill=(240, 240, 240))
    return np.asarray(img)


def side_by_side(ep: dict[str, Any], k: int, size: int, header: str, n_action_steps: int, fps: float) -> np.ndarray:
    """Horizon step k of an episode: imagined | real, with a banner (prompt, time, both PSNRs)."""
    left, right = _panel(ep["imagined"][k], "imagined", size), _panel(ep["real"][k], "real (sim)", size)
    gap = np.full((left.shape[0], 6, 3), 20, np.uint8)
    scores = (
        "start (the real frame)"
        if k == 0
        else (f"PSNR {ep['psnr_model'][k - 1]:.1f} dB, copy-last {ep['psnr_copy_last'][k - 1]:.1f} dB")
    )
    status = f"{header} · chunk {k}/{ep['steps_done']} · t={k * n_action_steps / fps:.2f}s · {scores}"
    return annotate(np.concatenate([left, gap, right], axis=1), ep["prompt"], status, None, None)


def filmstrip(
    ep: dict[str, Any], header: str, n_action_steps: int, fps: float, columns: int = 6, size: int = 128
) -> np.ndarray:
    """A still: up to ``columns`` horizon steps left to right, imagined above, real below, prompt on top."""
    ks = sorted({int(round(x)) for x in np.linspace(0, ep["steps_done"], min(columns, ep["steps_done"] + 1))})
    cols = []
    for k in ks:
        t = f"t={k * n_action_steps / fps:.2f}s"
        top, bottom = _panel(ep["imagined"][k], f"imagined {t}", size), _panel(ep["real"][k], f"real {t}", size)
        cols.append(np.concatenate([top, np.full((4, top.shape[1], 3), 20, np.uint8), bottom], axis=0))
        cols.append(np.full((cols[-1].shape[0], 6, 3), 20, np.uint8))
    return annotate(np.concatenate(cols[:-1], axis=1), ep["prompt"], header, None, None)


# ---- the command -------------------------------------------------------------------------------------------


def run_imagine(cfg: ImagineConfig, wm: Any = None, progress: bool = True) -> dict[str, Any]:
    """Imagine every seed, write videos/stills and ``metrics.json`` into ``cfg.out``; return the metrics."""
    from tqdm import tqdm

    from robotok.evaluate.rollout import policy_label
    from robotok.policy.world_model import WorldModel

    if wm is None:
        wm = WorldModel.from_checkpoint(
            cfg.policy,
            device=cfg.device,
            stay_bias=cfg.stay_bias,
            temperature=cfg.temperature,
            seed=0 if cfg.temperature > 0 else None,
        )
    env = make_env(cfg.env, wm)
    fps = float(env.metadata.get("render_fps", wm.policy.config.get("fps", 20)))
    n_act, env_name, label = wm.frame_steps, cfg.env.split("/")[-1], policy_label(cfg.policy)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    episodes, skipped = [], []
    try:
        for i in tqdm(range(cfg.seeds), desc=f"{PROG} {env_name}", unit="ep", disable=not progress):
            seed = cfg.seed + i
            ep = imagine_episode(wm, env, seed, cfg.steps, cfg.prompt, cfg.state, cfg.start_step)
            if "skipped" in ep:
                skipped.append(ep)
                continue
            ep["video"] = ep["still"] = None
            if len(episodes) < cfg.videos:
                lead = f" · from step {cfg.start_step}" if cfg.start_step else ""
                header = f"{label} · {env_name} · seed {seed} · state {cfg.state}{lead}"
                frames = [side_by_side(ep, k, cfg.size, header, n_act, fps) for k in range(ep["steps_done"] + 1)]
                held = [f for f in frames for _ in range(n_act)]  # every chunk shown for its real duration
                ep["video"] = str(write_mp4(out / f"{env_name}_seed{seed}.mp4", held, fps=int(round(fps))))
                ep["still"] = str(write_png(out / f"{env_name}_seed{seed}.png", filmstrip(ep, header, n_act, fps)))
            drop = ("real", "imagined", "decoded", "tokenizer", "states")
            episodes.append({k: v for k, v in ep.items() if k not in drop})
    finally:
        env.close()
    rows = summarize(episodes, cfg.steps, n_act, fps)
    metrics = {
        "env": cfg.env,
        "policy": label,
        "config": asdict(cfg),
        "frame_steps": n_act,
        "fps": fps,
        "horizon": rows,
        "summary": {
            "imagine/episodes": len(episodes),
            "imagine/skipped": len(skipped),
            **{
                f"imagine/psnr_{key}": float(np.mean([r[f"psnr/{key}"] for r in rows])) if rows else None
                for key in SCORES
            },
            "imagine/beats_copy_last_until_s": beaten_until_s(rows),
            "imagine/decode_failures": int(sum(e["decode_failures"] for e in episodes)),
        },
        "episodes": [{**e, "actions": [np.asarray(a).tolist() for a in e["actions"]]} for e in episodes],
        "skipped": skipped,
    }
    _write_json(out / "metrics.json", metrics)
    return metrics


def _write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def horizon_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per horizon step with the PSNRs of the model (drawn on the last real frame, and
    the decoder's frame alone) and the references (mean dB)."""
    lines = [
        "| step | t (s) | seeds | model (dB) | copy-last (dB) | ratio | gain (dB) | gain 95% CI "
        "| model, decoder only (dB) | copy-last tokenized (dB) | tokenizer ceiling (dB) "
        "| tokenizer ceiling on reference (dB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['step']} | {r['t_s']:.2f} | {r['episodes']} | {r['psnr/model']:.2f} | {r['psnr/copy_last']:.2f} "
        f"| {r['ratio']:.3f} | {r['gain_db']:+.2f} | [{r['gain_db_ci95'][0]:+.2f}, {r['gain_db_ci95'][1]:+.2f}] "
        f"| {r['psnr/model_decoder']:.2f} | {r['psnr/copy_last_tokens']:.2f} "
        f"| {r['psnr/tokenizer']:.2f} | {r['psnr/tokenizer_reference']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    import tyro

    err = f"{PROG}: error:"
    cfg = tyro.cli(ImagineConfig)  # a ValueError of __post_init__ is reported by tyro
    from robotok.evaluate.rollout import policy_kind

    try:
        kind = policy_kind(cfg.policy)
    except ValueError as e:
        raise SystemExit(f"{err} {e}") from None
    if kind != "checkpoint":
        raise SystemExit(
            f"{err} --policy {cfg.policy!r} is {'an exported bundle' if kind == 'bundle' else kind}; "
            "imagining needs a checkpoint directory from robotok-train"
        )
    import robotok.sim_envs  # noqa: F401  (registers the env ids)

    try:
        metrics = run_imagine(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"{err} {e}") from None
    print(horizon_table(metrics["horizon"]))
    s = metrics["summary"]
    print(
        f"{PROG}: {s['imagine/episodes']} episode(s) of {cfg.env}; the model "
        f"{beaten_words(s['imagine/beats_copy_last_until_s'])}; wrote {Path(cfg.out) / 'metrics.json'}"
    )


if __name__ == "__main__":
    main()
