"""robotok-record-scenes: fresh first frames with the prompted cup's pixel (sim_envs/scenes.py)."""

from __future__ import annotations

import re
import sys
from dataclasses import replace

import numpy as np
import pytest

from robotok.sim_envs.pick_cup import CUP_COLORS
from robotok.sim_envs.scenes import ScenesConfig, load_scenes, main, record_scenes


def test_each_scene_shows_its_prompted_cup_at_its_pixel(tmp_path) -> None:
    """At the recorded pixel the frame has the colour the prompt names (nearest of the palette and the table in
    chromaticity), and the scenes differ: they are what the pointing loss learns from."""
    out = tmp_path / "s.npz"
    summary = record_scenes(ScenesConfig(scenes=10, out=out), progress=False)
    assert summary["scenes"] == 10 and [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary left
    s = load_scenes(out)
    assert s["frames"].shape == (10, 64, 64, 3) and s["pixel"].shape == (10, 2) and s["camera"] == "front"
    names = list(CUP_COLORS)
    palette = np.array([CUP_COLORS[n] for n in names])
    chroma = palette / palette.max(1, keepdims=True)
    for img, (r, c), prompt in zip(s["frames"].astype(np.float32), s["pixel"].astype(int), s["prompt"], strict=True):
        patch = img[r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 3).mean(0)
        seen = names[int(np.argmin(np.abs(chroma - patch / patch.max()).sum(1)))]
        assert re.search(rf"\b{seen}\b", str(prompt)), (seen, prompt)
    assert len({f.tobytes() for f in s["frames"]}) == 10


def test_a_rollout_shows_the_arm_reaching_and_keeps_the_scene(tmp_path) -> None:
    """--rollout K: each scene's frame follows its own 0..K expert steps (drawn from its seed): the arm has moved
    where steps were taken, the prompt stays the scene's, and the pixel follows the cup it names. Two worker
    processes give each scene what one process gives it."""
    first = load_scenes(record_scenes(ScenesConfig(scenes=8, out=tmp_path / "a.npz"), progress=False)["out"])
    cfg = ScenesConfig(scenes=8, out=tmp_path / "b.npz", rollout=60, workers=2)  # 2 spawned processes
    rolled = load_scenes(record_scenes(cfg, progress=False)["out"])
    steps = [np.random.default_rng([1_000_000 + i, 7]).integers(61) for i in range(8)]
    assert (np.asarray(steps) > 5).sum() >= 4
    np.testing.assert_array_equal(rolled["prompt"], first["prompt"])
    for i, k in enumerate(steps):
        moved = np.abs(rolled["frames"][i].astype(int) - first["frames"][i]).max(-1) > 30
        assert (moved.sum() > 20) == (k > 5), (i, k, moved.sum())  # the arm's pixels, once it has moved
    home = first["effector"]  # the grip at the fixed start pose: one pixel in every first frame
    assert np.isfinite(home).all() and np.ptp(home, 0).max() < 1e-3
    assert all((np.abs(rolled["effector"][i] - home[i]).max() > 2) == (k > 5) for i, k in enumerate(steps))
    lifted = [i for i, k in enumerate(steps) if k >= 55]  # the expert has the cup in the air by then
    for i in lifted:
        assert rolled["pixel"][i][0] < first["pixel"][i][0] - 1, (i, rolled["pixel"][i], first["pixel"][i])
    one = load_scenes(record_scenes(replace(cfg, out=tmp_path / "one.npz", workers=1), progress=False)["out"])
    for k in ("frames", "pixel", "prompt"):
        np.testing.assert_array_equal(one[k], rolled[k])
    with pytest.raises(ValueError, match="choose from"):
        record_scenes(ScenesConfig(scenes=1, out=tmp_path / "c.npz", camera="top"), progress=False)
    assert not (tmp_path / "c.npz").exists()


def test_wrist_scenes_reaching_for_any_cup_do_not_centre_the_named_one(tmp_path) -> None:
    """--camera wrist --rollout-any-cup: after a long reach the grip hovers over the cup the expert was given; with
    the named cup always given, the named cup lies under the grip in every such wrist frame, and with any cup
    it lies elsewhere (or out of view) in some, so the wrist read-out cannot point at whatever is centred."""
    cfg = ScenesConfig(scenes=16, out=tmp_path / "named.npz", rollout=60, camera="wrist")
    named = load_scenes(record_scenes(cfg, progress=False)["out"])
    anyc = replace(cfg, out=tmp_path / "any.npz", rollout_any_cup=True)
    anyc = load_scenes(record_scenes(anyc, progress=False)["out"])
    np.testing.assert_array_equal(named["prompt"], anyc["prompt"])
    long = [i for i in range(16) if np.random.default_rng([1_000_000 + i, 7]).integers(61) >= 40]
    gap = lambda s: np.nan_to_num(np.linalg.norm(s["pixel"] - s["effector"], axis=1), nan=99.0)[long]  # noqa: E731
    assert len(long) >= 4 and (gap(named) < 12).all(), gap(named)
    assert (gap(anyc) > 12).any(), gap(anyc)
    with pytest.raises(ValueError, match="set --rollout"):
        ScenesConfig(out=tmp_path / "x.npz", rollout_any_cup=True)


def test_bad_input_is_refused_and_nothing_is_written(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="names no object"):
        record_scenes(ScenesConfig(env="robotok/Drive-v0", scenes=2, out=tmp_path / "d.npz"), progress=False)
    with pytest.raises(ValueError, match=".npz"):
        ScenesConfig(out=tmp_path / "x.bin")
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(sys, "argv", ["robotok-record-scenes", "--env", "nope", "--out", str(tmp_path / "n.npz")])
    with pytest.raises(SystemExit, match="robotok-record-scenes: error: unknown env id"):
        main()
    (tmp_path / "other.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a robotok-record-scenes file"):
        load_scenes(tmp_path / "other.npz")
