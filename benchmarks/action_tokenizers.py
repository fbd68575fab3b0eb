"""Rate-distortion of the action tokenizers: tokens per chunk against reconstruction error, with speeds.

    python benchmarks/action_tokenizers.py --synthetic --out runs/bench/action_tokenizers
    python benchmarks/action_tokenizers.py --dataset runs/data/pick_cup --out runs/bench/action_tokenizers_pick

For each tokenizer and a sweep of its main setting (binning: bins; DCT+BPE: scale, BPE vocabulary, binary-dim
coding on/off; B-spline: control points) it fits on training chunks and measures, on held-out chunks (held-out
episodes for a dataset): tokens per chunk (mean, p99), tokens per second of control (one chunk per horizon),
normalised RMSE and max abs error (each dimension's training min/max spans [-1, 1]), decode repairs, and
encode / decode chunks per second (batched calls, one process, best of 3). Writes ``results.json``, ``table.md`` and
``rate_distortion.png`` to ``--out``. ``--synthetic`` uses smooth 1 s chunks at 20 Hz: 4 dims, each a sum of
three sinusoids of 0.1-1.5 Hz, and a gripper in {-1, 1} that switches once at a random step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from robotok.tokenizers.action import BinningTokenizer, BSplineTokenizer, DCTBPETokenizer, reconstruction_metrics
from robotok.tokenizers.action_common import write_json_atomic, write_text_atomic
from robotok.tokenizers.fit import episode_chunks, load_episode_actions, split_episodes

PROG = "benchmarks/action_tokenizers.py"


@dataclass
class BenchConfig:
    """Sweep the action tokenizers' main settings and plot tokens per chunk against error."""

    dataset: Path | None = None
    """LeRobot v3 dataset directory (its held-out episodes are the test set)."""
    synthetic: bool = False
    """Use smooth synthetic chunks (4 smooth dims + a gripper that switches once) instead of a dataset."""
    out: Path = Path("benchmarks/results/action_tokenizers")
    """Where results.json, table.md and rate_distortion.png go."""
    horizon: int = 20
    """Chunk length in steps (20 = 1 s at 20 Hz)."""
    holdout: float = 0.1
    """Dataset: fraction of episodes held out for testing."""
    max_train_chunks: int = 5000
    """Fit on at most this many chunks (a random subset)."""
    max_test_chunks: int = 1000
    """Measure on at most this many held-out chunks (a random subset)."""
    seed: int = 0
    """Seed of the synthetic data and of the subsets."""

    def __post_init__(self) -> None:
        if self.synthetic == (self.dataset is not None):
            raise ValueError(
                f"give exactly one of --dataset DIR or --synthetic (got dataset={self.dataset}, "
                f"synthetic={self.synthetic})"
            )
        if self.horizon < 2 or self.max_train_chunks < 10 or self.max_test_chunks < 1:
            raise ValueError(
                f"horizon {self.horizon} must be >= 2, max_train_chunks {self.max_train_chunks} >= 10, "
                f"max_test_chunks {self.max_test_chunks} >= 1"
            )


def synthetic_chunks(n: int, horizon: int, seed: int, fps: float = 20.0) -> np.ndarray:
    """``[n, horizon, 5]``: 4 smooth dims (sums of 3 sinusoids, 0.1-1.5 Hz, |x| < 1) + a gripper switching once."""
    rng = np.random.default_rng(seed)
    t = np.arange(horizon) / fps
    x = np.zeros((n, horizon, 5))
    for _ in range(3):
        f, ph = rng.uniform(0.1, 1.5, (n, 1, 4)), rng.uniform(0, 2 * np.pi, (n, 1, 4))
        x[..., :4] += rng.uniform(0.1, 0.33, (n, 1, 4)) * np.sin(2 * np.pi * f * t[None, :, None] + ph)
    switch, g0 = rng.integers(1, horizon, (n, 1)), rng.choice([-1.0, 1.0], (n, 1))
    x[..., 4] = np.where(np.arange(horizon)[None] < switch, g0, -g0)
    return x


def load_data(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(train chunks, test chunks, fps, description)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.synthetic:
        return (
            synthetic_chunks(cfg.max_train_chunks, cfg.horizon, cfg.seed),
            synthetic_chunks(cfg.max_test_chunks, cfg.horizon, cfg.seed + 1),
            20.0,
            "synthetic: 4 smooth dims + a gripper switching once per chunk, 20 Hz",
        )
    if not (cfg.dataset / "meta" / "info.json").is_file():
        raise SystemExit(
            f"{PROG}: error: {cfg.dataset} is not a LeRobot v3 dataset (no meta/info.json); "
            "record one with robotok-record or use --synthetic"
        )
    episodes, fps = load_episode_actions(cfg.dataset)
    if len(episodes) < 2:
        raise SystemExit(f"{PROG}: error: {cfg.dataset} has {len(episodes)} episode(s); need >= 2 to hold one out")
    train_eps, test_eps = split_episodes(len(episodes), cfg.holdout)
    train = np.concatenate([episode_chunks(episodes[i], cfg.horizon) for i in train_eps])
    test = np.concatenate([episode_chunks(episodes[i], cfg.horizon) for i in test_eps])
    train = train[rng.permutation(len(train))[: cfg.max_train_chunks]]
    test = test[rng.permutation(len(test))[: cfg.max_test_chunks]]
    desc = (
        f"{cfg.dataset}: {train.shape[-1]}-D actions at {fps:g} Hz, {len(train_eps)} training / "
        f"{len(test_eps)} held-out episodes"
    )
    return train, test, fps, desc


def sweep() -> list[tuple[str, str, Any]]:
    """(kind, setting label, factory) for every point of the sweep; the defaults are marked."""
    points: list[tuple[str, str, Any]] = []
    for bins in (32, 64, 128, 256):
        points.append(
            ("binning", f"bins={bins}" + (" (default)" if bins == 256 else ""), lambda b=bins: BinningTokenizer(bins=b))
        )
    default = DCTBPETokenizer()
    for scale in (4.0, 7.0, 10.0, 15.0, 25.0, 40.0):
        mark = " (default)" if scale == default.scale else ""
        points.append(
            ("dct_bpe", f"scale={scale:g} V={default.bpe_vocab_size}{mark}", lambda s=scale: DCTBPETokenizer(scale=s))
        )
    for vocab in (256, 512, 2048):
        points.append(
            ("dct_bpe", f"scale={default.scale:g} V={vocab}", lambda v=vocab: DCTBPETokenizer(bpe_vocab_size=v))
        )
    points.append(
        (
            "dct_bpe (no binary dims)",
            f"scale={default.scale:g} V={default.bpe_vocab_size}",
            lambda: DCTBPETokenizer(binary_dims=False),
        )
    )
    for k in (4, 6, 8, 10, 12):
        points.append(
            (
                "bspline",
                f"K={k}" + (" (default)" if k == BSplineTokenizer().num_control_points else ""),
                lambda k=k: BSplineTokenizer(num_control_points=k),
            )
        )
    points.append(("bspline (no binary dims)", "K=8", lambda: BSplineTokenizer(binary_dims=False)))
    return points


def best_time(fn: Any, repeats: int = 3) -> tuple[Any, float]:
    """(result, fastest wall time of ``repeats`` calls): the machine is shared, the minimum is the least noisy."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, max(min(times), 1e-9)


def measure(tok: Any, test: np.ndarray, low: np.ndarray, high: np.ndarray, fps: float) -> dict[str, Any]:
    n, h, d = test.shape
    ids, t_enc = best_time(lambda: tok.encode_batch(test))
    decoded, t_dec = best_time(lambda: tok.decode_batch(ids, h, d))
    rec = np.stack([c for c, _ in decoded])
    lengths = np.array([len(i) for i in ids])
    return {
        "vocab_size": int(tok.vocab_size),
        "tokens_mean": float(lengths.mean()),
        "tokens_p99": float(np.percentile(lengths, 99)),
        "tokens_per_s": float(lengths.mean() * fps / h),
        "decode_repairs": int(sum(not ok for _, ok in decoded)),
        "encode_chunks_per_s": n / t_enc,
        "decode_chunks_per_s": n / t_dec,
        **reconstruction_metrics(test, rec, low, high),
    }


def table(rows: list[dict[str, Any]], desc: str, n_test: int, ref_tokens: float) -> str:
    lines = [
        f"Data: {desc}; {n_test} held-out chunks. Errors normalised (training min/max -> [-1, 1]); "
        "`x fewer` = tokens of binning (256 bins) / tokens.",
        "",
        "| tokenizer | setting | vocab | tokens/chunk | p99 | x fewer | tokens/s | nRMSE | nRMSE per dim "
        "| max abs | repairs | enc chunks/s | dec chunks/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['setting']} | n/a: {r['error']} ||||||||||")
            continue
        per_dim = "/".join(f"{v:.3f}" for v in r["nrmse_per_dim"])
        lines.append(
            f"| {r['kind']} | {r['setting']} | {r['vocab_size']} | {r['tokens_mean']:.1f} | "
            f"{r['tokens_p99']:.0f} | {ref_tokens / r['tokens_mean']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['nrmse']:.4f} | {per_dim} | {r['max_abs']:.3f} | {r['decode_repairs']} | "
            f"{r['encode_chunks_per_s']:,.0f} | {r['decode_chunks_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {
        "binning": "s",
        "dct_bpe": "o",
        "dct_bpe (no binary dims)": "x",
        "bspline": "^",
        "bspline (no binary dims)": "v",
    }
    for kind in markers:
        pts = sorted((r["tokens_mean"], r["nrmse"], r["setting"]) for r in rows if r["kind"] == kind and "nrmse" in r)
        if kind == "dct_bpe":  # the scale sweep is the curve; vocabulary variants are loose points
            curve = [p for p in pts if f"V={DCTBPETokenizer().bpe_vocab_size}" in p[2]]
            loose = [p for p in pts if p not in curve]
            ax.plot([p[0] for p in curve], [p[1] for p in curve], "o-", label="dct_bpe (scale sweep)")
            ax.plot([p[0] for p in loose], [p[1] for p in loose], "o", mfc="none", label="dct_bpe (vocab sweep)")
            for x, y, s in loose:
                ax.annotate(s.split(" ")[-1], (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points")
            pts = curve
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], markers[kind] + ("" if len(pts) < 2 else "-"), label=kind)
        for x, y, s in pts:
            label = s.split(" V=")[0] + ("*" if "(default)" in s else "")
            ax.annotate(label.replace(" (default)", ""), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.02, color="grey", ls="--", lw=0.8, label="nRMSE 0.02 (* = default)")
    ax.set(
        xscale="log", yscale="log", xlabel="tokens per chunk (mean)", ylabel="normalised RMSE (held out)", title=title
    )
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([10, 15, 20, 30, 40, 60, 100])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    train, test, fps, desc = load_data(cfg)
    flat = train.reshape(-1, train.shape[-1])
    low, high = flat.min(0), flat.max(0)
    print(f"{desc}; train {train.shape}, test {test.shape}")
    rows = []
    for kind, setting, make in sweep():
        row: dict[str, Any] = {"kind": kind, "setting": setting}
        try:
            t0 = time.perf_counter()
            tok = make().fit(train)
            row["fit_s"] = time.perf_counter() - t0
            row.update(measure(tok, test, low, high, fps))
        except ValueError as e:  # e.g. a BPE vocabulary smaller than the scale's alphabet
            row["error"] = str(e).split(";")[0]
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "nrmse_per_dim"})
    ref = next(r for r in rows if r["kind"] == "binning" and "(default)" in r["setting"])
    dct = next(r for r in rows if r["kind"] == "dct_bpe" and "(default)" in r["setting"])
    met = dct["nrmse"] <= 0.02 and ref["tokens_mean"] >= 3 * dct["tokens_mean"]
    summary = (
        f"default DCT+BPE: {dct['tokens_mean']:.1f} tokens/chunk vs binning {ref['tokens_mean']:.0f} "
        f"({ref['tokens_mean'] / dct['tokens_mean']:.1f}x fewer), nRMSE {dct['nrmse']:.4f} "
        f"(budget: nRMSE <= 0.02 with >= 3x fewer tokens: {'met' if met else 'NOT met'})"
    )
    md = table(rows, desc, len(test), ref["tokens_mean"]) + "\n" + summary + "\n"
    write_text_atomic(cfg.out / "table.md", md)
    write_json_atomic(
        cfg.out / "results.json",
        {
            "data": desc,
            "horizon": cfg.horizon,
            "fps": fps,
            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "rows": rows,
            "summary": summary,
        },
    )
    name = "synthetic" if cfg.synthetic else cfg.dataset.name
    plot(rows, cfg.out / "rate_distortion.png", f"action tokenizers, H={cfg.horizon} ({name})")
    print(md)
    print(f"wrote {cfg.out / 'table.md'}, {cfg.out / 'results.json'}, {cfg.out / 'rate_distortion.png'}")


if __name__ == "__main__":
    main()
