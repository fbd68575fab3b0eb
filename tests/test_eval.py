"""robotok-eval: metrics against known values, the report schema, annotated videos, rollouts in the real envs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from robotok.evaluate.metrics import (
    METRIC_KEYS,
    count_events,
    driving_score,
    group_by,
    summarize,
    wilson_interval,
)
from robotok.evaluate.report import EPISODE_KEYS, build_report, render_markdown, write_report
from robotok.evaluate.video import read_mp4, render_episode, write_mp4

ROOT = Path(__file__).resolve().parents[1]


# ---- metrics ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (5, 10, 0.2366, 0.7634),  # textbook values (e.g. Newcombe 1998, Brown, Cai & DasGupta 2001)
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (8, 10, 0.4902, 0.9433),
        (0, 20, 0.0, 0.1611),
        (80, 100, 0.7112, 0.8666),
    ],
)
def test_wilson_interval_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


@given(n=st.integers(1, 500), data=st.data())
def test_wilson_endpoints_solve_the_score_equation(n: int, data: st.DataObject) -> None:
    """Each interior endpoint p satisfies (k/n - p)^2 = z^2 p (1 - p) / n, and the interval contains k/n."""
    k = data.draw(st.integers(0, n))
    lo, hi = wilson_interval(k, n)
    z, p_hat = 1.959963984540054, k / n
    assert 0.0 <= lo <= p_hat <= hi <= 1.0
    for p in (lo, hi):
        if 0.0 < p < 1.0:
            assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-6, abs=1e-12)


def test_wilson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="n=0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes=11"):
        wilson_interval(11, 10)


def test_driving_score_and_event_counting() -> None:
    assert driving_score(1.0, 0, 0) == 1.0
    assert driving_score(0.8, 1, 0) == pytest.approx(0.4)
    assert driving_score(1.0, 1, 2) == pytest.approx(0.5 * 0.7 * 0.7)
    assert count_events([False, True, True, False, True, False]) == 2  # two excursions, not three steps
    assert count_events([]) == 0
    with pytest.raises(ValueError, match="route_completion"):
        driving_score(1.5, 0, 0)


def _record(env: str, policy: str, i: int, success: bool, **kw: object) -> dict:
    drive = env.endswith("Drive-v0")
    return {
        "env": env,
        "policy": policy,
        "episode": i,
        "seed": 100 + i,
        "prompt": f"go {'left' if i % 2 else 'right'}",
        "target": "left" if i % 2 else "right",
        "success": success,
        "return": float(i),
        "length": 10 + i,
        "wrong_object": None if drive else (not success and i % 3 == 0),
        "route_completion": (1.0 if success else 0.5) if drive else None,
        "collisions": (0 if success else 1) if drive else None,
        "off_road": (i % 2) if drive else None,
        "decode_failures": i % 2,
        "action_latency_ms": [1.0] * 9 + [20.0],
        "chunk_latency_ms": [20.0],
        "video": None,
        **kw,
    }


def test_summarize_on_synthetic_records() -> None:
    recs = [_record("robotok/Drive-v0", "p", i, success=i < 6) for i in range(8)]
    m = summarize(recs)
    assert tuple(m) == METRIC_KEYS
    assert m["eval/episodes"] == 8 and m["eval/successes"] == 6 and m["eval/success_rate"] == 0.75
    assert m["eval/success_ci95"] == pytest.approx(list(wilson_interval(6, 8)))
    assert m["eval/route_completion_mean"] == pytest.approx((6 * 1.0 + 2 * 0.5) / 8)
    assert m["eval/collisions_mean"] == pytest.approx(2 / 8)
    # per episode: success -> 1.0 * 0.7^(i%2); failure -> 0.5 * 0.5 * 0.7^(i%2)
    scores = [(1.0 if i < 6 else 0.25) * 0.7 ** (i % 2) for i in range(8)]
    assert m["eval/driving_score_mean"] == pytest.approx(np.mean(scores))
    assert m["eval/wrong_object_rate"] is None  # not a PickCup metric
    assert m["eval/decode_failures"] == 4
    assert m["eval/latency_ms_p50"] == pytest.approx(1.0)
    assert m["eval/latency_ms_p99"] > 10.0  # the chunk-inference step dominates the tail
    assert m["eval/control_hz_p99"] == pytest.approx(1000.0 / m["eval/latency_ms_p99"])
    assert m["eval/control_hz_sustained"] == pytest.approx(1000.0 / 2.9)
    assert set(group_by(recs, "target")) == {"left", "right"}


def test_report_keys_present_and_typed(tmp_path: Path) -> None:
    recs = [_record("robotok/PickCup-v0", "ckpt", i, success=i % 4 != 0) for i in range(8)]
    recs += [_record("robotok/Drive-v0", "ckpt", i, success=True) for i in range(8)]
    recs += [_record("robotok/PickCup-v0", "random", i, success=False) for i in range(8)]
    report = build_report(recs, {"episodes": 8, "seed_start": 100}, ["ckpt", "random"])
    write_report(report, tmp_path)
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded["schema"] == "robotok.eval/1" and loaded["policy"] == "ckpt"
    assert set(loaded["results"]) == {"robotok/PickCup-v0", "robotok/Drive-v0"}
    assert set(loaded["results"]["robotok/PickCup-v0"]) == {"ckpt", "random"}
    assert set(loaded["results"]["robotok/Drive-v0"]) == {"ckpt"}  # no random rows were run there
    for by_policy in loaded["results"].values():
        for res in by_policy.values():
            for metrics in [res["overall"], *res["per_prompt"].values(), *res["per_target"].values()]:
                assert tuple(metrics) == METRIC_KEYS
                assert isinstance(metrics["eval/episodes"], int) and isinstance(metrics["eval/successes"], int)
                assert isinstance(metrics["eval/success_rate"], float)
                lo, hi = metrics["eval/success_ci95"]
                assert 0.0 <= lo <= metrics["eval/success_rate"] <= hi <= 1.0
                for key in ("eval/latency_ms_p50", "eval/latency_ms_p99", "eval/return_mean"):
                    assert isinstance(metrics[key], float) and math.isfinite(metrics[key])
    pick = loaded["results"]["robotok/PickCup-v0"]
    assert pick["ckpt"]["overall"]["eval/success_rate"] == 0.75
    assert isinstance(pick["ckpt"]["overall"]["eval/wrong_object_rate"], float)
    assert pick["ckpt"]["overall"]["eval/driving_score_mean"] is None
    assert sum(m["eval/episodes"] for m in pick["ckpt"]["per_prompt"].values()) == 8
    assert len(loaded["episodes"]) == 24 and all(tuple(e) == EPISODE_KEYS for e in loaded["episodes"])
    md = (tmp_path / "report.md").read_text()
    assert "## robotok/PickCup-v0" in md and "| `random` |" in md and "75% [" in md
    assert "driving score" in md.split("## robotok/Drive-v0")[1] and "wrong cup" not in md.split("## robotok/Drive")[1]


def test_markdown_handles_policies_without_chunk_timings() -> None:
    recs = [_record("robotok/PickCup-v0", "expert", i, success=True, chunk_latency_ms=[]) for i in range(3)]
    md = render_markdown(build_report(recs, {}, ["expert"]))
    assert "ms/chunk" not in md and "ms/action" in md


def test_annotated_video_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [
        {"front": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "wrist": np.full((64, 64, 3), 10 * t, np.uint8)}
        for t in range(12)
    ]
    annotated = render_episode(frames, "pick up the red cup", "expert · seed 1", success=False)
    assert annotated[0].shape == (256 + 48, 512, 3)
    # the cameras are upscaled by nearest neighbour: each source pixel is a 4x4 block
    np.testing.assert_array_equal(annotated[3][48:-20, :256][::4, ::4], frames[3]["front"][:-5])  # above the label
    assert (annotated[0][:48] != annotated[0][:48].reshape(-1, 3)[0]).any(), "the banner carries no text"
    path = write_mp4(tmp_path / "ep.mp4", annotated, fps=20, hold_last_s=0.5)
    back = read_mp4(path)
    assert len(back) == 12 + 10 and back[0].shape == annotated[0].shape
    assert np.abs(back[11][48:, 256:].astype(int) - 110).mean() < 4  # the flat wrist frame survives encoding


# ---- command line -------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "robotok.evaluate.cli", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_cli_bad_policy_path_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_ckpt"
    r = _cli("--policy", str(missing), "--env", "robotok/PickCup-v0", "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert str(missing) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "empty").mkdir()
    r = _cli("--policy", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "config.json" in r.stderr


def test_cli_unknown_env_is_one_line(tmp_path: Path) -> None:
    r = _cli("--policy", "expert", "--env", "robotok/Nope-v0", "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "robotok/Nope-v0" in r.stderr and "robotok/PickCup-v0" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---- rollouts in the real envs ------------------------------------------------------------------------------

PICK, DRIVE = "robotok/PickCup-v0", "robotok/Drive-v0"


def _run(tmp_path: Path, **kw: object) -> dict:
    from robotok.evaluate.cli import EvalConfig, run

    return run(EvalConfig(out=tmp_path / "eval", progress=False, **kw))


def test_episodes_are_deterministic_by_seed_whatever_the_workers(tmp_path: Path) -> None:
    """Episode i runs under seed seed_start + i: one worker in-process and two spawned workers agree."""
    from robotok.evaluate.rollout import EpisodeJob, RolloutSpec, run_jobs

    spec = RolloutSpec(env_id=PICK, policy="random")
    jobs = [EpisodeJob(spec=spec, episode=i, seed=7 + i) for i in range(3)]
    keys = ("seed", "prompt", "target", "return", "length", "success", "wrong_object")
    one = [{k: r[k] for k in keys} for r in run_jobs(jobs, workers=1, progress=False)]
    two = [{k: r[k] for k in keys} for r in run_jobs(jobs, workers=2, progress=False)]
    assert one == two
    assert len({(r["prompt"], r["target"]) for r in one}) == 3, "different seeds should give different scenes"


def test_learned_policy_counters_are_per_episode() -> None:
    """Decode failures and chunk latencies are read from the policy and counted per episode, not cumulatively."""
    import gymnasium as gym

    import robotok.sim_envs  # noqa: F401
    from robotok.evaluate.rollout import EpisodeJob, PolicyAdapter, RolloutSpec, run_episode

    class Chunked:  # a stand-in with the Policy attributes robotok-eval reads: a chunk of 4, every 3rd bad
        def __init__(self) -> None:
            self.decode_failures, self.chunk_latencies_ms, self.calls = 0, [], 0

        def reset(self) -> None:
            self.queue = []

        def select_action(self, obs: dict) -> np.ndarray:
            assert isinstance(obs["task"], str) and obs["pixels"]["front"].shape == (64, 64, 3)
            if not self.queue:
                self.calls += 1
                self.decode_failures += self.calls % 3 == 0
                self.chunk_latencies_ms.append(5.0)
                self.queue = [np.zeros(5, np.float32)] * 4
            return self.queue.pop()

    env = gym.make(PICK)
    spec = RolloutSpec(env_id=PICK, policy="stand-in")
    adapter = PolicyAdapter(spec, loaded=Chunked())
    recs = [run_episode(env, adapter, EpisodeJob(spec=spec, episode=i, seed=i), {}) for i in range(2)]
    env.close()
    for r in recs:
        assert r["length"] == 200 and not r["success"]  # holding still picks nothing up
        assert len(r["action_latency_ms"]) == 200 and r["chunk_latency_ms"] == [5.0] * 50
    assert [r["decode_failures"] for r in recs] == [16, 17]  # chunks 1-50 then 51-100: multiples of 3


def test_prompt_sweep_prompts_each_cup_on_the_table(tmp_path: Path) -> None:
    report = _run(tmp_path, policy="expert", env=(PICK,), episodes=2, workers=1, videos=1, prompt_sweep=True)
    eps = report["episodes"]
    assert {e["seed"] for e in eps} == {100_000, 100_001}
    for seed in (100_000, 100_001):
        targets = [e["target"] for e in eps if e["seed"] == seed]
        assert len(targets) == len(set(targets)) >= 2, "each cup colour of the scene once"
        assert all(t in e["prompt"] for e in eps if e["seed"] == seed for t in [e["target"]])
    per_target = report["results"][PICK]["expert"]["per_target"]
    assert sum(m["eval/episodes"] for m in per_target.values()) == len(eps)
    videos = report["results"][PICK]["expert"]["videos"]
    assert len(videos) == len([e for e in eps if e["seed"] == 100_000])  # first seed, one video per target
    assert all((tmp_path / "eval" / v).stat().st_size > 1000 for v in videos)
    assert (tmp_path / "eval" / report["results"][PICK]["expert"]["still"]).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", [PICK, DRIVE])
def test_expert_succeeds_and_random_does_not(tmp_path: Path, env_id: str) -> None:
    report = _run(tmp_path, policy="expert", compare="random", env=(env_id,), episodes=20, workers=2, videos=1)
    expert = report["results"][env_id]["expert"]["overall"]
    rand = report["results"][env_id]["random"]["overall"]
    assert expert["eval/episodes"] == rand["eval/episodes"] == 20
    assert expert["eval/success_rate"] >= 0.95, expert
    assert rand["eval/success_rate"] <= 0.3, rand  # random drifting can stop before the cone (route "stop")
    assert rand["eval/success_ci95"][1] < expert["eval/success_ci95"][0]  # the intervals do not overlap
    if env_id == DRIVE:
        assert expert["eval/driving_score_mean"] > rand["eval/driving_score_mean"]
    else:
        assert expert["eval/wrong_object_rate"] == 0.0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["policies"] == ["expert", "random"]
    assert (tmp_path / "eval" / report["results"][env_id]["expert"]["videos"][0]).is_file()


def _random_checkpoint(out: Path, horizon: int = 4) -> Path:
    """A checkpoint directory as robotok-train writes it, for both envs, with random weights (1 layer, d=32)."""
    from dataclasses import asdict

    import torch
    from safetensors.torch import save_file

    from robotok.policy.model import ModelConfig, Transformer
    from robotok.tokenizers.action import BinningTokenizer
    from robotok.tokenizers.space import ActionRange, Embodiment, TokenSpace
    from robotok.tokenizers.video import VideoTokenizer, VideoTokenizerConfig

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    robots = [("pick", 6, 5, ["front", "wrist"]), ("drive", 9, 2, ["front", "top"])]  # name, state, action, cams
    toks = [
        BinningTokenizer(bins=16).fit(rng.uniform(-1, 1, (64, horizon, a)).astype(np.float32)) for *_, a, _ in robots
    ]
    vt = VideoTokenizer(cfg=VideoTokenizerConfig(image_size=(64, 64), downsample=16, levels=(4, 4), channels=(8,)))
    ranges = [ActionRange(n, t.vocab_size, length=horizon * a) for (n, _, a, _), t in zip(robots, toks, strict=True)]
    embodiments = [Embodiment(n, [-1.0] * s, [1.0] * s, i) for i, (n, s, _, _) in enumerate(robots)]
    space = TokenSpace(state_bins=16, video_vocab=vt.vocab_size, action_ranges=ranges, embodiments=embodiments)
    conventions = {
        "horizon": horizon, "n_action_steps": horizon, "history": 1, "history_stride": 1, "seq_len": 256,
        "embodiments": [
            {"name": n, "tasks": [], "cameras": c, "state_dim": s, "action_dim": a, "tokenizer_dim": a,
             "image_size": [64, 64], "action_range": i, "hold": [0.0] * a}
            for i, (n, s, a, c) in enumerate(robots)
        ],
    }  # fmt: skip
    cfg = ModelConfig(vocab_size=space.vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=256)
    out.mkdir(parents=True)
    space.save(out / "token_space.json")
    (out / "policy.json").write_text(json.dumps(conventions))
    (out / "config.json").write_text(json.dumps({"model": asdict(cfg)}))
    save_file({k: v.contiguous() for k, v in Transformer(cfg).state_dict().items()}, out / "model.safetensors")
    for (n, *_), t in zip(robots, toks, strict=True):
        t.save(out / "tokenizers" / "action" / n)
    vt.save(out / "tokenizers" / "video")
    return out


def test_checkpoint_policy_is_evaluated_with_chunk_latencies(tmp_path: Path) -> None:
    """A checkpoint directory goes through Policy.from_checkpoint; its chunk timings and counters reach the report."""
    ckpt = _random_checkpoint(tmp_path / "my_ckpt")
    report = _run(tmp_path, policy=str(ckpt), env=(PICK, DRIVE), episodes=1, workers=1, videos=0)
    assert report["policy"] == "my_ckpt"
    for env_id in (PICK, DRIVE):
        m = report["results"][env_id]["my_ckpt"]["overall"]
        assert isinstance(m["eval/decode_failures"], int)
        assert isinstance(m["eval/chunk_latency_ms_p50"], float)
        # 3 of every 4 actions come from the queue: the median action is far cheaper than a chunk
        assert m["eval/latency_ms_p50"] < 0.5 * m["eval/chunk_latency_ms_p50"]


def test_n_action_steps_sets_how_often_a_checkpoint_replans(tmp_path: Path) -> None:
    """--n-action-steps 1 replans at every step: each action then costs a whole chunk; a bad value is refused."""
    from robotok.evaluate.cli import EvalConfig

    ckpt = _random_checkpoint(tmp_path / "ckpt")
    report = _run(tmp_path, policy=str(ckpt), env=(PICK,), episodes=1, workers=1, videos=0, n_action_steps=1)
    m = report["results"][PICK]["ckpt"]["overall"]
    assert m["eval/latency_ms_p50"] > 0.5 * m["eval/chunk_latency_ms_p50"]
    with pytest.raises(ValueError, match="n_action_steps"):
        EvalConfig(policy=str(ckpt), n_action_steps=-1)


def test_temperature_samples_a_checkpoint_and_repeats_by_seed(tmp_path: Path) -> None:
    """--temperature samples the checkpoint's tokens (other actions than greedy decoding), the same ones for the
    same seed; a negative value, or sampling asked of an exported bundle, is refused."""
    import gymnasium as gym

    import robotok.sim_envs  # noqa: F401
    from robotok.evaluate.cli import EvalConfig, validate
    from robotok.evaluate.rollout import PolicyAdapter, RolloutSpec

    ckpt = _random_checkpoint(tmp_path / "ckpt")
    env = gym.make(PICK)

    def first_chunk(temperature: float, seed: int = 3) -> np.ndarray:
        adapter = PolicyAdapter(RolloutSpec(env_id=PICK, policy=str(ckpt), temperature=temperature))
        assert adapter.policy.temperature == temperature
        obs, info = env.reset(seed=seed)
        adapter.reset(env, seed)
        obs = {**obs, "task": info["prompt"]}
        return np.stack([adapter.select_action(obs) for _ in range(4)])  # one chunk (horizon 4)

    greedy, sampled, again = first_chunk(0.0), first_chunk(1.0), first_chunk(1.0)
    env.close()
    assert np.array_equal(sampled, again)
    assert not np.allclose(greedy, sampled)
    with pytest.raises(ValueError, match="temperature"):
        EvalConfig(policy=str(ckpt), temperature=-1.0)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="decodes greedily"):
        validate(EvalConfig(policy=str(bundle), env=(PICK,), temperature=0.5))
