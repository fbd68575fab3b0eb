"""robotok-record: episodes of the real envs, read back, equal what the env produced (frames within 2 levels)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from robotok.datasets.lerobot_v3 import LeRobotDataset
from robotok.sim_envs.record import RecordConfig, main, record, run_episode


def make_env(env_id: str):
    """The real env, or a skip saying why it is not usable yet."""
    try:
        import gymnasium as gym

        import robotok.sim_envs

        env = gym.make(env_id, width=64, height=64)
        env.reset(seed=0)
        robotok.sim_envs.make_expert(env)
    except Exception as exc:  # env modules are developed separately; say what is missing
        pytest.skip(f"{env_id} is not usable here ({type(exc).__name__}: {exc})")
    return env


@pytest.mark.parametrize(("env_id", "workers", "episodes"), [("robotok/PickCup-v0", 2, 3), ("robotok/Drive-v0", 1, 2)])
def test_record_round_trip(tmp_path, env_id, workers, episodes):
    env = make_env(env_id)
    out = tmp_path / "ds"
    summary = record(RecordConfig(env=env_id, episodes=episodes, out=out, workers=workers))
    assert summary["episodes"] == episodes and summary["size_mb"] > 0
    ds = LeRobotDataset(out)
    seeds = [e["seed"] for e in json.loads((out / "meta/recording.json").read_text())["episodes"]]
    assert ds.num_episodes == episodes and len(set(seeds)) == episodes
    if workers == 2:
        assert sorted(seeds) == list(range(episodes))  # interleaved: worker 0 seeds 0, 2; worker 1 seed 1
    assert ds.camera_keys == [f"observation.images.{cam}" for cam in env.observation_space["pixels"].spaces]
    assert ds.fps == env.metadata["render_fps"]
    # Replay each seed in this process: the env and expert are deterministic, so this is what was recorded.
    for i, seed in enumerate(seeds):
        expected, prompt, success = run_episode(env, seed, noise=0.0)
        got = ds.episode(i)
        assert success and got["task"] == prompt
        np.testing.assert_array_equal(got["observation.state"], expected["observation.state"])
        np.testing.assert_array_equal(got["action"], expected["action"])
        assert got["observation.state"].shape[1] == env.observation_space["agent_pos"].shape[0]
        for key in ds.camera_keys:  # H.264 yuv444p crf 0: RGB<->YUV rounding only
            assert got[key].shape == expected[key].shape
            assert np.abs(got[key].astype(np.int16) - expected[key]).max() <= 2, key
    assert summary["frames"] == ds.num_frames == int(ds.episode_lengths.sum())
    env.close()


@pytest.mark.parametrize("env_id", ["robotok/PickCup-v0", "robotok/Drive-v0"])
def test_noisy_demonstrations_label_each_step_with_the_intended_command(tmp_path, env_id):
    """Under --noise the robot moves by the perturbed command (``action.executed``) and each step's ``action``
    is what the expert meant there: replaying the executed commands reproduces the states, and a noise-free
    expert walked along those states commands exactly the stored actions."""
    import robotok.sim_envs

    env = make_env(env_id)
    out = tmp_path / "ds"
    record(RecordConfig(env=env_id, episodes=2, out=out, workers=1, noise=0.3))
    ds = LeRobotDataset(out)
    recording = json.loads((out / "meta/recording.json").read_text())
    assert recording["label"] == "intended"
    perturbed = 0
    for i, ep in enumerate(recording["episodes"]):
        got = ds.episode(i, load_images=False)
        obs, _ = env.reset(seed=ep["seed"])
        clean = robotok.sim_envs.make_expert(env, noise=0.0)
        for t, (state, executed) in enumerate(zip(got["observation.state"], got["action.executed"], strict=True)):
            np.testing.assert_array_equal(np.asarray(obs["agent_pos"], np.float32), state)
            want, _ = clean.act(obs)
            np.testing.assert_array_equal(want, got["action"][t])
            obs, *_ = env.step(executed)
        perturbed += int(np.any(np.abs(got["action"] - got["action.executed"]) > 0.05, axis=1).sum())
    assert perturbed > 0  # the noise did move the robot off the expert's command
    env.close()


class Stray:
    """A policy that drives the grip away from the table's middle and closes it: states no demonstration shows."""

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def select_action(self, obs: dict) -> np.ndarray:
        assert "task" in obs and "pixels" in obs  # what a policy is given: the observation and the prompt
        return np.array([1.0, -1.0, 0.5, 0.0, 1.0], np.float32)


def test_corrections_label_the_policys_own_states_with_the_expert(tmp_path):
    """--policy (DAgger-style): the policy drives the first K steps, the expert walked along those very states
    labels every step, then takes over, recovers and succeeds. Replaying ``action.executed`` from the seed gives
    the recorded states; a fresh expert walked along them commands exactly the stored ``action``."""
    import robotok.sim_envs
    from robotok.sim_envs.record import handover_step

    env = make_env("robotok/PickCup-v0")
    seed, stray = 3, Stray()
    handover = handover_step(seed, 40)
    assert handover_step(seed, 40) == handover and 1 <= handover <= 40  # the seed decides it
    assert len({handover_step(s, 40) for s in range(50)}) > 10
    got, prompt, success = run_episode(env, seed, 0.0, actor=stray, handover=30)
    assert success and stray.resets == 1
    obs, info = env.reset(seed=seed)
    assert info["prompt"] == prompt
    clean = robotok.sim_envs.make_expert(env, noise=0.0)
    for t, (state, executed) in enumerate(zip(got["observation.state"], got["action.executed"], strict=True)):
        np.testing.assert_array_equal(np.asarray(obs["agent_pos"], np.float32), state)
        want, _ = clean.act(obs)
        np.testing.assert_array_equal(want, got["action"][t])
        if t < 30:
            np.testing.assert_array_equal(executed, stray.select_action({"task": "", "pixels": {}}))
        else:
            np.testing.assert_array_equal(executed, want)  # the expert drives, without noise, as it means
        obs, *_ = env.step(executed)
    # the labels of the stray steps say how to get back: they disagree with what the policy did
    assert np.abs(got["action"][:30] - got["action.executed"][:30]).max(axis=1).min() > 0.5
    env.close()


def test_every_target_records_each_scene_once_per_named_cup(tmp_path):
    """--every-target: the episodes of one seed share their first frame and differ in the named cup, the
    prompt and where the expert goes."""
    out = tmp_path / "ds"
    record(RecordConfig(env="robotok/PickCup-v0", episodes=5, out=out, workers=1, every_target=True))
    ds = LeRobotDataset(out)
    eps = json.loads((out / "meta/recording.json").read_text())["episodes"]
    seed0 = [i for i, e in enumerate(eps) if e["seed"] == 0]
    env = make_env("robotok/PickCup-v0")
    env.reset(seed=0)
    colors = list(env.unwrapped.cup_colors)
    assert [eps[i]["target_color"] for i in seed0] == colors[: len(seed0)] and len(seed0) >= 2
    first = [ds.episode(i) for i in seed0]
    for got, color in zip(first, colors, strict=False):
        assert color in got["task"] and got["task"] == first[0]["task"].replace(colors[0], color)
        np.testing.assert_array_equal(got["observation.images.front"][0], first[0]["observation.images.front"][0])
    ends = np.array([ep["observation.state"][-1, :2] for ep in first])  # grip x, y where each episode ends
    assert min(np.linalg.norm(a - b) for k, a in enumerate(ends) for b in ends[k + 1 :]) > 0.1  # cups >= 15 cm apart
    env.close()


def test_env_kwargs_reach_the_env(tmp_path):
    """--env-kwargs '{"num_cups": 1}': the recorded episodes are those of the one-cup env, replayed here."""
    import gymnasium as gym

    out = tmp_path / "ds"
    record(RecordConfig(env="robotok/PickCup-v0", episodes=2, out=out, env_kwargs='{"num_cups": 1}'))
    rec = json.loads((out / "meta/recording.json").read_text())
    assert rec["env_kwargs"] == {"num_cups": 1}
    one = gym.make("robotok/PickCup-v0", width=64, height=64, num_cups=1)
    ds = LeRobotDataset(out)
    for i, e in enumerate(rec["episodes"]):
        expected, prompt, _ = run_episode(one, e["seed"], noise=0.0)
        assert len(one.unwrapped.cup_colors) == 1 and ds.episode(i)["task"] == prompt
        np.testing.assert_array_equal(ds.episode(i)["observation.state"], expected["observation.state"])
    one.close()


def test_bad_input_is_one_line_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit, match="unknown env id 'robotok/Nope-v0'"):
        record(RecordConfig(env="robotok/Nope-v0", episodes=1, out=tmp_path / "x"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit, match="already exists"):
        record(RecordConfig(episodes=1, out=tmp_path / "taken"))
    monkeypatch.setattr(sys, "argv", ["robotok-record", "--episodes", "0", "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit):
        main()
    assert "episodes=0, workers=1: both must be >= 1" in capsys.readouterr().err
    from robotok.evaluate.corrections import CorrectionsConfig, record_corrections

    with pytest.raises(SystemExit, match="is not a checkpoint directory"):
        record_corrections(CorrectionsConfig(episodes=1, out=tmp_path / "w", policy=tmp_path / "taken"))
    with pytest.raises(SystemExit, match="drop --label executed"):
        record_corrections(CorrectionsConfig(episodes=1, out=tmp_path / "w", policy=tmp_path, label="executed"))
    with pytest.raises(ValueError, match="drop --label executed"):
        record(RecordConfig(episodes=1, out=tmp_path / "w", label="executed"), make_actor=Stray)
    with pytest.raises(ValueError, match="--env-kwargs must be a JSON object"):
        RecordConfig(episodes=1, out=tmp_path / "z", env_kwargs="[1]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing half-written left behind
