"""``robotok-record-corrections``: a trained policy's own mistakes, labelled by the scripted expert (DAgger-style).

In each episode the checkpoint drives the first 1..``--handover`` steps (drawn by the seed), the expert labels every
step and then finishes; the episodes are written as a LeRobotDataset like ``robotok-record``'s demonstrations
(``robotok.sim_envs.record``, which does the recording; this module only brings the policy, which needs torch).
``robotok-pretokenize --dataset DEMOS+CORRECTIONS`` and ``robotok-train --init CKPT`` then go on training from the
checkpoint on both.

    robotok-record-corrections --env robotok/PickCup-v0 --episodes 250 --policy runs/demo/policy_demos \\
        --out runs/demo/data/pickcup_corrections --workers 2 --noise 0.3 --seed-start 50000 --handover 80
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robotok.sim_envs.record import RecordConfig, check_corrections, cli, record, summarize


@dataclass
class CorrectionsConfig(RecordConfig):
    """Record a trained policy's corrections by the scripted expert as a LeRobotDataset v3.0 directory."""

    policy: Path = Path("runs/demo/policy_demos")
    """checkpoint of robotok-train whose corrections to record: it drives the first steps of each episode."""
    handover: int = 80
    """it drives the first K steps of each episode, K uniform in 1..handover (drawn by the seed)."""


@dataclass(frozen=True)
class CheckpointActor:
    """Builds, inside a recording worker, the checkpoint's policy on one CPU thread (picklable for ``spawn``)."""

    policy: str

    def __call__(self) -> Any:
        import torch

        from robotok.policy import Policy

        torch.set_num_threads(1)  # one core per worker
        return Policy.from_checkpoint(self.policy)

    def __str__(self) -> str:
        return self.policy


def record_corrections(cfg: CorrectionsConfig) -> dict[str, Any]:
    """Record ``cfg.episodes`` corrections of ``cfg.policy``; returns ``record``'s summary."""
    try:
        check_corrections(cfg, cfg.handover)
    except ValueError as e:
        raise SystemExit(f"robotok-record-corrections: error: {e}") from None
    if not (Path(cfg.policy) / "model.safetensors").is_file():
        raise SystemExit(
            f"robotok-record-corrections: error: --policy {cfg.policy} is not a checkpoint directory (no "
            "model.safetensors); point it at the output of robotok-train"
        )
    return record(cfg, CheckpointActor(str(cfg.policy)), cfg.handover)


def main() -> None:
    summarize(record_corrections(cli(CorrectionsConfig)))


if __name__ == "__main__":
    main()
