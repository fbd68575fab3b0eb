"""Prompted generation: grammar-constrained decoding, the hold fallback, the prompt cache, the action queue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robotok.policy.inference import Policy
from robotok.policy.model import ModelConfig, Transformer
from robotok.tokenizers.action import BinningTokenizer, DCTBPETokenizer
from robotok.tokenizers.space import ACT_CLOSE, ActionRange, Embodiment, TokenSpace
from robotok.tokenizers.video import VideoTokenizer, VideoTokenizerConfig

H = 6  # horizon
IMG = 16
PROMPTS = ["pick up the red cup", "pick up the blue cup", "drive the left route"]


def smooth_chunks(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(H)[None, :, None]
    return np.clip(np.sin(0.5 * t + rng.uniform(0, 6, (n, 1, dim))) * rng.uniform(0.2, 1, (n, 1, dim)), -1, 1)


def make_parts(history: int = 2):
    """A two-robot token space (fixed-length binning for the arm, variable DCT+BPE for the car), its
    policy.json, the tokenizers, and a randomly initialised video tokenizer."""
    toks = [
        BinningTokenizer(bins=24).fit(smooth_chunks(200, 5, 0)),
        DCTBPETokenizer(scale=6.0, bpe_vocab_size=150).fit(smooth_chunks(200, 2, 1)),
    ]
    torch.manual_seed(0)
    vt = VideoTokenizer(cfg=VideoTokenizerConfig(image_size=(IMG, IMG), downsample=8, levels=(4, 4), channels=(8,)))
    ranges = [
        ActionRange("pick", toks[0].vocab_size, length=H * 5),
        ActionRange("drive", toks[1].vocab_size, max_length=toks[1].max_tokens_per_chunk(H, 2)),
    ]
    embodiments = [Embodiment("pick", [-1.0] * 7, [1.0] * 7, 0), Embodiment("drive", [-2.0] * 4, [2.0] * 4, 1)]
    space = TokenSpace(state_bins=32, video_vocab=vt.vocab_size, action_ranges=ranges, embodiments=embodiments)
    emb = [
        {
            "name": "pick",
            "tasks": PROMPTS[:2],
            "cameras": ["front", "wrist"],
            "state_dim": 7,
            "action_dim": 5,
            "tokenizer_dim": 5,
            "image_size": [IMG, IMG],
            "action_range": 0,
            "hold": [0.0, 0.0, 0.0, 0.0, 0.5],
        },
        {
            "name": "drive",
            "tasks": PROMPTS[2:],
            "cameras": ["front", "top"],
            "state_dim": 4,
            "action_dim": 2,
            "tokenizer_dim": 2,
            "image_size": [IMG, IMG],
            "action_range": 1,
            "hold": [0.1, -0.2],
        },
    ]
    config = {
        "horizon": H,
        "n_action_steps": 3,
        "history": history,
        "history_stride": 1,
        "seq_len": 160,
        "embodiments": emb,
    }
    return space, config, toks, vt


def random_model(space: TokenSpace, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=space.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=256))


def random_obs(rng: np.random.Generator, robot: int) -> dict:
    cams, dim, prompts = (("front", "wrist"), 7, PROMPTS[:2]) if robot == 0 else (("front", "top"), 4, PROMPTS[2:])
    return {
        "pixels": {c: rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8) for c in cams},
        "agent_pos": rng.normal(0, 1.5, dim).astype(np.float32),
        "task": prompts[int(rng.integers(len(prompts)))],
    }


class Hostile(torch.nn.Module):
    """A random model pushed to emit anything but action ids: +30 on every other id (ACT_CLOSE included)."""

    def __init__(self, inner: Transformer, space: TokenSpace):
        super().__init__()
        self.inner, self.cfg = inner, inner.cfg
        bias = torch.full((inner.cfg.vocab_size,), 30.0)
        for r in space.action_ranges:
            bias[r.start : r.start + r.size] = 0.0
        self.register_buffer("bias", bias)

    def forward(self, idx, targets=None, weights=None):
        return self.inner(idx)[0] + self.bias, None

    def new_cache(self, batch, max_len=None):
        return self.inner.new_cache(batch, max_len)

    def forward_cached(self, idx, cache, last=False):
        return self.inner.forward_cached(idx, cache, last) + self.bias


@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (1.5, 0), (1.0, 5)])
def test_constrained_decoding_never_emits_a_non_action_id(temperature: float, top_k: int) -> None:
    space, config, toks, vt = make_parts()
    model = Hostile(random_model(space), space)
    policy = Policy(model, space, config, toks, vt, temperature=temperature, top_k=top_k, seed=1)
    rng = np.random.default_rng(int(temperature * 10) + top_k)
    lengths = {0: set(), 1: set()}
    for k in range(24):
        robot = k % 2
        obs = random_obs(rng, robot)
        policy.reset()
        ctx_logits = model(torch.tensor([space.context(obs["task"], [], robot)]))[0][0, -1]
        assert not space.is_action(int(ctx_logits.argmax()))  # unconstrained, it would leave the range
        chunk = policy.predict_chunk(obs)
        ids = policy.last_action_ids
        r = space.action_ranges[robot]
        assert ids and all(space.is_action(i, robot) for i in ids), ids
        assert len(ids) == r.length if r.length else 1 <= len(ids) <= r.max_length
        assert chunk.shape == (H, config["embodiments"][robot]["action_dim"]) and np.isfinite(chunk).all()
        lengths[robot].add(len(ids))
    assert lengths[0] == {H * 5}


def test_failed_decode_yields_the_hold_action_and_is_counted() -> None:
    space, config, toks, vt = make_parts()

    class Failing:
        def __init__(self, tok):
            self.tok, self.vocab_size = tok, tok.vocab_size

        def decode(self, ids, horizon, dim):
            return self.tok.decode(ids, horizon, dim)[0], False

    policy = Policy(random_model(space), space, config, [toks[0], Failing(toks[1])], vt)
    rng = np.random.default_rng(3)
    chunk = policy.predict_chunk(random_obs(rng, 1))
    np.testing.assert_array_equal(chunk, np.tile(np.float32([0.1, -0.2]), (H, 1)))
    assert policy.decode_failures == 1
    policy.reset()
    actions = [policy.select_action(random_obs(rng, 1)) for _ in range(4)]  # two chunks of n_action_steps=3
    assert all(np.array_equal(a, np.float32([0.1, -0.2])) for a in actions) and policy.decode_failures == 3
    policy.reset()
    ok_chunk = policy.predict_chunk(random_obs(rng, 0))  # the arm's tokenizer decodes fine
    assert policy.decode_failures == 3 and ok_chunk.shape == (H, 5)


@pytest.mark.parametrize("goal", [False, True])
def test_prompt_cache_gives_the_same_chunks_as_no_cache(goal: bool) -> None:
    space, config, toks, vt = make_parts(history=2)
    config["goal"] = goal  # with goals, the actions go on in the cache the goal was generated in
    model = random_model(space, seed=4)
    cached = Policy(model, space, config, toks, vt, use_cache=True)
    plain = Policy(model, space, config, toks, vt, use_cache=False)
    fed, forward_cached = [0], model.forward_cached

    def counting(idx: torch.Tensor, cache, last=False):
        fed[0] += idx.shape[1]
        return forward_cached(idx, cache, last)

    model.forward_cached = counting
    rng = np.random.default_rng(5)
    for episode in range(3):
        robot = episode % 2
        cached.reset()
        plain.reset()
        for _ in range(4):  # the prompt changes between episodes and within one: the cache follows it
            obs = random_obs(rng, robot)
            fed[0] = 0
            a, b = cached.predict_chunk(obs), plain.predict_chunk(obs)
            assert cached.last_action_ids == plain.last_action_ids
            assert cached.last_goal_ids == plain.last_goal_ids and len(cached.last_goal_ids) == (7, 4)[robot] * goal
            np.testing.assert_array_equal(a, b)
            # no id is fed twice: the prompt (when new), the observed steps, the goal and the actions, once each
            n_context = len(cached._context(obs["task"])) + (len(cached.last_goal_ids) + 2 if goal else 0)
            assert fed[0] <= n_context + len(cached.last_action_ids), (fed[0], n_context)
    # the cached prefix really is reused: one cache object per prompt, reset() keeps it
    prefix = cached._prefix
    cached.reset()
    cached.predict_chunk(obs)
    assert cached._prefix is prefix and len(cached.chunk_latencies_ms) == 13 and cached.last_latency_ms > 0


def test_select_action_executes_n_action_steps_of_each_chunk() -> None:
    space, config, toks, vt = make_parts(history=1)
    model = random_model(space, seed=6)
    queued = Policy(model, space, config, toks, vt)
    direct = Policy(model, space, config, toks, vt)
    rng = np.random.default_rng(7)
    stream = [random_obs(rng, 0) for _ in range(7)]
    for o in stream:
        o["task"] = PROMPTS[0]
    actions = [queued.select_action(o) for o in stream]
    assert len(queued.chunk_latencies_ms) == 3  # chunks predicted at steps 0, 3, 6
    expect = [direct.predict_chunk(stream[t])[:3] for t in (0, 3, 6)]
    np.testing.assert_array_equal(np.stack(actions), np.concatenate(expect)[:7])
    assert actions[0].shape == (5,) and actions[0].dtype == np.float32


def test_each_robot_executes_its_own_count_unless_one_is_given() -> None:
    space, config, toks, vt = make_parts(history=1)
    config["embodiments"][0]["n_action_steps"] = 2  # the arm replans every 2 steps, the car keeps the default 3
    model = random_model(space, seed=6)
    rng = np.random.default_rng(7)
    for given, expect in ((None, [4, 3]), (4, [2, 2])):  # chunks over 7 steps of each robot
        policy = Policy(model, space, config, toks, vt, n_action_steps=given)
        assert policy.executed == ([2, 3] if given is None else [4, 4])
        for robot, chunks in enumerate(expect):
            policy.reset()
            policy.chunk_latencies_ms.clear()
            for _ in range(7):
                policy.select_action({**random_obs(rng, robot), "task": PROMPTS[2 * robot]})
            assert len(policy.chunk_latencies_ms) == chunks
    config["embodiments"][1]["n_action_steps"] = H + 1
    with pytest.raises(ValueError, match="must lie in"):
        Policy(model, space, config, toks, vt)


def test_embodiment_comes_from_the_observation() -> None:
    space, config, toks, vt = make_parts()
    policy = Policy(random_model(space), space, config, toks, vt)
    rng = np.random.default_rng(8)
    assert policy.embodiment_of(random_obs(rng, 0)) == 0 and policy.embodiment_of(random_obs(rng, 1)) == 1
    odd = random_obs(rng, 1)
    odd["agent_pos"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="matches 0 of the embodiments"):
        policy.predict_chunk(odd)
    forced = Policy(random_model(space), space, config, toks, vt, embodiment="drive")
    assert forced.embodiment_of(random_obs(rng, 0)) == 1
    bad = random_obs(rng, 0)
    bad["pixels"]["front"] = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="trained on uint8"):
        policy.reset() or policy.predict_chunk(bad)
    assert space.allowed_after(H * 5, 0)[ACT_CLOSE]
