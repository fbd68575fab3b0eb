"""How far ahead does the model see? PSNR of imagined vs simulated frames per horizon step, both tasks.

For each robotok env the checkpoint has an embodiment for, ``robotok-imagine``'s rollout runs on
``--seeds`` unseen seeds: the model imagines ``--steps`` chunks from the real first frame (no simulator),
the simulator plays the same actions, and every horizon step is scored against two references measured
on the same frames in the same run: copy-last (the last real frame the model saw, i.e. the first,
repeated; the baseline to beat) and the video tokenizer's reconstruction of the real frame (the ceiling).

    python benchmarks/imagine.py --policy runs/demo/policy --seeds 20 --steps 10 --out runs/bench/imagine

Prints a markdown table per env; writes ``table.md``, ``results.json`` and per-env videos/stills to --out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from robotok.evaluate.imagine import ImagineConfig, beaten_words, horizon_table, run_imagine


@dataclass
class BenchConfig:
    """PSNR-vs-horizon of imagined frames against copy-last, for both tasks."""

    policy: str = "runs/demo/policy"
    """Checkpoint trained with the next-frame loss (robotok-pretokenize --frame-loss, --frame-loss-weight > 0)."""
    seeds: int = 20
    """Episodes per env (seeds seed .. seed + seeds - 1)."""
    steps: int = 10
    """Chunks imagined per episode."""
    seed: int = 100_000
    """First seed (demonstrations are recorded from seed 0)."""
    start_step: int = 0
    """Env steps the policy plays in the simulator before imagining starts (0: from the reset frame)."""
    state: str = "model"
    """State in the context after the first frame: model (imagined by the model), hold (the first real one
    held) or real (the simulator's, a diagnostic)."""
    envs: tuple[str, ...] = ("robotok/PickCup-v0", "robotok/Drive-v0")
    """Env ids to measure."""
    out: str = "runs/bench/imagine"
    """Folder for table.md, results.json and the videos."""
    device: str = "cpu"
    """Torch device of the model."""
    stay_bias: float = 0.0
    """Added to the logit of each cell's current code when a frame is generated (WorldModel.stay_bias)."""

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.steps < 1 or self.state not in ("model", "hold", "real"):
            raise ValueError(f"seeds {self.seeds}, steps {self.steps} (>= 1), state {self.state!r} (model|hold|real)")


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    import robotok.sim_envs  # noqa: F401  (registers the env ids)
    from robotok.policy.world_model import WorldModel

    try:
        wm = WorldModel.from_checkpoint(cfg.policy, device=cfg.device, stay_bias=cfg.stay_bias)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"benchmarks/imagine.py: error: {e}") from None
    out = Path(cfg.out)
    sections, results = (
        [
            f"# Imagined vs simulated frames: `{Path(cfg.policy).name}`, {cfg.seeds} seeds, "
            f"{cfg.steps} chunks, state {cfg.state}, from env step {cfg.start_step}\n"
        ],
        {},
    )
    for env_id in cfg.envs:
        name = env_id.split("/")[-1]
        t0 = time.perf_counter()
        icfg = ImagineConfig(
            policy=cfg.policy,
            env=env_id,
            seed=cfg.seed,
            seeds=cfg.seeds,
            steps=cfg.steps,
            out=str(out / name),
            state=cfg.state,
            start_step=cfg.start_step,
            videos=1,
            device=cfg.device,
        )
        try:
            m = run_imagine(icfg, wm=wm)
        except ValueError as e:  # e.g. the checkpoint was trained on the other task only
            sections.append(f"## {env_id}\n\nskipped: {e}\n")
            results[env_id] = {"skipped": str(e)}
            continue
        s = m["summary"]
        sections.append(
            f"## {env_id}\n\n{horizon_table(m['horizon'])}\n\n"
            f"chunk = {m['frame_steps']} steps at {m['fps']:g} Hz; the model "
            f"{beaten_words(s['imagine/beats_copy_last_until_s'])}; mean PSNR model {s['imagine/psnr_model']:.2f} dB, "
            f"copy-last {s['imagine/psnr_copy_last']:.2f} dB, tokenizer ceiling {s['imagine/psnr_tokenizer']:.2f} dB; "
            f"decode failures {s['imagine/decode_failures']}; {s['imagine/skipped']} seed(s) skipped (ended before "
            f"the start step); {time.perf_counter() - t0:.0f} s\n"
        )
        results[env_id] = {
            "horizon": m["horizon"],
            "summary": s,
            "frame_steps": m["frame_steps"],
            "fps": m["fps"],
        }
    text = "\n".join(sections)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"config": vars(cfg), "results": results}, indent=2))


if __name__ == "__main__":
    main()
