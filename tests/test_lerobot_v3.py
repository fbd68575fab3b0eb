"""LeRobotDataset v3.0: reading what LeRobot wrote, the writer->reader round trip, stats, atomicity."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from robotok.datasets.lerobot_v3 import LeRobotDataset, LeRobotDatasetWriter

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"
FIXTURE_LENGTHS = [12, 15, 9]
FIXTURE_TASKS = ["pick up the red cup", "pick up the blue cup", "pick up the red cup"]


def fixture_expected(e: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """State, action, frames of fixture episode e (length n), from the formulas in lerobot_v3_tiny.md."""
    i = np.arange(n)
    t = i / 10
    state = np.stack([e + 0.1 * i, np.sin(t), np.cos(t), i % 2], axis=1).astype(np.float32)
    action = np.stack([0.01 * i, -0.02 * i, np.full(n, 0.5 * e), (i >= n // 2) * 1.0], axis=1).astype(np.float32)
    frames = np.empty((n, 64, 64, 3), dtype=np.uint8)
    frames[:] = [(60 * e) % 256, 120, 200 - 50 * e]
    for k in range(n):
        frames[k, 20:30, 5 + 3 * k : 15 + 3 * k] = 255
    return state, action, frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def test_reads_lerobot_fixture_exactly():
    ds = LeRobotDataset(FIXTURE)
    assert ds.fps == 10 and ds.num_episodes == 3 and ds.num_frames == 36
    assert ds.tasks == ["pick up the red cup", "pick up the blue cup"]
    assert ds.episode_lengths.tolist() == FIXTURE_LENGTHS
    assert ds.camera_keys == ["observation.images.front"]
    assert ds.features["observation.state"]["names"] == ["x", "y", "z", "grip"]
    for e, n in enumerate(FIXTURE_LENGTHS):
        ep = ds.episode(e)
        state, action, frames = fixture_expected(e, n)
        assert ep["task"] == FIXTURE_TASKS[e]
        np.testing.assert_array_equal(ep["observation.state"], state)
        np.testing.assert_array_equal(ep["action"], action)
        assert ep["observation.state"].dtype == np.float32 and ep["action"].shape == (n, 4)
        np.testing.assert_array_equal(ep["frame_index"], np.arange(n))
        np.testing.assert_allclose(ep["timestamp"], np.arange(n) / 10, atol=1e-6)
        # AV1 yuv420p is lossy: measured 37.9-42.7 dB on these episodes; the white square stays white.
        got = ep["observation.images.front"]
        assert got.shape == (n, 64, 64, 3) and got.dtype == np.uint8
        assert psnr(got, frames) > 35.0
        for k in range(n):
            assert got[k, 21:29, 6 + 3 * k : 14 + 3 * k].mean() > 230
    assert ds.stats["observation.state"]["max"].shape == (4,)
    assert ds.stats["observation.images.front"]["mean"].shape == (3, 1, 1)


def test_load_images_false_skips_video(tmp_path):
    ds = LeRobotDataset(FIXTURE)
    ep = ds.episode(1, load_images=False)
    assert "observation.images.front" not in ep and ep["observation.state"].shape == (15, 4)
    frames = ds.episode_frames(1, "observation.images.front")
    np.testing.assert_array_equal(frames, ds.episode(1)["observation.images.front"])


FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [6], "names": None},
    "action": {"dtype": "float32", "shape": [5], "names": None},
    "observation.images.front": {"dtype": "video", "shape": [64, 64, 3], "names": None},
    "observation.images.wrist": {"dtype": "video", "shape": [64, 64, 3], "names": None},
}


def synthetic_episode(seed: int, length: int) -> dict[str, np.ndarray]:
    """Random states/actions and sim-like frames: a smooth background with a small cup moving across it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    base = np.stack([80 + xx, 90 + yy, 140 + 0 * xx], axis=-1).astype(np.uint8)
    frames = np.repeat(base[None], length, axis=0)
    for t in range(length):
        x = (5 + 2 * t + seed) % 56
        frames[t, 30:35, x : x + 4] = [200, 30, 30]
    return {
        "observation.state": rng.normal(size=(length, 6)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, 5)).astype(np.float32),
        "observation.images.front": frames,
        "observation.images.wrist": frames[:, ::-1].copy(),
    }


def test_round_trip_exact_data_and_faithful_frames(tmp_path):
    root = tmp_path / "ds"
    episodes = [synthetic_episode(s, 9 + 3 * s) for s in range(5)]
    tasks = ["pick the red cup", "pick the blue cup", "pick the red cup", "stack", "pick the red cup"]
    # Tiny file limits force several data and video files (and episodes located across them).
    with LeRobotDatasetWriter(
        root, 20, FEATURES, "arm", data_files_size_in_mb=0.0005, video_files_size_in_mb=0.002
    ) as writer:
        for ep, task in zip(episodes, tasks, strict=True):
            writer.add_episode(ep, task)
    assert len(list((root / "data").rglob("*.parquet"))) > 1
    assert len(list((root / "videos" / "observation.images.front").rglob("*.mp4"))) > 1
    ds = LeRobotDataset(root)
    assert ds.tasks == ["pick the red cup", "pick the blue cup", "stack"]
    assert ds.fps == 20 and ds.episode_lengths.tolist() == [len(e["action"]) for e in episodes]
    assert ds.camera_keys == ["observation.images.front", "observation.images.wrist"]
    start = 0
    for i, (ep, task) in enumerate(zip(episodes, tasks, strict=True)):
        got = ds.episode(i)
        n = len(ep["action"])
        assert got["task"] == task
        np.testing.assert_array_equal(got["observation.state"], ep["observation.state"])
        np.testing.assert_array_equal(got["action"], ep["action"])
        np.testing.assert_array_equal(got["index"], np.arange(start, start + n))
        np.testing.assert_array_equal(got["episode_index"], np.full(n, i))
        np.testing.assert_array_equal(got["timestamp"], (np.arange(n) / 20).astype(np.float32))
        for key in ds.camera_keys:  # H.264 yuv444p crf 0: only RGB<->YUV rounding (measured 52.0 dB, max 2)
            assert psnr(got[key], ep[key]) > 50.0
            assert np.abs(got[key].astype(int) - ep[key]).max() <= 2
        start += n
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 5 and info["total_frames"] == start and info["total_tasks"] == 3
    assert info["splits"] == {"train": "0:5"}
    assert info["features"]["observation.images.front"]["info"]["video.pix_fmt"] == "yuv444p"


def test_stats_match_numpy(tmp_path):
    episodes = [synthetic_episode(s, 10 + s) for s in range(3)]
    with LeRobotDatasetWriter(tmp_path / "ds", 20, FEATURES) as writer:
        for ep in episodes:
            writer.add_episode(ep, "task")
    ds = LeRobotDataset(tmp_path / "ds")
    for key in ("observation.state", "action"):
        x = np.concatenate([e[key] for e in episodes]).astype(np.float64)
        s = ds.stats[key]
        np.testing.assert_allclose(s["min"], x.min(0), rtol=1e-7)
        np.testing.assert_allclose(s["max"], x.max(0), rtol=1e-7)
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-6)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-6)
        np.testing.assert_allclose(s["q01"], np.quantile(x, 0.01, axis=0), rtol=1e-6)
        np.testing.assert_allclose(s["q99"], np.quantile(x, 0.99, axis=0), rtol=1e-6)
        assert s["count"].tolist() == [len(x)]
    frames = np.concatenate([e["observation.images.wrist"] for e in episodes]).astype(np.float64) / 255
    s = ds.stats["observation.images.wrist"]
    per_channel = frames.reshape(-1, 3)
    for name, ref in [
        ("min", per_channel.min(0)),
        ("max", per_channel.max(0)),
        ("mean", per_channel.mean(0)),
        ("std", per_channel.std(0)),
        ("q01", np.quantile(per_channel, 0.01, axis=0)),
        ("q50", np.quantile(per_channel, 0.5, axis=0)),
        ("q99", np.quantile(per_channel, 0.99, axis=0)),
    ]:
        assert s[name].shape == (3, 1, 1)
        np.testing.assert_allclose(s[name].ravel(), ref, rtol=1e-9, atol=1e-12, err_msg=name)
    # Per-episode stats in meta/episodes match the episode's own values.
    row = pq.read_table(tmp_path / "ds" / "meta/episodes/chunk-000/file-000.parquet").slice(1, 1).to_pylist()[0]
    np.testing.assert_allclose(row["stats/action/mean"], episodes[1]["action"].astype(np.float64).mean(0), rtol=1e-6)
    assert row["stats/index/min"] == [10] and row["stats/index/max"] == [20]


def test_written_schema_matches_lerobot(tmp_path):
    info = json.loads((FIXTURE / "meta/info.json").read_text())
    keep = ("observation.state", "action", "observation.images.front")
    features = {k: f for k, f in info["features"].items() if k in keep}
    with LeRobotDatasetWriter(tmp_path / "ds", 10, features, "sim_arm") as writer:
        writer.add_episode(
            {
                "observation.state": np.zeros((5, 4), np.float32),
                "action": np.ones((5, 4), np.float32),
                "observation.images.front": np.zeros((5, 64, 64, 3), np.uint8),
            },
            "t",
        )
    for rel in ("meta/episodes/chunk-000/file-000.parquet", "data/chunk-000/file-000.parquet", "meta/tasks.parquet"):
        theirs, ours = pq.read_schema(FIXTURE / rel), pq.read_schema(tmp_path / "ds" / rel)
        assert theirs.remove_metadata() == ours.remove_metadata(), rel
    ours = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert list(ours) == list(info)
    assert ours["features"].keys() == info["features"].keys()
    stats_ref, stats_ours = (json.loads((d / "meta/stats.json").read_text()) for d in (FIXTURE, tmp_path / "ds"))
    assert {k: list(v) for k, v in stats_ref.items()} == {k: list(v) for k, v in stats_ours.items()}


def test_exception_mid_write_leaves_nothing(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="simulated crash"), LeRobotDatasetWriter(root, 20, FEATURES) as writer:
        writer.add_episode(synthetic_episode(0, 8), "task")
        raise RuntimeError("simulated crash")
    assert list(tmp_path.iterdir()) == []
    # Without the context manager, an unfinished writer is only a hidden temporary directory.
    writer = LeRobotDatasetWriter(root, 20, FEATURES)
    writer.add_episode(synthetic_episode(0, 8), "task")
    assert not root.exists() and all(p.name.startswith(".ds.tmp-") for p in tmp_path.iterdir())
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_keeps_no_frames(tmp_path):
    with LeRobotDatasetWriter(tmp_path / "ds", 20, FEATURES) as writer:
        ep = synthetic_episode(0, 12)
        refs = [weakref.ref(ep[k]) for k in ("observation.images.front", "observation.images.wrist")]
        writer.add_episode(ep, "task")
        del ep
        assert all(r() is None for r in refs), "the writer still references an episode's frames"


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(FileExistsError):
        LeRobotDatasetWriter(tmp_path, 20, FEATURES)
    with pytest.raises(ValueError, match="video feature"):
        LeRobotDatasetWriter(tmp_path / "a", 20, {"cam": {"dtype": "video", "shape": [64, 64]}})
    writer = LeRobotDatasetWriter(tmp_path / "b", 20, FEATURES)
    ep = synthetic_episode(0, 8)
    with pytest.raises(ValueError, match="same number"):
        writer.add_episode({**ep, "action": ep["action"][:5]}, "t")
    with pytest.raises(ValueError, match="missing"):
        writer.add_episode({k: v for k, v in ep.items() if k != "action"}, "t")
    with pytest.raises(ValueError, match="uint8"):
        writer.add_episode({**ep, "observation.images.front": ep["observation.images.front"].astype(np.float32)}, "t")
    with pytest.raises(ValueError, match="do not fit"):
        writer.add_episode({**ep, "action": ep["action"].astype(np.complex64)}, "t")
    writer.abort()


def test_v21_and_missing_dirs_get_clear_errors(tmp_path):
    (tmp_path / "old" / "meta").mkdir(parents=True)
    (tmp_path / "old" / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 30}))
    with pytest.raises(ValueError, match=r"v2\.1.*convert_dataset_v21_to_v30"):
        LeRobotDataset(tmp_path / "old")
    with pytest.raises(FileNotFoundError, match="no dataset directory"):
        LeRobotDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="info.json is missing"):
        LeRobotDataset(tmp_path / "empty")
