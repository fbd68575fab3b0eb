"""Exported bundle vs torch: per-chunk latency of torch eager, onnxruntime fp32 and int8, and int8 success in the sim.

    python benchmarks/export_speed.py --checkpoint runs/demo/policy [--threads 2] [--chunks 60] [--episodes 50]

1. Exports the checkpoint twice (fp32 and ``--int8``) into ``--out``.
2. Renders observations from expert episodes of ``--env`` (seeds 0, 1, ...; the env's own prompt) and feeds
   the SAME observation sequence to three policies: ``robotok.policy.Policy`` (torch eager, KV cache) and
   ``RobotPolicy`` on the fp32 and the int8 bundle. Calls are interleaved (torch, fp32, int8 per observation)
   so that load from other processes hits the three alike. Each policy's own ``chunk_latencies_ms`` are
   reported (observation encoding, prefill and constrained decoding of one chunk), p50/p99 with the ratio to
   torch, plus how often the bundles' greedy ids equal torch's. All on ``--threads`` CPU threads.
3. With ``--episodes N``: ``robotok.evaluate`` rolls out both bundles on the same N unseen seeds; int8 passes
   when its success rate is at least the lower end of fp32's 95% Wilson interval.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class BenchConfig:
    """Latency and success of the exported bundle against torch."""

    checkpoint: Path = Path("runs/demo/policy")
    """Checkpoint directory written by robotok-train."""
    out: Path = Path("runs/bench/export_speed")
    """Where the two bundles (bundle_fp32, bundle_int8) and the eval report go."""
    env: str = "robotok/PickCup-v0"
    """Env whose observations are fed to the policies (it must match one of the checkpoint's embodiments)."""
    chunks: int = 60
    """Observations (one chunk predicted each) per policy for the latency figures."""
    episode_steps: int = 30
    """Observations taken from each expert episode before moving to the next seed."""
    threads: int = 2
    """CPU threads for torch (set_num_threads) and onnxruntime (intra-op)."""
    episodes: int = 0
    """Sim episodes per bundle for the int8-vs-fp32 success check (0: skip)."""

    def __post_init__(self) -> None:
        if self.chunks < 2 or self.episode_steps < 1 or self.threads < 1 or self.episodes < 0:
            raise ValueError(
                f"chunks {self.chunks} (>= 2), episode_steps {self.episode_steps}, threads "
                f"{self.threads} (>= 1), episodes {self.episodes} (>= 0)"
            )


def observations(env_id: str, n: int, per_episode: int) -> list[tuple[bool, dict]]:
    """(first step of an episode?, observation + task) from expert rollouts, seeds 0, 1, ..."""
    import gymnasium as gym

    import robotok.sim_envs  # noqa: F401  (registers the env ids)
    from robotok.sim_envs import make_expert

    env, out, seed = gym.make(env_id), [], 0
    while len(out) < n:
        obs, info = env.reset(seed=seed)
        expert = make_expert(env)
        for t in range(per_episode):
            out.append((t == 0, {**obs, "task": info["prompt"]}))
            obs, _, term, trunc, _ = env.step(expert(obs))
            if term or trunc or len(out) == n:
                break
        seed += 1
    env.close()
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def latency(cfg: BenchConfig, bundles: dict[str, Path]) -> dict[str, dict[str, float]]:
    import torch

    from robotok.policy.inference import Policy
    from robotok.policy.runtime import RobotPolicy

    torch.set_num_threads(cfg.threads)
    policies = {"torch eager": Policy.from_checkpoint(cfg.checkpoint)}
    policies.update({f"onnxruntime {k}": RobotPolicy(b, threads=cfg.threads) for k, b in bundles.items()})
    obs = observations(cfg.env, cfg.chunks + 2, cfg.episode_steps)
    ids: dict[str, list[list[int]]] = {k: [] for k in policies}
    actions: dict[str, list[np.ndarray]] = {k: [] for k in policies}
    for first, o in obs:
        for name, p in policies.items():
            if first:
                p.reset()
            actions[name].append(p.predict_chunk(o))
            ids[name].append(list(p.last_action_ids))
    out = {}
    base = policies["torch eager"].chunk_latencies_ms[2:]  # the first two: warm-up
    for name, p in policies.items():
        lat = p.chunk_latencies_ms[2:]
        same = np.mean([a == b for a, b in zip(ids[name], ids["torch eager"], strict=True)])
        diff = float(np.mean([np.abs(a - b).max() for a, b in zip(actions[name], actions["torch eager"], strict=True)]))
        out[name] = {
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "speedup_p50": pct(base, 50) / pct(lat, 50),
            "speedup_p99": pct(base, 99) / pct(lat, 99),
            "ids_equal_torch": float(same),
            "mean_max_abs_action_diff": diff,
            "tokens_per_chunk": statistics.mean(map(len, ids[name])),
        }
    return out


def success(cfg: BenchConfig, bundles: dict[str, Path]) -> dict[str, dict]:
    from robotok.evaluate.cli import EvalConfig, run

    report = run(
        EvalConfig(
            policy=str(bundles["fp32"]),
            compare=str(bundles["int8"]),
            env=(cfg.env,),
            episodes=cfg.episodes,
            out=cfg.out / "eval",
            workers=1,
            threads=cfg.threads,
            videos=0,
            progress=True,
        )
    )
    res = report["results"][cfg.env]
    return {k: res[b.resolve().name]["overall"] for k, b in bundles.items()}


def main() -> None:
    import tyro

    cfg = tyro.cli(BenchConfig)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
    if not (cfg.checkpoint / "config.json").is_file():
        raise SystemExit(
            f"export_speed: error: --checkpoint {cfg.checkpoint} is not a checkpoint directory "
            "(no config.json); train one with robotok-train"
        )
    from robotok.policy.export import export_bundle

    bundles = {k: export_bundle(cfg.checkpoint, cfg.out / f"bundle_{k}", int8=k == "int8") for k in ("fp32", "int8")}
    for k, b in bundles.items():
        m = json.loads((b / "manifest.json").read_text())
        mb = sum((b / f).stat().st_size for f in m["files"]) / 1e6
        print(f"bundle {k}: {mb:.1f} MB, check {m['check']}")
    lat = latency(cfg, bundles)
    print(f"\nper-chunk latency, {cfg.chunks} chunks of {cfg.env}, {cfg.threads} threads ({os.cpu_count()} CPUs):")
    print(
        f"{'policy':18s} {'p50 ms':>8s} {'p99 ms':>8s} {'x p50':>6s} {'x p99':>6s} {'ids=torch':>9s} "
        f"{'|da| max':>9s} {'ids/chunk':>9s}"
    )
    for name, r in lat.items():
        print(
            f"{name:18s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['speedup_p50']:6.2f} {r['speedup_p99']:6.2f} "
            f"{r['ids_equal_torch']:9.1%} {r['mean_max_abs_action_diff']:9.2e} {r['tokens_per_chunk']:9.1f}"
        )
    result = {"config": {k: str(v) for k, v in vars(cfg).items()}, "latency": lat}
    if cfg.episodes:
        succ = success(cfg, bundles)
        (lo, _), rate = succ["fp32"]["eval/success_ci95"], succ["int8"]["eval/success_rate"]
        for k, m in succ.items():
            ci = m["eval/success_ci95"]
            print(
                f"success {k}: {m['eval/success_rate']:.1%} [{ci[0]:.1%}, {ci[1]:.1%}] over {m['eval/episodes']} "
                f"episodes, decode failures {m['eval/decode_failures']}"
            )
        verdict = "PASS" if rate >= lo else "FAIL"
        print(f"int8 success {rate:.1%} vs fp32 Wilson lower bound {lo:.1%}: {verdict}")
        result["success"] = {**succ, "int8_within_wilson": rate >= lo}
    (cfg.out / "export_speed.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
