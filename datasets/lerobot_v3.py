"""LeRobotDataset v3.0 directories, read and written with pyarrow and PyAV (the lerobot package is not needed).

The layout LeRobot 0.4 writes, which this module reads and writes::

    meta/info.json                              codebase_version "v3.0", fps, features, path templates, totals
    meta/tasks.parquet                          task_index, the task string as the (pandas) index
    meta/episodes/chunk-000/file-000.parquet    one row per episode: length, index range, data and video
                                                file of the episode, its from/to timestamps, tasks, stats/...
    meta/stats.json                             min, max, mean, std, count, q01..q99 per feature
    data/chunk-XXX/file-XXX.parquet             one row per frame: state, action, timestamp, frame_index, ...
    videos/<key>/chunk-XXX/file-XXX.mp4         one stream per camera, many episodes back to back

Video codec. LeRobot's default is AV1 in yuv420p at crf 30. At 64x64 that halves the chroma to 32x32,
and a cup a few pixels wide loses its colour. ``benchmarks/video_codec.py --episodes 6`` on 285 frames
of the PickCup front camera (PSNR over RGB; max abs error in 0..255; size per frame; 2-core machine)::

    av1  yuv420p crf 30   30.6 dB   max error 177   161 B/frame   (LeRobot's default; baseline)
    h264 yuv420p crf 18   31.0 dB   max error 161   190 B/frame
    h264 yuv444p crf 18   39.2 dB   max error  93   204 B/frame
    h264 yuv444p crf 10   45.1 dB   max error  32   343 B/frame
    h264 yuv444p crf  0   52.1 dB   max error   2   527 B/frame   (lossless in YUV; the error is RGB<->YUV rounding)

All decode at 2,200-2,900 frames/s. Chroma subsampling costs most of the fidelity here, so robotok
writes H.264 (libx264) in yuv444p, at crf 0 by default: the frames a model learns from are then the
frames the simulator renders at evaluation time (within 2 levels), and at 64x64 the price is small
(~0.5 KB per frame per camera). The writer's ``crf`` argument trades size for fidelity. Any mp4 PyAV
decodes reads back (AV1 files that LeRobot wrote included).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robotok.datasets.layout import (
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_FEATURES,
    VIDEO_PATH,
    assemble,
    check_array,
    check_features,
    column_to_numpy,
    data_schema,
    file_path,
    to_arrow,
)
from robotok.datasets.stats import array_stats, from_json, histogram_stats, image_histogram
from robotok.datasets.video import VideoStreamWriter, decode_episode

CONVERT_HINT = (
    "convert it with LeRobot's converter (pip install lerobot, then "
    "`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=<repo_id>`) and read the result"
)


class LeRobotDataset:
    """A local LeRobotDataset v3.0 directory. ``episode(i)`` reads one episode; nothing else is held in RAM
    but the metadata and the last data file read."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no dataset directory at {self.root}")
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a LeRobotDataset: {info_path} is missing")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        version = str(self.info.get("codebase_version", "unknown"))
        if version != CODEBASE_VERSION:
            hint = CONVERT_HINT if version.startswith("v2") else "re-record or convert it to v3.0 with LeRobot"
            raise ValueError(
                f"{self.root} is a LeRobotDataset {version} dataset; robotok reads {CODEBASE_VERSION}: {hint}"
            )
        self.fps: int = int(self.info["fps"])
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.camera_keys: list[str] = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self.tasks: list[str] = _read_tasks(self.root / "meta" / "tasks.parquet")
        self._episodes = _read_episodes(self.root / "meta" / "episodes")
        stats_path = self.root / "meta" / "stats.json"
        raw_stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        self.stats: dict[str, dict[str, np.ndarray]] = {k: from_json(v) for k, v in raw_stats.items()}
        self.episode_lengths = np.asarray(self._episodes["length"], dtype=np.int64)
        self._cache: tuple[Path, pa.Table, np.ndarray] | None = None

    @property
    def num_episodes(self) -> int:
        return len(self.episode_lengths)

    @property
    def num_frames(self) -> int:
        return int(self.episode_lengths.sum())

    def __len__(self) -> int:
        return self.num_episodes

    def _row(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: the dataset has {self.num_episodes} episodes")
        return {k: v[i] for k, v in self._episodes.items()}

    def episode(self, i: int, load_images: bool = True) -> dict[str, Any]:
        """Episode i: every data column as numpy ([T] or [T, *shape]), the camera frames [T, H, W, 3]
        uint8 when ``load_images``, and ``"task"`` (str)."""
        row = self._row(i)
        path = self.root / self.info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        if self._cache is None or self._cache[0] != path:
            table = pq.read_table(path)
            self._cache = (path, table, table.column("episode_index").to_numpy())
        _, table, episode_col = self._cache
        rows = np.flatnonzero(episode_col == i)
        if len(rows) != row["length"] or (len(rows) and rows[-1] - rows[0] + 1 != len(rows)):
            raise ValueError(f"{path}: episode {i} has {len(rows)} rows (not contiguous or not {row['length']})")
        part = table.slice(int(rows[0]), len(rows))
        out: dict[str, Any] = {}
        for name in part.column_names:
            shape = self.features.get(name, {}).get("shape", [1])
            default = name in DEFAULT_FEATURES
            out[name] = column_to_numpy(part.column(name), [] if default else shape)
        out["task"] = self.tasks[int(out["task_index"][0])]
        if load_images:
            for key in self.camera_keys:
                out[key] = self.episode_frames(i, key)
        return out

    def locate(self, i: int) -> tuple[LeRobotDataset, int]:
        """The directory's dataset and index that hold episode i: itself (as ``DatasetGroup.locate``)."""
        self._row(i)
        return self, i

    def episode_frames(self, i: int, camera_key: str) -> np.ndarray:
        """Decoded frames [T, H, W, 3] uint8 of one camera of episode i."""
        if camera_key not in self.camera_keys:
            raise KeyError(f"{camera_key!r} is not a video feature; cameras: {self.camera_keys}")
        row = self._row(i)
        prefix = f"videos/{camera_key}/"
        path = self.root / self.info["video_path"].format(
            video_key=camera_key, chunk_index=row[prefix + "chunk_index"], file_index=row[prefix + "file_index"]
        )
        return decode_episode(
            path, row[prefix + "from_timestamp"], row[prefix + "to_timestamp"], self.fps, expected=int(row["length"])
        )


class DatasetGroup:
    """Several LeRobotDatasets of one robot read as one: episodes of the first, then of the second, ... (e.g.
    demonstrations and the corrections ``robotok-record-corrections`` adds). The parts must agree on fps
    and cameras. ``anchor_episodes`` counts the first part's episodes: what defines the robot's normalisation
    (``robotok-pretokenize``), so that adding corrections leaves a trained model's token space as it was."""

    def __init__(self, parts: list[LeRobotDataset]) -> None:
        if not parts:
            raise ValueError("a dataset group needs at least one dataset")
        first = parts[0]
        for ds in parts[1:]:
            if ds.fps != first.fps or ds.camera_keys != first.camera_keys:
                raise ValueError(
                    f"{ds.root} ({ds.fps} fps, cameras {ds.camera_keys}) cannot join {first.root} ({first.fps} fps, "
                    f"cameras {first.camera_keys}): a group is one robot, recorded the same way"
                )
        self.parts, self.root = parts, first.root
        self.fps, self.features, self.camera_keys = first.fps, first.features, first.camera_keys
        self.tasks = sorted({t for ds in parts for t in ds.tasks})
        self.episode_lengths = np.concatenate([ds.episode_lengths for ds in parts])
        self.anchor_episodes = first.num_episodes
        self._starts = np.cumsum([0] + [ds.num_episodes for ds in parts])

    @property
    def num_episodes(self) -> int:
        return int(self._starts[-1])

    def __len__(self) -> int:
        return self.num_episodes

    def locate(self, i: int) -> tuple[LeRobotDataset, int]:
        """The part (one dataset directory) that holds episode i of the group, and its index there."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: the group has {self.num_episodes} episodes")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.parts[k], i - int(self._starts[k])

    def episode(self, i: int, load_images: bool = True) -> dict[str, Any]:
        """Episode i of the group, as ``LeRobotDataset.episode``."""
        ds, j = self.locate(i)
        return ds.episode(j, load_images)

    def episode_frames(self, i: int, camera_key: str) -> np.ndarray:
        """Frames of one camera of episode i of the group, as ``LeRobotDataset.episode_frames``."""
        ds, j = self.locate(i)
        return ds.episode_frames(j, camera_key)


def _read_tasks(path: Path) -> list[str]:
    table = pq.read_table(path)
    name = "task" if "task" in table.column_names else "__index_level_0__"
    order = np.argsort(table.column("task_index").to_numpy())
    tasks = table.column(name).to_pylist()
    return [tasks[j] for j in order]


def _read_episodes(folder: Path) -> dict[str, list]:
    files = sorted(folder.glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no episode metadata under {folder}")
    tables = []
    for f in files:
        names = [n for n in pq.read_schema(f).names if not n.startswith("stats/")]
        tables.append(pq.read_table(f, columns=names))
    cols = pa.concat_tables(tables, promote_options="default").to_pydict()
    order = np.argsort(cols["episode_index"], kind="stable")
    if list(np.asarray(cols["episode_index"])[order]) != list(range(len(order))):
        raise ValueError(f"{folder}: episode indices are not 0..{len(order) - 1}; the metadata is incomplete")
    return {k: [v[j] for j in order] for k, v in cols.items()}


# ---------------------------------------------------------------------------------------------- writer


class LeRobotDatasetWriter:
    """Writes a v3.0 dataset episode by episode: ``add_episode`` encodes the frames into the open mp4
    files at once, so at most one episode is in memory; parquet rows are buffered per data file.

    Everything goes to a hidden temporary directory beside ``root`` and ``finalize()`` renames it to
    ``root``: an interrupted recording leaves no directory that looks like a dataset. Used as a context
    manager it finalizes on success and removes the temporary directory on an exception.

    ``features`` maps names to ``{"dtype", "shape", "names"}`` as LeRobot does; cameras have dtype
    "video" and shape [H, W, 3]. ``part_dir`` (for parallel recording) writes the files of one part
    there; ``finish_part()`` then returns a manifest that :func:`assemble` turns into a dataset.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict[str, Any]],
        robot_type: str | None = None,
        *,
        codec: str = "h264",
        pix_fmt: str = "yuv444p",
        crf: int = 0,
        chunks_size: int = 1000,
        data_files_size_in_mb: float = 100,
        video_files_size_in_mb: float = 200,
        part_dir: str | Path | None = None,
    ) -> None:
        self.root, self.fps = Path(root), int(fps)
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.features = check_features(features)
        self.camera_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self._codec = (codec, pix_fmt, int(crf))
        self.chunks_size = int(chunks_size)
        self._limits = (data_files_size_in_mb * 2**20, video_files_size_in_mb * 2**20)
        info_features = {k: dict(f) for k, f in self.features.items()}
        for key in self.camera_keys:
            h, w, c = info_features[key]["shape"]
            info_features[key]["names"] = info_features[key].get("names") or ["height", "width", "channels"]
            info_features[key]["info"] = {
                "video.height": h,
                "video.width": w,
                "video.codec": codec,
                "video.pix_fmt": pix_fmt,
                "video.is_depth_map": False,
                "video.fps": self.fps,
                "video.channels": c,
                "has_audio": False,
            }
        self._info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": video_files_size_in_mb,
            "fps": self.fps,
            "features": {**info_features, **DEFAULT_FEATURES},
        }
        if part_dir is None:
            if self.root.exists():
                raise FileExistsError(f"{self.root} already exists; pick a new path or remove it first")
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.tmp-", dir=self.root.parent))
        else:
            self.dir = Path(part_dir)
            self.dir.mkdir(parents=True)
        self._schema = data_schema(self.features)
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []
        self._num_frames = 0
        self._buffer: list[pa.Table] = []
        self._buffer_bytes = 0
        self._data_files: list[str] = []
        self._videos: dict[str, VideoStreamWriter | None] = {k: None for k in self.camera_keys}
        self._video_files: dict[str, list[str]] = {k: [] for k in self.camera_keys}
        self._hist = {k: np.zeros((3, 256), dtype=np.int64) for k in self.camera_keys}
        self._state = "open"

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.finalize()

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def add_episode(self, episode: dict[str, np.ndarray], task: str) -> int:
        """Append one episode (every feature as [T, *shape]); returns its index in this writer."""
        if self._state != "open":
            raise RuntimeError(f"writer is {self._state}; add episodes before finalize()")
        if not isinstance(task, str) or not task:
            raise ValueError(f"task must be a non-empty string, got {task!r}")
        missing, extra = set(self.features) - set(episode), set(episode) - set(self.features)
        if missing or extra:
            raise ValueError(
                f"episode keys disagree with the features: missing {sorted(missing)}, unknown {sorted(extra)}"
            )
        arrays = {k: check_array(k, np.asarray(episode[k]), f) for k, f in self.features.items()}
        lengths = {k: len(v) for k, v in arrays.items()}
        length = next(iter(lengths.values()))
        if length == 0 or any(n != length for n in lengths.values()):
            raise ValueError(f"every feature needs the same number (> 0) of frames, got {lengths}")
        index = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        frame_index = np.arange(length, dtype=np.int64)
        timestamp = (frame_index / self.fps).astype(np.float32)
        # "_data_file" and "_video_file/<key>" are this writer's file numbers; assemble() renumbers them.
        row: dict[str, Any] = {
            "episode_index": index,
            "tasks": [task],
            "length": length,
            "_data_file": len(self._data_files),
            "dataset_from_index": self._num_frames,
            "dataset_to_index": self._num_frames + length,
        }
        stats: dict[str, dict[str, np.ndarray]] = {}
        for key in self.camera_keys:
            row.update(self._encode(key, arrays[key]))
            hist = image_histogram(arrays[key])
            self._hist[key] += hist
            stats[key] = histogram_stats(hist, length)
        columns = {k: v for k, v in arrays.items() if k not in self.camera_keys}
        columns.update(
            timestamp=timestamp,
            frame_index=frame_index,
            episode_index=np.full(length, index, np.int64),
            index=np.arange(self._num_frames, self._num_frames + length, dtype=np.int64),
            task_index=np.full(length, task_index, np.int64),
        )
        for key in (*[k for k in arrays if k not in self.camera_keys], "timestamp", "frame_index"):
            stats[key] = array_stats(columns[key])
        row["_stats"] = stats
        table = pa.table([to_arrow(columns[f.name], f) for f in self._schema], schema=self._schema)
        self._buffer.append(table)
        self._buffer_bytes += table.nbytes
        if self._buffer_bytes >= self._limits[0]:
            self._flush_data()
        self._episodes.append(row)
        self._num_frames += length
        return index

    def _encode(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        writer = self._videos[key]
        if writer is None:
            rel = file_path(VIDEO_PATH, len(self._video_files[key]), self.chunks_size, video_key=key)
            h, w, _ = self.features[key]["shape"]
            codec, pix_fmt, crf = self._codec
            writer = self._videos[key] = VideoStreamWriter(self.dir / rel, self.fps, h, w, codec, pix_fmt, crf)
            self._video_files[key].append(rel)
        start, stop = writer.add_episode(frames)
        if writer.bytes_written >= self._limits[1]:
            writer.close()
            self._videos[key] = None
        return {
            f"_video_file/{key}": len(self._video_files[key]) - 1,
            f"videos/{key}/from_timestamp": start,
            f"videos/{key}/to_timestamp": stop,
        }

    def _flush_data(self) -> None:
        if not self._buffer:
            return
        rel = file_path(DATA_PATH, len(self._data_files), self.chunks_size)
        (self.dir / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(self._buffer), self.dir / rel)
        self._data_files.append(rel)
        self._buffer, self._buffer_bytes = [], 0

    def _close_files(self) -> None:
        self._flush_data()
        for key, writer in self._videos.items():
            if writer is not None:
                writer.close()
                self._videos[key] = None

    def finish_part(self) -> dict[str, Any]:
        """Close this part's files and return its manifest (plain data) for :func:`assemble`."""
        if self._state != "open":
            raise RuntimeError(f"writer is {self._state}")
        self._close_files()
        self._state = "finished"
        return {
            "dir": str(self.dir),
            "info": self._info,
            "tasks": list(self._tasks),
            "episodes": self._episodes,
            "data_files": self._data_files,
            "video_files": self._video_files,
            "image_hist": self._hist,
        }

    def finalize(self, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write meta/ and move the finished dataset to ``root``; returns ``root``."""
        if not self._episodes:
            self.abort()
            raise ValueError("no episodes were added; nothing to write")
        try:
            manifest = self.finish_part()
            out = assemble(self.root, self.dir, [manifest], extra_meta)
        except BaseException:
            self.abort()
            raise
        self._state = "finalized"
        return out

    def abort(self) -> None:
        """Drop everything written so far (the temporary directory)."""
        for writer in self._videos.values():
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # noqa: S110  (the files are being deleted anyway)
                    pass
        self._videos = {k: None for k in self.camera_keys}
        shutil.rmtree(self.dir, ignore_errors=True)
        self._state = "aborted"
