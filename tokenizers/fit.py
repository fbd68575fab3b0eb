"""Fit the action tokenizers on the action chunks of LeRobot v3 datasets and report how well they do.

    robotok-fit-tokenizers --dataset runs/data/pick_cup --horizon 20 --out runs/tokenizers/action

Chunks are sliding windows of ``--horizon`` steps starting at every ``--stride``-th step; a window that runs past
the end of an episode repeats the last action (what action-chunking policies train on). The last
``--holdout`` fraction of episodes is kept out of fitting and measures the reconstruction errors.

Layout of ``--out``:

- one dataset: ``<out>/<kind>/`` per tokenizer kind (``binning``, ``dct_bpe``, ``bspline``);
- several datasets: one set per dataset, ``<out>/<dataset name>/<kind>/`` (the dataset directory's name), since
  robots with different action dimensions need their own tokenizers;
- always ``<out>/report.md`` and ``<out>/report.json``: tokens per chunk, tokens per second of control and
  normalised errors on the held-out episodes, per dataset and kind.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro
from tqdm import tqdm

from robotok.tokenizers.action import (
    KINDS,
    ActionTokenizer,
    BinningTokenizer,
    BSplineTokenizer,
    DCTBPETokenizer,
    reconstruction_metrics,
)
from robotok.tokenizers.action_common import write_json_atomic, write_text_atomic

PROG = "robotok-fit-tokenizers"
BULKY = ("normalizer", "edges", "levels", "cp_low", "cp_high")  # fitted arrays left out of the report
Kind = Literal["binning", "dct_bpe", "bspline"]


@dataclass
class FitConfig:
    """Fit the action tokenizers (binning, DCT+BPE, B-spline) on LeRobot v3 datasets' action chunks.

    Output layout: one dataset -> <out>/<kind>/; several datasets -> <out>/<dataset name>/<kind>/ (one set per
    dataset, as robots differ in action dims); always <out>/report.md and <out>/report.json (tokens per chunk,
    tokens per second, normalised errors on held-out episodes).
    """

    dataset: tuple[Path, ...] = (Path("runs/data/pick_cup"),)
    """LeRobot v3 dataset directories; several give one tokenizer set each, under <out>/<dataset name>/."""
    horizon: int = 20
    """Action chunk length H in steps (20 steps = 1 s at 20 Hz)."""
    out: Path = Path("runs/tokenizers/action")
    """Output directory: <out>/<kind>/ (or <out>/<dataset name>/<kind>/), report.md, report.json."""
    kinds: tuple[Kind, ...] = ("binning", "dct_bpe", "bspline")
    """Tokenizer kinds to fit."""
    holdout: float = 0.1
    """Fraction of episodes (the last ones) held out of fitting to measure reconstruction errors."""
    stride: int = 1
    """Steps between the starts of consecutive chunks."""
    bins: int = 256
    """Binning: bins per action dimension."""
    dct_scale: float = 10.0
    """DCT+BPE: DCT coefficients are multiplied by this before rounding (RMSE <= 0.5/scale, normalised)."""
    bpe_vocab_size: int = 1024
    """DCT+BPE: BPE vocabulary size."""
    control_points: int = 8
    """B-spline: control points per action dimension."""

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.stride < 1:
            raise ValueError(f"horizon ({self.horizon}) and stride ({self.stride}) must be >= 1")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds must be a non-empty list without repeats, got {self.kinds}")


def make_tokenizer(kind: str, cfg: FitConfig) -> ActionTokenizer:
    """A fresh, unfitted tokenizer of ``kind`` with the settings of ``cfg``."""
    if kind == "binning":
        return BinningTokenizer(bins=cfg.bins)
    if kind == "dct_bpe":
        return DCTBPETokenizer(scale=cfg.dct_scale, bpe_vocab_size=cfg.bpe_vocab_size)
    if kind == "bspline":
        return BSplineTokenizer(num_control_points=cfg.control_points, bins=cfg.bins)
    raise ValueError(f"unknown kind {kind!r}; known: {sorted(KINDS)}")


def episode_chunks(actions: np.ndarray, horizon: int, stride: int = 1) -> np.ndarray:
    """``actions[T, A]`` -> chunks ``[ceil(T / stride), horizon, A]`` starting at every ``stride``-th step,
    the last action repeated past the end of the episode."""
    actions = np.asarray(actions)
    assert actions.ndim == 2 and len(actions) > 0, f"actions must be [T, A] with T > 0, got {actions.shape}"
    starts = np.arange(0, len(actions), stride)
    idx = np.minimum(starts[:, None] + np.arange(horizon)[None, :], len(actions) - 1)  # [N, H]
    return actions[idx]


def load_episode_actions(root: Path, progress: bool = True) -> tuple[list[np.ndarray], float]:
    """Every episode's ``action`` array ``[T, A]`` of the dataset at ``root`` (no video decoding), and its fps."""
    from robotok.datasets.lerobot_v3 import LeRobotDataset

    ds = LeRobotDataset(root)
    eps = [
        np.asarray(ds.episode(i, load_images=False)["action"], dtype=np.float64)
        for i in tqdm(range(ds.num_episodes), desc=f"actions {root.name}", disable=not progress, leave=False)
    ]
    return eps, float(ds.fps)


def split_episodes(n: int, holdout: float) -> tuple[list[int], list[int]]:
    """Train / held-out episode indices: the last ``round(holdout * n)`` episodes (>= 1 when possible) held out."""
    n_test = min(n - 1, max(1, round(holdout * n))) if holdout > 0 else 0
    return list(range(n - n_test)), list(range(n - n_test, n))


def evaluate(tok: ActionTokenizer, chunks: np.ndarray, low: np.ndarray, high: np.ndarray) -> dict[str, Any]:
    """Tokens per chunk and normalised reconstruction errors of ``tok`` on ``chunks[N, H, D]``.

    Errors are in units where each dimension's ``[low, high]`` (the training actions' min/max) spans ``[-1, 1]``.
    """
    n, h, d = chunks.shape
    t0 = time.perf_counter()
    ids = tok.encode_batch(chunks)
    t1 = time.perf_counter()
    decoded = tok.decode_batch(ids, h, d)
    t2 = time.perf_counter()
    rec = np.stack([c for c, _ in decoded])
    lengths = np.array([len(i) for i in ids])
    return {
        "tokens_per_chunk_mean": float(lengths.mean()),
        "tokens_per_chunk_p99": float(np.percentile(lengths, 99)),
        "tokens_per_chunk_max": int(lengths.max()),
        "vocab_size": int(tok.vocab_size),
        "decode_failures": int(sum(not ok for _, ok in decoded)),
        "encode_chunks_per_s": n / max(t1 - t0, 1e-9),
        "decode_chunks_per_s": n / max(t2 - t1, 1e-9),
        **reconstruction_metrics(chunks, rec, low, high),
    }


def fit_dataset(root: Path, out_dir: Path, cfg: FitConfig, progress: bool = True) -> dict[str, Any]:
    """Fit every kind in ``cfg.kinds`` on one dataset, save each to ``out_dir/<kind>/``; return the report entry."""
    episodes, fps = load_episode_actions(root, progress)
    if not episodes:
        raise SystemExit(f"{PROG}: error: {root} has no episodes; record some with robotok-record first")
    train_eps, test_eps = split_episodes(len(episodes), cfg.holdout)
    train = np.concatenate([episode_chunks(episodes[i], cfg.horizon, cfg.stride) for i in train_eps])
    test = (
        np.concatenate([episode_chunks(episodes[i], cfg.horizon, cfg.stride) for i in test_eps]) if test_eps else train
    )
    low, high = train.reshape(-1, train.shape[-1]).min(0), train.reshape(-1, train.shape[-1]).max(0)
    entry: dict[str, Any] = {
        "dataset": str(root),
        "fps": fps,
        "action_dim": int(train.shape[-1]),
        "episodes_train": len(train_eps),
        "episodes_heldout": len(test_eps),
        "chunks_train": int(len(train)),
        "chunks_eval": int(len(test)),
        "eval_on": "held-out episodes" if test_eps else "training episodes",
        "kinds": {},
    }
    for kind in tqdm(cfg.kinds, desc=f"fit {root.name}", disable=not progress, leave=False):
        tok = make_tokenizer(kind, cfg).fit(train)
        path = tok.save(out_dir / kind)
        metrics = evaluate(tok, test, low, high)
        metrics["tokens_per_second"] = metrics["tokens_per_chunk_mean"] * fps / cfg.horizon
        settings = {k: v for k, v in tok.to_json().items() if k not in BULKY}
        entry["kinds"][kind] = {"path": str(path), "settings": settings, **metrics}
    return entry


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Action tokenizers",
        "",
        f"Horizon {report['config']['horizon']} steps. Errors are normalised (each action dimension's training "
        "min/max spans [-1, 1]); tokens per second assume one chunk per horizon.",
        "",
    ]
    for entry in report["datasets"]:
        lines += [
            f"## {entry['dataset']}",
            "",
            f"{entry['action_dim']}-D actions at {entry['fps']:g} Hz; {entry['episodes_train']} training / "
            f"{entry['episodes_heldout']} held-out episodes; errors on {entry['chunks_eval']} chunks of "
            f"{entry['eval_on']}.",
            "",
            "| kind | vocab | tokens/chunk (mean) | p99 | tokens/s | nRMSE | max abs | decode failures | path |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for kind, m in entry["kinds"].items():
            lines.append(
                f"| {kind} | {m['vocab_size']} | {m['tokens_per_chunk_mean']:.1f} | "
                f"{m['tokens_per_chunk_p99']:.0f} | {m['tokens_per_second']:.1f} | {m['nrmse']:.4f} | "
                f"{m['max_abs']:.4f} | {m['decode_failures']} | `{m['path']}` |"
            )
        lines.append("")
    return "\n".join(lines)


def run(cfg: FitConfig, progress: bool = True) -> dict[str, Any]:
    """Fit and save every dataset's tokenizers; write ``report.json`` and ``report.md``; return the report."""
    for root in cfg.dataset:
        if not (Path(root) / "meta" / "info.json").is_file():
            raise SystemExit(
                f"{PROG}: error: {root} is not a LeRobot v3 dataset (no meta/info.json); "
                "record one with `robotok-record --env robotok/PickCup-v0 --out DIR` or fix --dataset"
            )
    names = [Path(r).resolve().name for r in cfg.dataset]
    if len(set(names)) != len(names):
        raise SystemExit(
            f"{PROG}: error: dataset directories share a name ({names}); the output layout "
            "<out>/<dataset name>/<kind>/ needs distinct names"
        )
    several = len(cfg.dataset) > 1
    entries = [
        fit_dataset(Path(root), cfg.out / name if several else cfg.out, cfg, progress)
        for root, name in zip(cfg.dataset, names, strict=True)
    ]
    report = {
        "config": {
            k: (list(map(str, v)) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in asdict(cfg).items()
        },
        "datasets": entries,
    }
    write_json_atomic(cfg.out / "report.json", report)
    write_text_atomic(cfg.out / "report.md", report_markdown(report))
    return report


def main() -> None:
    cfg = tyro.cli(FitConfig)
    report = run(cfg)
    print(report_markdown(report))
    print(f"wrote {cfg.out / 'report.md'}")


if __name__ == "__main__":
    main()
