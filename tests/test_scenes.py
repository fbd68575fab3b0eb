"""robotok-record-scenes: fresh first frames with the prompted cup's pixel (sim_envs/scenes.py)."""

from __future__ import annotations

import re
import sys

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
