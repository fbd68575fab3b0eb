"""robotok-eval: prompted rollouts of a policy in the sim -> report.json, report.md, annotated videos.

    robotok-eval --policy runs/demo/policy --env robotok/PickCup-v0 --env robotok/Drive-v0 \\
        --episodes 100 --seed-start 100000 --out runs/demo/eval --compare expert,random

``--policy`` is a checkpoint directory, an exported bundle directory, or the word ``expert`` or ``random``.
Episode ``i`` runs under seed ``seed_start + i`` (training data uses other seeds, so these scenes are
unseen), and ``--compare`` adds reference rows measured in the same run on the same seeds.
``--prompt-sweep`` runs every seed once per candidate target of its scene (each cup colour on the table,
each route), forcing the target through the env's reset options: a policy that follows the prompt
succeeds for every target, one with a favourite colour fails for the others.
The report's keys are documented in ``robotok.evaluate.report``; the metrics in ``robotok.evaluate.metrics``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from robotok.evaluate.report import build_report, write_report
from robotok.evaluate.rollout import EpisodeJob, RolloutSpec, policy_kind, policy_label, run_jobs
from robotok.sim_envs import json_object

PROG = "robotok-eval"


@dataclass
class EvalConfig:
    """Evaluate a policy on unseen seeds of the robotok envs."""

    policy: str = "expert"
    """Checkpoint dir (config.json + model.safetensors), exported bundle dir (manifest.json), 'expert' or 'random'."""
    env: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Env id to evaluate on; repeat the flag for several envs (none given: every robotok env)."""
    episodes: int = 100
    """Episodes (seeds) per env and policy; 100 gives a Wilson interval about +-8 points wide at 80%."""
    seed_start: int = 100_000
    """Seed of the first episode; episode i uses seed_start + i (demonstrations are recorded from seed 0)."""
    out: Path = Path("runs/eval")
    """Folder for report.json, report.md and videos/."""
    workers: int = 2
    """Parallel worker processes (spawned; each builds its own env and policy). 1 runs in this process."""
    threads: int = 1
    """Torch/OpenMP threads per worker process (latency figures depend on it)."""
    env_kwargs: str = "{}"
    """JSON object passed to gymnasium.make, e.g. '{"prompt_templates": ["fetch the {color} mug"]}'."""
    reset_options: str = "{}"
    """JSON object passed to env.reset(options=...) every episode, e.g. '{"target_color": "red"}'."""
    prompt_sweep: bool = False
    """Run each seed once per candidate target of its scene (cup colours / routes) and report success per target."""
    videos: int = 2
    """Annotated mp4 videos (and PNG stills) of the first K episodes of the evaluated policy, per env."""
    compare: str = ""
    """Comma-separated reference policies measured in the same run on the same seeds, e.g. 'expert,random'."""
    device: str = "cpu"
    """Torch device for a checkpoint policy ('cpu', 'cuda')."""
    n_action_steps: int = 0
    """Actions executed per predicted chunk before replanning (0: the checkpoint's own); 1 replans every step."""
    temperature: float = 0.0
    """Sample a checkpoint's tokens at this temperature instead of the most likely one (0: greedy); each episode's
    draws follow its seed, so a run repeats."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("episodes", "workers", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.n_action_steps < 0:
            raise ValueError(f"n_action_steps must be >= 0 (0: the checkpoint's own), got {self.n_action_steps}")
        if self.videos < 0 or self.seed_start < 0:
            raise ValueError(
                f"videos and seed_start must be >= 0, got videos={self.videos}, seed_start={self.seed_start}"
            )
        self.env = tuple(self.env)
        self.out = Path(self.out)
        json_object("env_kwargs", self.env_kwargs)
        json_object("reset_options", self.reset_options)

    @property
    def env_kwargs_dict(self) -> dict[str, Any]:
        return json_object("env_kwargs", self.env_kwargs)

    @property
    def reset_options_dict(self) -> dict[str, Any]:
        return json_object("reset_options", self.reset_options)

    @property
    def env_ids(self) -> tuple[str, ...]:
        from robotok.sim_envs import ENV_IDS

        return tuple(dict.fromkeys(self.env)) if self.env else ENV_IDS

    @property
    def policies(self) -> list[str]:
        """The evaluated policy first, then the distinct --compare references."""
        refs = [p.strip() for p in self.compare.split(",") if p.strip()]
        out: list[str] = []
        for p in [self.policy, *refs]:
            key = p if p in ("expert", "random") else str(Path(p).resolve())
            if key not in {q if q in ("expert", "random") else str(Path(q).resolve()) for q in out}:
                out.append(p)
        return out


def validate(cfg: EvalConfig) -> None:
    """Check what __post_init__ cannot (registered env ids, policy paths); ValueError naming the problem."""
    import gymnasium as gym

    import robotok.sim_envs  # noqa: F401  (registers the env ids)

    for env_id in cfg.env_ids:
        if env_id not in gym.registry:
            known = ", ".join(robotok.sim_envs.ENV_IDS)
            raise ValueError(f"unknown env id {env_id!r}; robotok envs are: {known}")
    labels = [policy_label(p) for p in cfg.policies]
    if len(set(labels)) < len(labels):
        raise ValueError(f"policies {cfg.policies} share a report name ({labels}); give their folders distinct names")
    for p in cfg.policies:
        if policy_kind(p) == "bundle":
            if cfg.temperature > 0:
                raise ValueError(
                    f"--temperature {cfg.temperature}: the exported bundle {p!r} decodes greedily; evaluate the "
                    "checkpoint directory to sample"
                )
            try:
                import robotok.policy.runtime  # noqa: F401
            except ImportError as e:
                raise ValueError(
                    f"--policy {p!r} is an exported bundle, but robotok.policy.runtime cannot be "
                    f"imported ({e}); evaluate the checkpoint directory instead"
                ) from e


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate, write report.json, report.md and the videos into ``cfg.out``, and return the report dict."""
    validate(cfg)
    out = cfg.out.resolve()
    video_dir = out / "videos"
    options_json = json.dumps(cfg.env_kwargs_dict, sort_keys=True)
    jobs = []
    for p_index, policy in enumerate(cfg.policies):
        for env_id in cfg.env_ids:
            spec = RolloutSpec(
                env_id=env_id,
                policy=policy,
                env_kwargs=options_json,
                device=cfg.device,
                n_action_steps=cfg.n_action_steps if policy_kind(policy) in ("checkpoint", "bundle") else 0,
                temperature=cfg.temperature if policy_kind(policy) == "checkpoint" else 0.0,
            )
            for i in range(cfg.episodes):
                video = str(video_dir) if p_index == 0 and i < cfg.videos else None
                jobs.append(
                    EpisodeJob(
                        spec=spec,
                        episode=i,
                        seed=cfg.seed_start + i,
                        reset_options=cfg.reset_options_dict,
                        sweep=cfg.prompt_sweep,
                        video_dir=video,
                    )
                )
    records = run_jobs(jobs, workers=cfg.workers, threads=cfg.threads, desc=PROG, progress=cfg.progress)
    stills: dict[tuple[str, str], str] = {}
    for r in records:
        if r["video"]:
            r["video"] = str(Path(r["video"]).relative_to(out))
            stills.setdefault((r["env"], r["policy"]), str(Path(r["video"]).with_suffix(".png")))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config["env"] = list(cfg.env_ids)
    report = build_report(records, config, [policy_label(p) for p in cfg.policies], stills)
    write_report(report, out)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per env and policy: success with its interval, and the p99 latency."""
    lines = []
    for env, by_policy in report["results"].items():
        for label, res in by_policy.items():
            m = res["overall"]
            lo, hi = m["eval/success_ci95"]
            lines.append(
                f"{env:20s} {label:16s} success {m['eval/success_rate']:6.1%} [{lo:.1%}, {hi:.1%}] "
                f"over {m['eval/episodes']} episodes, latency p99 {m['eval/latency_ms_p99']:.2f} ms/action"
            )
    return lines


def main() -> None:
    cfg = tyro.cli(EvalConfig, prog=PROG, description=__doc__.split("\n")[0])
    try:
        validate(cfg)
    except ValueError as e:  # bad input (unknown env id, missing policy): one line, no traceback
        raise SystemExit(f"{PROG}: error: {e}") from None
    report = run(cfg)
    print("\n".join(summary_lines(report)))
    print(f"{PROG}: wrote {cfg.out / 'report.json'} and {cfg.out / 'report.md'}")


if __name__ == "__main__":
    main()
