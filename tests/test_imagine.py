"""Imagination: the frame-loss model alternates actions and next-frame ids with no simulator, and
robotok-imagine compares its frames with the simulator's on the same actions."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from robotok.datasets.lerobot_v3 import LeRobotDataset, LeRobotDatasetWriter
from robotok.evaluate.imagine import (
    PSNR_MAX,
    beaten_until_s,
    beaten_words,
    frames_psnr,
    imagine_episode,
    main,
    on_reference,
    psnr,
    summarize,
)
from robotok.evaluate.metrics import bootstrap_mean_interval
from robotok.evaluate.video import read_mp4
from robotok.policy.inference import Policy
from robotok.policy.pretokenize import PretokenizeConfig, action_chunk, pretokenize
from robotok.policy.train import TrainConfig, train
from robotok.policy.world_model import WorldModel, check_frame_loss
from robotok.tokenizers.action import BinningTokenizer
from robotok.tokenizers.space import ACT_CLOSE, ACT_OPEN, FRAME_CLOSE, FRAME_OPEN, STATE_OPEN
from robotok.tokenizers.video import VideoTokenizer, VideoTokenizerConfig

IMG, HORIZON, N_ACT = 16, 4, 2
CAMS = ("front", "wrist")  # PickCup's cameras, its 6-D state and 5-D actions: the checkpoint drives the real env
PROMPTS = ("pick up the red cup", "pick up the blue cup")


def write_dataset(root: Path, episodes: int = 4) -> Path:
    rng = np.random.default_rng(0)
    features = {
        "observation.state": {"dtype": "float32", "shape": [6]},
        "action": {"dtype": "float32", "shape": [5]},
        **{f"observation.images.{c}": {"dtype": "video", "shape": [IMG, IMG, 3]} for c in CAMS},
    }
    with LeRobotDatasetWriter(root / "pick", fps=20, features=features, robot_type="pick") as w:
        for e in range(episodes):
            t = np.arange(12)[:, None]
            state = np.sin(0.3 * t + rng.uniform(0, 6, 6)).astype(np.float32)
            action = np.clip(np.sin(0.4 * t + rng.uniform(0, 6, 5)), -1, 1).astype(np.float32)
            ep = {"observation.state": state, "action": action}
            y, x = np.mgrid[:IMG, :IMG]
            for k, c in enumerate(CAMS):  # a pattern that slides with time
                base = (x[None] * 12 + y[None] * 6 + t[:, :, None] * 20 + 90 * k) % 256
                ep[f"observation.images.{c}"] = np.stack([base, 255 - base, base // 2], -1).astype(np.uint8)
            w.add_episode(ep, PROMPTS[e % 2])
    return root / "pick"


def make_ckpt(root: Path, frame_keep: bool = False) -> Path:
    """A micro checkpoint trained for a few steps on --frame-loss shards, through the real code paths."""
    ds = LeRobotDataset(write_dataset(root))
    chunks = np.stack(
        [
            action_chunk(ds.episode(i, load_images=False)["action"], t, HORIZON, 5)
            for i in range(ds.num_episodes)
            for t in range(12)
        ]
    )
    torch.manual_seed(0)
    vt = VideoTokenizer(cfg=VideoTokenizerConfig(image_size=(IMG, IMG), downsample=8, levels=(4, 4), channels=(8,)))
    cfg = PretokenizeConfig(
        out=str(root / "shards"),
        cameras=CAMS,
        horizon=HORIZON,
        n_action_steps=N_ACT,
        history=2,
        frame_loss=True,
        frame_keep=frame_keep,
        state_bins=32,
    )
    shards = pretokenize([("pick", ds)], [BinningTokenizer(bins=16).fit(chunks)], vt, cfg, progress=False)
    train(
        TrainConfig(
            data=shards,
            out=root / "ckpt",
            preset="micro",
            steps=30,
            batch_size=8,
            lr=3e-3,
            warmup_steps=2,
            frame_loss_weight=0.5,
            dtype="fp32",
            val_fraction=0.0,
            log_every=10,
            n_action_steps=(1,),  # the policy replans every step; the world-model frame stays N_ACT steps ahead
        )
    )
    return root / "ckpt"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("imagine"))


def first_obs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "pixels": {c: rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8) for c in CAMS},
        "agent_pos": rng.normal(0, 0.5, 6).astype(np.float32),
    }


def test_rollout_alternates_actions_and_frames_as_the_model_would_greedily(ckpt) -> None:
    wm = WorldModel.from_checkpoint(ckpt)
    space, model = wm.space, wm.model
    rollout = wm.start(first_obs(), PROMPTS[0])
    n_video = len(CAMS) * 2 * 2  # a 16x16 frame with 8x down-sampling: a 2x2 code grid per camera
    previous = None
    for k in range(4):
        chunk = rollout.step()
        assert chunk.actions.shape == (HORIZON, 5) and chunk.actions.dtype == np.float32
        assert len(chunk.codes) == 2 and all(c.shape == (2, 2) for c in chunk.codes)
        assert len(chunk.video_ids) == n_video and all(space.is_video(i) for i in chunk.video_ids)
        assert len(chunk.action_ids) == HORIZON * 5 and all(space.is_action(i, 0) for i in chunk.action_ids)
        assert rollout.t == (k + 1) * N_ACT
        # the imagined frame of the previous chunk IS the newest context frame of this one (history 2)
        a0 = chunk.tokens.index(ACT_OPEN) + 1
        opens = [i for i, tok in enumerate(chunk.tokens[:a0]) if tok == FRAME_OPEN]
        assert len(opens) == 2
        if previous is not None:
            assert chunk.tokens[opens[-1] + 1 : opens[-1] + 1 + n_video] == previous
        previous = chunk.video_ids
        # KV-cached generation == the greedy choice of a full forward pass under the grammar's masks
        with torch.no_grad():
            logits = model(torch.tensor([chunk.tokens]))[0][0]
        for j, tok in enumerate(chunk.action_ids):
            mask = wm.action_mask(j, 0)
            assert int(logits[a0 + j - 1].masked_fill(~mask, -math.inf).argmax()) == tok
        # then the frame, then (FRAME_CLOSE STATE_OPEN forced) the state after it: 6 state ids
        v0 = len(chunk.tokens) - n_video - 2 - 6
        assert chunk.tokens[v0 - 2 : v0] == [ACT_CLOSE, FRAME_OPEN]
        assert chunk.tokens[v0 + n_video : v0 + n_video + 2] == [FRAME_CLOSE, STATE_OPEN]
        for j, tok in enumerate(chunk.video_ids):
            assert int(logits[v0 + j - 1].masked_fill(~wm.video_mask, -math.inf).argmax()) == tok
        s0 = v0 + n_video + 2
        state_ids = chunk.tokens[s0:]
        lo, hi = space.ranges()["state"]
        assert len(state_ids) == 6 and all(lo <= i < hi for i in state_ids)
        for j, tok in enumerate(state_ids):
            assert int(logits[s0 + j - 1].masked_fill(~wm.state_mask, -math.inf).argmax()) == tok
        # the imagined state is the newest context state, as the imagined frame is the newest frame
        np.testing.assert_array_equal(chunk.state, space.decode_state(state_ids, 0))
        assert rollout.context()[-8:-2] == state_ids
    decoded = rollout.decode_frames(chunk.codes)
    assert sorted(decoded) == sorted(CAMS) and all(
        f.shape == (IMG, IMG, 3) and f.dtype == np.uint8 for f in decoded.values()
    )
    # a state from outside (the simulator's) overrides the imagined one
    new = np.full(6, 0.3, np.float32)
    rollout.set_state(new)
    assert rollout.context()[-8:-2] == space.encode_state(new, 0)


def test_stay_bias_pulls_each_cell_towards_its_current_code(ckpt) -> None:
    """WorldModel.stay_bias adds to the logit of each cell's own current code: an overwhelming bias copies the
    frame, an overwhelming negative one changes every cell (so it lands on each cell's code, not a neighbour's)."""
    obs = first_obs(1)
    for bias in (1e4, -1e4):
        rollout = WorldModel.from_checkpoint(ckpt, stay_bias=bias).start(obs, PROMPTS[0])
        for _ in range(2):
            current = [c.copy() for c in rollout._latest(rollout.frames, rollout.t)]
            for got, was in zip(rollout.step().codes, current, strict=True):
                assert (got == was).all() if bias > 0 else (got != was).all()


def test_imagination_advances_by_the_frame_offset_the_policy_acts_on_its_own_count(ckpt) -> None:
    """robotok-train --n-action-steps changes how the checkpoint acts, not what its world model predicts."""
    policy = json.loads((ckpt / "policy.json").read_text())
    assert policy["n_action_steps"] == 1 and policy["frame_steps"] == N_ACT
    assert Policy.from_checkpoint(ckpt).n_action_steps == 1
    assert WorldModel.from_checkpoint(ckpt).frame_steps == N_ACT
    with pytest.raises(SystemExit, match="--n-action-steps 5 exceeds the shards' action chunk of 4 steps"):
        train(TrainConfig(data=ckpt.parent / "shards", out=ckpt.parent / "bad", preset="micro", n_action_steps=(5,)))


def test_frames_predicted_as_a_change_resolve_keep_to_the_current_frame(tmp_path) -> None:
    """A --frame-keep checkpoint may emit KEEP at frame positions; it becomes the code the newest context
    frame has at that cell, and the resolved frame is what the next chunk's context shows."""
    wm = WorldModel.from_checkpoint(make_ckpt(tmp_path, frame_keep=True))
    space = wm.space
    assert space.keep_id is not None and bool(wm.video_mask[space.keep_id])
    rollout = wm.start(first_obs(1), PROMPTS[1])
    current, n_keep = np.stack(rollout.frames[0]), 0
    for _ in range(3):
        chunk = rollout.step()
        ids = np.asarray(chunk.video_ids).reshape(current.shape)
        keep = ids == space.keep_id
        n_keep += int(keep.sum())
        assert all(space.is_video(i) or i == space.keep_id for i in chunk.video_ids)
        np.testing.assert_array_equal(np.stack(chunk.codes)[keep], current[keep])
        np.testing.assert_array_equal(np.stack(chunk.codes)[~keep], ids[~keep] - space.video_start)
        # the next context shows the resolved frame as whole video ids (observed frames carry no KEEP)
        assert space.keep_id not in rollout.context()
        ctx = rollout.context()
        f = len(ctx) - 1 - ctx[::-1].index(FRAME_OPEN)
        assert ctx[f + 1 : f + 1 + ids.size] == space.video_ids(np.stack(chunk.codes)).ravel().tolist()
        current = np.stack(chunk.codes)
    assert n_keep > 0  # the shards' frames barely change, so the model learned KEEP: the test sees it resolved


def test_a_checkpoint_without_next_state_targets_holds_the_real_state(ckpt) -> None:
    p = Policy.from_checkpoint(ckpt)
    wm = WorldModel(Policy(p.model, p.space, {**p.config, "next_state": False}, p.action_tokenizers, p.video_tokenizer))
    rollout = wm.start(first_obs(), PROMPTS[0])
    s0 = wm.space.encode_state(first_obs()["agent_pos"], 0)
    for _ in range(2):
        chunk = rollout.step()
        assert chunk.state is None and wm.space.is_video(chunk.tokens[-1])  # it stops at the frame's last id
        assert rollout.context()[-8:-2] == s0


class Hostile(torch.nn.Module):
    """The checkpoint's model pushed to emit anything but video ids (+30 on every other id)."""

    def __init__(self, inner: torch.nn.Module, space):
        super().__init__()
        self.inner, self.cfg = inner, inner.cfg
        bias = torch.full((inner.cfg.vocab_size,), 30.0)
        lo, hi = space.ranges()["video"]
        bias[lo:hi] = 0.0
        self.register_buffer("bias", bias)

    def forward(self, idx, targets=None, weights=None):
        return self.inner(idx)[0] + self.bias, None

    def new_cache(self, batch, max_len=None):
        return self.inner.new_cache(batch, max_len)

    def forward_cached(self, idx, cache, last=False):
        return self.inner.forward_cached(idx, cache, last) + self.bias


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_frame_positions_admit_only_video_ids_even_from_a_hostile_model(ckpt, temperature) -> None:
    p = Policy.from_checkpoint(ckpt)
    wm = WorldModel(
        Policy(
            Hostile(p.model, p.space),
            p.space,
            p.config,
            p.action_tokenizers,
            p.video_tokenizer,
            temperature=temperature,
            seed=3,
        )
    )
    for s in range(3):
        rollout = wm.start(first_obs(s), PROMPTS[s % 2])
        for _ in range(3):
            chunk = rollout.step()
            assert all(wm.space.is_video(i) for i in chunk.video_ids)
            assert all(wm.space.is_action(i, 0) for i in chunk.action_ids)
            lo, hi = wm.space.ranges()["video"]
            assert all(0 <= c.min() and c.max() < hi - lo for c in chunk.codes)


def test_psnr_of_known_pairs() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 16, np.uint8)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 256))  # 24.065 dB
    assert psnr(a, a) == PSNR_MAX
    c = a.copy()
    c[0, 0, 0] = 255  # one pixel channel of 48 off by 255: MSE = 255^2 / 48
    assert psnr(a, c) == pytest.approx(10 * math.log10(48))
    # cameras are pooled into one MSE: (0 + 256) / 2 = 128
    assert frames_psnr({"front": a, "wrist": a}, {"front": a, "wrist": b}) == pytest.approx(
        10 * math.log10(255**2 / 128)
    )
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, b[:2])
    eps = [
        {
            "psnr_model": [30.0, 20.0],
            "psnr_model_decoder": [27.0, 19.0],
            "psnr_copy_last": [25.0, 22.0],
            "psnr_copy_last_tokens": [20.0, 19.0],
            "psnr_tokenizer": [35.0, 35.0],
            "psnr_tokenizer_reference": [36.0, 34.0],
        },
        {
            "psnr_model": [26.0],
            "psnr_model_decoder": [25.0],
            "psnr_copy_last": [21.0],
            "psnr_copy_last_tokens": [18.0],
            "psnr_tokenizer": [33.0],
            "psnr_tokenizer_reference": [38.0],
        },
    ]
    rows = summarize(eps, steps=3, n_action_steps=5, fps=20.0)
    assert [(r["episodes"], r["psnr/model"], r["psnr/copy_last"]) for r in rows] == [(2, 28.0, 23.0), (1, 20.0, 22.0)]
    assert rows[0]["psnr/model_decoder"] == 26.0 and rows[0]["psnr/tokenizer_reference"] == 37.0
    assert rows[0]["ratio"] == pytest.approx(28 / 23) and rows[1]["gain_db"] == pytest.approx(-2.0)
    assert rows[0]["t_s"] == 0.25 and beaten_until_s(rows) == 0.25 and rows[0]["psnr/copy_last_tokens"] == 19.0
    # per-seed gains 5 and 5 at step 1: the interval is [5, 5]; one seed at step 2: its own gain
    assert rows[0]["gain_db_ci95"] == pytest.approx([5.0, 5.0]) and rows[1]["gain_db_ci95"] == pytest.approx(
        [-2.0, -2.0]
    )
    # a mean above zero whose interval is not (one seed far ahead, the others behind) is not a win
    gains = [3.0, -0.5, -0.4, -0.6, -0.5, -0.45]
    lo, hi = bootstrap_mean_interval(gains)
    assert lo < 0 < np.mean(gains) < hi and bootstrap_mean_interval(gains) == (lo, hi)
    noisy = [{**eps[1], "psnr_model": [21.0 + g], "psnr_copy_last": [21.0]} for g in gains]
    assert summarize(noisy, 1, 5, 20.0)[0]["gain_db"] > 0 and beaten_until_s(summarize(noisy, 1, 5, 20.0)) == 0.0
    # and the report says so in words, not as "up to 0.00 s"
    assert beaten_words(0.0) == "does not surely beat copy-last at the first step"
    assert beaten_words(beaten_until_s(rows)) == "beats copy-last at every step up to 0.25 s"


def test_an_imagined_frame_is_drawn_as_a_change_to_the_real_one() -> None:
    rng = np.random.default_rng(0)
    real = {c: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for c in CAMS}
    real_decoded = {
        c: np.clip(f.astype(int) + rng.integers(-20, 21, f.shape), 0, 255).astype(np.uint8) for c, f in real.items()
    }
    # codes unchanged -> the real frame itself, not its lossy reconstruction
    same = on_reference(real_decoded, real, real_decoded)
    assert all(np.array_equal(same[c], real[c]) for c in CAMS)
    # a change the decoder draws is added where it happens, and nowhere else
    moved = {c: f.copy() for c, f in real_decoded.items()}
    moved["front"][2:4, 2:4] = 200
    out = on_reference(moved, real, real_decoded)
    diff = out["front"].astype(int) - real["front"].astype(int)
    want = np.clip(real["front"].astype(int) + 200 - real_decoded["front"].astype(int), 0, 255) - real["front"]
    np.testing.assert_array_equal(diff[2:4, 2:4], want[2:4, 2:4])
    assert not diff[:2].any() and not diff[4:].any() and np.array_equal(out["wrist"], real["wrist"])


class EndsEarly(gym.Env):
    """A stand-in env whose episode ends after 5 steps, mid-chunk (chunks of N_ACT = 2 steps)."""

    metadata = {"render_fps": 20}

    def __init__(self):
        self.action_space = gym.spaces.Box(-1, 1, (5,), np.float32)
        self.t, self.received = 0, []

    def _obs(self):
        return {**first_obs(self.t), "agent_pos": np.full(6, 0.1 * self.t, np.float32)}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {"prompt": PROMPTS[1]}

    def step(self, action):
        self.t += 1
        self.received.append(np.asarray(action))
        return self._obs(), 0.0, self.t >= 5, False, {}


def test_real_and_imagined_sequences_stay_equal_when_the_episode_ends(ckpt) -> None:
    wm = WorldModel.from_checkpoint(ckpt)
    ep = imagine_episode(wm, EndsEarly(), seed=1, steps=6)
    # chunks end at steps 2 and 4; the episode ends at step 5, before the third chunk's frame
    assert ep["steps_done"] == 2 and ep["prompt"] == PROMPTS[1]
    assert len(ep["real"]) == len(ep["imagined"]) == len(ep["decoded"]) == len(ep["tokenizer"]) == 3
    assert len(ep["psnr_model"]) == len(ep["psnr_model_decoder"]) == len(ep["psnr_copy_last"]) == 2
    assert [len(a) for a in ep["actions"]] == [2, 2, 1]
    np.testing.assert_array_equal(ep["real"][2]["front"], first_obs(4)["pixels"]["front"])
    assert ep["psnr_copy_last"][0] == pytest.approx(frames_psnr(ep["real"][0], ep["real"][1]))
    assert ep["psnr_copy_last_tokens"][1] == pytest.approx(frames_psnr(ep["tokenizer"][0], ep["real"][2]))
    assert ep["psnr_tokenizer"][1] == pytest.approx(frames_psnr(ep["tokenizer"][2], ep["real"][2]))
    # the imagined frame and the ceiling it is compared with are both drawn on the first real frame
    on_first = on_reference(ep["tokenizer"][2], ep["real"][0], ep["tokenizer"][0])
    assert ep["psnr_tokenizer_reference"][1] == pytest.approx(frames_psnr(on_first, ep["real"][2]))
    imagined = on_reference(ep["decoded"][2], ep["real"][0], ep["tokenizer"][0])
    assert all(np.array_equal(imagined[c], ep["imagined"][2][c]) for c in CAMS)


def test_a_lead_in_plays_the_policy_on_real_frames_before_imagining(ckpt) -> None:
    wm, env = WorldModel.from_checkpoint(ckpt), EndsEarly()
    ep = imagine_episode(wm, env, seed=1, steps=6, start_step=2)
    # the policy acted closed loop for 2 steps; the rollout starts from the frame and state reached there
    policy = Policy.from_checkpoint(ckpt)
    want = [policy.select_action({**EndsEarly()._obs(), "task": PROMPTS[1]})]
    stub = EndsEarly()
    stub.t = 1
    want.append(policy.select_action({**stub._obs(), "task": PROMPTS[1]}))
    np.testing.assert_allclose(np.stack(env.received[:2]), np.clip(np.stack(want), -1, 1), atol=1e-6)
    np.testing.assert_array_equal(ep["real"][0]["front"], first_obs(2)["pixels"]["front"])
    np.testing.assert_array_equal(ep["states"][0], np.full(6, 0.2, np.float32))
    assert ep["steps_done"] == 1  # one chunk (steps 2 -> 4); the episode ends at step 5, mid-chunk
    assert ep["psnr_copy_last"][0] == pytest.approx(frames_psnr(ep["real"][0], ep["real"][1]))
    assert "skipped" in imagine_episode(wm, EndsEarly(), seed=1, steps=6, start_step=5)


def test_the_context_state_is_imagined_held_or_real_as_asked(ckpt) -> None:
    wm = WorldModel.from_checkpoint(ckpt)
    real = imagine_episode(wm, EndsEarly(), seed=1, steps=2, state="real")
    assert [s.tolist() for s in real["states"]] == [np.full(6, 0.1 * t, np.float32).tolist() for t in (0, 2, 4)]
    held = imagine_episode(wm, EndsEarly(), seed=1, steps=2, state="hold")
    assert all(np.array_equal(s, np.zeros(6)) for s in held["states"])
    model = imagine_episode(wm, EndsEarly(), seed=1, steps=2, state="model")
    space = wm.space
    for s in model["states"][1:]:  # decoded from the state ids the model chose: bin centres, not the first
        np.testing.assert_allclose(space.decode_state(space.encode_state(s, 0), 0), s, atol=1e-6)
        assert not np.array_equal(s, np.zeros(6))


def test_cli_writes_side_by_side_video_and_metrics(ckpt, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    args = [
        "robotok-imagine",
        "--policy",
        str(ckpt),
        "--env",
        "robotok/PickCup-v0",
        "--seed",
        "7",
        "--seeds",
        "2",
        "--steps",
        "3",
        "--out",
        str(out),
        "--size",
        "32",
    ]
    monkeypatch.setattr(sys, "argv", args)
    main()
    metrics = json.loads((out / "metrics.json").read_text())
    eps = metrics["episodes"]
    assert [e["seed"] for e in eps] == [7, 8] and all(e["steps_done"] == 3 for e in eps)
    assert [r["step"] for r in metrics["horizon"]] == [1, 2, 3] and metrics["horizon"][0]["t_s"] == 0.1
    for r in metrics["horizon"]:
        assert r["psnr/model"] == pytest.approx(np.mean([e["psnr_model"][r["step"] - 1] for e in eps]))
        assert r["ratio"] == pytest.approx(r["psnr/model"] / r["psnr/copy_last"])
        assert 0 < r["psnr/model"] <= PSNR_MAX and 0 < r["psnr/copy_last"] <= PSNR_MAX
    assert all(len(a) == N_ACT and len(a[0]) == 5 for a in eps[0]["actions"])
    video = read_mp4(out / "PickCup-v0_seed7.mp4")
    assert len(video) == 4 * N_ACT + 20  # 4 frames (start + 3 chunks) each shown N_ACT steps, then 1 s held
    assert video[0].shape[1] > 2 * 2 * 32 and (out / "PickCup-v0_seed7.png").is_file()
    assert eps[1]["video"] is None and "| 3 | 0.30 | 2 |" in capsys.readouterr().out


def test_a_checkpoint_without_the_frame_loss_is_refused(ckpt, tmp_path, monkeypatch, capsys) -> None:
    bad = tmp_path / "no_frames"
    shutil.copytree(ckpt, bad)
    policy = json.loads((bad / "policy.json").read_text())
    (bad / "policy.json").write_text(json.dumps({**policy, "frame_loss": False}))
    with pytest.raises(ValueError, match="pretokenize with --frame-loss"):
        check_frame_loss(bad)
    monkeypatch.setattr(sys, "argv", ["robotok-imagine", "--policy", str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="robotok-imagine: error: .*frame_loss is false"):
        main()
    (bad / "policy.json").write_text(json.dumps(policy))
    config = json.loads((bad / "config.json").read_text())
    config["train"]["frame_loss_weight"] = 0.0
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="--frame-loss-weight"):
        WorldModel.from_checkpoint(bad)
    for argv, msg in [
        (["--policy", str(tmp_path / "nope")], "no such directory"),
        (["--policy", str(ckpt), "--env", "robotok/Nope-v0"], "unknown env id"),
    ]:
        monkeypatch.setattr(sys, "argv", ["robotok-imagine", *argv, "--out", str(tmp_path / "o")])
        with pytest.raises(SystemExit, match=f"robotok-imagine: error: .*{msg}"):
            main()
    monkeypatch.setattr(sys, "argv", ["robotok-imagine", "--policy", str(ckpt), "--steps", "0"])
    with pytest.raises(SystemExit):  # tyro reports the config's ValueError and exits
        main()
    assert "steps 0 must be >= 1" in capsys.readouterr().err
