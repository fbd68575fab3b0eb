"""The joint token space: layout, round trips, grammar and constrained-decoding masks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robotok.tokenizers.space import (
    ACT_CLOSE,
    BOS,
    PAD,
    SEP,
    SPECIAL,
    STATE_CLOSE,
    STATE_OPEN,
    ActionRange,
    Embodiment,
    TokenSpace,
)


def make_space(video_keep: bool = False) -> TokenSpace:
    return TokenSpace(
        state_bins=64,
        video_vocab=1000,
        action_ranges=[ActionRange("pick", size=256, length=40), ActionRange("drive", size=300, max_length=12)],
        embodiments=[
            Embodiment("pick", [-1.0, 0.0, 2.0], [1.0, 0.5, 2.0], action_range=0),
            Embodiment("drive", [-3.0, -3.0], [3.0, 3.0], action_range=1),
        ],
        video_keep=video_keep,
    )


def test_ranges_contiguous_disjoint_and_within_vocab() -> None:
    space = make_space()
    spans = list(space.ranges().values())
    assert spans[0][0] == 0
    for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False):
        assert hi == lo, spans
    assert spans[-1][1] == space.num_used <= space.vocab_size
    assert space.vocab_size % 64 == 0 and space.vocab_size - space.num_used < 64
    sizes = {name: hi - lo for name, (lo, hi) in space.ranges().items()}
    assert sizes == {
        "special": len(SPECIAL),
        "text": 256,
        "state": 64,
        "video": 1000,
        "action/pick": 256,
        "action/drive": 300,
    }


def test_json_round_trip_preserves_everything(tmp_path) -> None:
    space = make_space()
    path = space.save(tmp_path)
    back = TokenSpace.load(path)
    assert back.to_json() == space.to_json()
    assert back.ranges() == space.ranges() and back.vocab_size == space.vocab_size
    state = np.array([0.3, 0.1, 2.0], dtype=np.float32)
    assert back.encode_state(state, 0) == space.encode_state(state, 0)


def test_json_with_tampered_layout_is_refused() -> None:
    d = json.loads(make_space().to_json())
    d["vocab_size"] += 64
    with pytest.raises(ValueError, match="layout disagrees"):
        TokenSpace.from_json(json.dumps(d))


@pytest.mark.parametrize("prompt", ["pick up the red cup", "", "drive the left route ⟶ café 🚗"])
def test_prompt_bytes_round_trip(prompt: str) -> None:
    space = make_space()
    ids = space.encode_prompt(prompt)
    assert ids[0] == BOS and ids[-1] == SEP
    assert all(space.text_start <= i < space.state_start for i in ids[1:-1])
    assert space.decode_text(ids) == prompt


def test_state_bins_within_half_a_bin() -> None:
    space = make_space()
    rng = np.random.default_rng(0)
    e = space.embodiments[1]
    lo, hi = np.array(e.state_lo), np.array(e.state_hi)
    for _ in range(200):
        x = rng.uniform(lo, hi).astype(np.float32)
        ids = space.encode_state(x, 1)
        assert all(space.state_start <= i < space.video_start for i in ids)
        err = np.abs(space.decode_state(ids, 1) - x)
        assert np.all(err <= 0.5 * (hi - lo) / space.state_bins + 1e-5), err
    # out of range clips to the end bins; a constant dimension (lo == hi) does not divide by zero
    ids = space.encode_state(np.array([5.0, -7.0, 2.0]), 0)
    assert ids[0] == space.video_start - 1 and ids[1] == space.state_start
    assert np.isfinite(space.decode_state(ids, 0)).all()
    with pytest.raises(ValueError, match="3 dims"):
        space.encode_state(np.zeros(3), 1)


def test_video_and_action_ids_round_trip_and_reject_out_of_range() -> None:
    space = make_space()
    codes = np.random.default_rng(1).integers(0, 1000, size=(2, 8, 8))
    ids = space.video_ids(codes)
    assert all(space.is_video(int(i)) for i in ids.ravel())
    np.testing.assert_array_equal(space.video_codes(ids), codes)
    with pytest.raises(ValueError):
        space.video_ids(np.array([1000]))
    toks = [0, 5, 299]
    ids = space.action_ids(toks, 1)
    assert all(space.is_action(i, 1) and not space.is_action(i, 0) for i in ids)
    assert space.action_tokens(ids, 1) == toks
    assert space.action_tokens([ACT_CLOSE, ids[0], space.action_ranges[0].start], 1) == [0]
    with pytest.raises(ValueError):
        space.action_ids([300], 1)


def test_allowed_after_follows_the_grammar() -> None:
    space = make_space()
    fixed, var = space.action_ranges
    for n in range(fixed.length):
        m = space.allowed_after(n, 0)
        assert m.sum() == fixed.size and not m[ACT_CLOSE]
        assert all(space.is_action(i, 0) for i in np.flatnonzero(m))
    assert np.flatnonzero(space.allowed_after(fixed.length, 0)).tolist() == [ACT_CLOSE]
    assert not space.allowed_after(0, 1)[ACT_CLOSE]  # a variable chunk has at least one id
    for n in range(1, var.max_length):
        m = space.allowed_after(n, 1)
        assert m[ACT_CLOSE] and m.sum() == var.size + 1
    assert np.flatnonzero(space.allowed_after(var.max_length, 1)).tolist() == [ACT_CLOSE]


def test_sequence_parses_back() -> None:
    space = make_space()
    rng = np.random.default_rng(2)
    steps = [([rng.integers(0, 1000, (4, 4)), rng.integers(0, 1000, (4, 4))], rng.uniform(-3, 3, 2)) for _ in range(2)]
    acts = rng.integers(0, 300, 7).tolist()
    nxt = [rng.integers(0, 1000, (4, 4)), rng.integers(0, 1000, (4, 4))]
    seq = space.sequence("drive left", steps, acts, embodiment=1, next_frame=nxt)
    assert seq.tokens[: len(space.context("drive left", steps, 1))] == space.context("drive left", steps, 1)
    a0, a1 = seq.action
    assert space.action_tokens(seq.tokens[a0 : a1 - 1], 1) == acts and seq.tokens[a1 - 1] == ACT_CLOSE
    f0, f1 = seq.frame
    assert f1 == len(seq.tokens) and f1 - f0 == 2 * 16 + 1
    parsed = space.parse(seq.tokens + [PAD] * 5)
    assert parsed["prompt"] == "drive left" and len(parsed["steps"]) == 2
    for (video, state), (codes, x) in zip(parsed["steps"], steps, strict=True):
        np.testing.assert_array_equal(space.video_codes(video), np.concatenate([c.ravel() for c in codes]))
        assert state == space.encode_state(x, 1)
    assert space.action_tokens(parsed["actions"], 1) == acts
    np.testing.assert_array_equal(space.video_codes(parsed["next_frame"]), np.concatenate([c.ravel() for c in nxt]))
    with pytest.raises(ValueError):
        space.parse(seq.tokens[1:])


def test_the_next_state_follows_the_next_frame_as_a_step() -> None:
    space = make_space()
    rng = np.random.default_rng(3)
    steps = [([rng.integers(0, 1000, (4, 4)), rng.integers(0, 1000, (4, 4))], rng.uniform(-3, 3, 2))]
    acts = rng.integers(0, 300, 7).tolist()
    nxt, x = [rng.integers(0, 1000, (4, 4)), rng.integers(0, 1000, (4, 4))], rng.uniform(-3, 3, 2)
    seq = space.sequence("drive left", steps, acts, embodiment=1, next_frame=nxt, next_state=x)
    plain = space.sequence("drive left", steps, acts, embodiment=1, next_frame=nxt)
    # the trailing frame + state is exactly one observed step, as the next context will show it
    assert seq.tokens == plain.tokens + space.step(nxt, x, 1)[len(space.frame(nxt)) :]
    assert seq.tokens[len(plain.tokens)] == STATE_OPEN and seq.frame == plain.frame
    s0, s1 = seq.next_state
    assert s0 == len(plain.tokens) + 1 and s1 == len(seq.tokens) and seq.tokens[s1 - 1] == STATE_CLOSE
    assert seq.tokens[s0 : s1 - 1] == space.encode_state(x, 1)
    parsed = space.parse(seq.tokens)
    assert parsed["next_state"] == space.encode_state(x, 1) and space.parse(plain.tokens)["next_state"] is None
    with pytest.raises(ValueError, match="give next_frame"):
        space.sequence("drive left", steps, acts, embodiment=1, next_state=x)


def test_a_kept_frame_writes_unchanged_cells_as_keep_and_resolves_back(tmp_path) -> None:
    plain, space = make_space(), make_space(video_keep=True)
    # one id after the video range; the action ranges move up by one, the rest stays where it was
    assert space.ranges()["keep"] == (plain.ranges()["video"][1], plain.ranges()["video"][1] + 1)
    assert [r.start for r in space.action_ranges] == [r.start + 1 for r in plain.action_ranges]
    assert "keep" not in plain.ranges() and plain.keep_id is None
    rng = np.random.default_rng(4)
    cur = [rng.integers(0, 1000, (4, 4)), rng.integers(0, 1000, (4, 4))]
    nxt = [c.copy() for c in cur]
    nxt[0][1, 2], nxt[1][3, 0] = (cur[0][1, 2] + 1) % 1000, (cur[1][3, 0] + 7) % 1000
    steps = [(cur, rng.uniform(-3, 3, 2))]
    acts = rng.integers(0, 300, 7).tolist()
    seq = space.sequence("drive left", steps, acts, embodiment=1, next_frame=nxt, next_state=rng.uniform(-3, 3, 2))
    f0, f1 = seq.frame
    ids = np.asarray(seq.tokens[f0 : f1 - 1])
    changed = np.flatnonzero(ids != space.keep_id)
    assert changed.tolist() == [1 * 4 + 2, 16 + 3 * 4 + 0]  # the two changed cells, row-major, camera after camera
    np.testing.assert_array_equal(space.video_codes(ids[changed]), [nxt[0][1, 2], nxt[1][3, 0]])
    np.testing.assert_array_equal(space.resolve_frame(ids, cur), np.stack(nxt))
    assert space.parse(seq.tokens)["next_frame"] == ids.tolist()
    # observed frames stay whole codes: the context is the plain space's, shifted only in its action ids
    assert space.context("drive left", steps, 1) == plain.context("drive left", steps, 1)
    # the layout survives the file; a file written before video_keep existed loads without it
    back = TokenSpace.load(space.save(tmp_path))
    assert back.keep_id == space.keep_id and back.ranges() == space.ranges()
    old = json.loads(plain.to_json())
    del old["video_keep"]
    assert TokenSpace.from_json(json.dumps(old)).keep_id is None
    with pytest.raises(ValueError, match="video_keep"):
        plain.frame(nxt, cur)


def test_goal_sits_before_the_actions_as_a_target() -> None:
    """A goal state goes between the observed steps and ACT_OPEN; its span is the bins plus STATE_CLOSE."""
    from robotok.tokenizers.space import ACT_OPEN

    space = make_space()
    rng = np.random.default_rng(3)
    steps = [([rng.integers(0, 1000, (4, 4))], rng.uniform(-1, 1, 3))]
    acts = rng.integers(0, 256, 40).tolist()
    goal = np.array([0.5, 0.25, 2.0])
    plain = space.sequence("pick the red cup", steps, acts, embodiment=0)
    seq = space.sequence("pick the red cup", steps, acts, embodiment=0, goal=goal)
    ctx = space.context("pick the red cup", steps, 0)
    g0, g1 = seq.goal
    assert seq.tokens[: g0 - 1] == ctx[:-1] and seq.tokens[g0 - 1] == STATE_OPEN
    assert seq.tokens[g0 : g1 - 1] == space.encode_state(goal, 0) and seq.tokens[g1 - 1] == STATE_CLOSE
    assert seq.tokens[g1] == ACT_OPEN and len(seq.tokens) == len(plain.tokens) + 3 + 2
    a0, a1 = seq.action
    assert space.action_tokens(seq.tokens[a0 : a1 - 1], 0) == acts and plain.goal is None
    parsed = space.parse(seq.tokens)
    assert parsed["goal"] == space.encode_state(goal, 0) and len(parsed["steps"]) == 1
    assert space.action_tokens(parsed["actions"], 0) == acts
    assert space.parse(plain.tokens)["goal"] is None
