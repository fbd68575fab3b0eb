"""The v3.0 file layout: path templates, feature checks, parquet schemas, and ``assemble``, which turns
the files of one or more writers (parts) into a finished dataset directory.

Parallel recording writes one part per process, each with its own data and video files; ``assemble``
numbers the files in part order, moves the mp4 files unchanged (episode timestamps are relative to
their file, so they stay valid), rewrites the small data parquet files with global episode, frame and
task indices, and writes meta/ (tasks, episodes, info, stats). The last step is one ``os.replace``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robotok.datasets.stats import array_stats, histogram_stats, to_json

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
NUMERIC_DTYPES = ("float32", "float64", "int32", "int64", "bool")


def file_path(template: str, number: int, chunks_size: int, **kw: str) -> str:
    """The path of the ``number``-th file: ``chunks_size`` files per chunk folder."""
    chunk, file = divmod(number, chunks_size)
    return template.format(chunk_index=chunk, file_index=file, **kw)


def check_features(features: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate user features (cameras "video" [H, W, 3]; the rest vectors [D]); returns clean copies."""
    out = {}
    for key, ft in features.items():
        if key in DEFAULT_FEATURES:
            raise ValueError(f"feature {key!r} is written by the writer itself; leave it out")
        dtype, shape = ft.get("dtype"), [int(s) for s in ft.get("shape", [])]
        if dtype == "video":
            if len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"video feature {key!r} needs shape [H, W, 3], got {shape}")
        elif dtype in NUMERIC_DTYPES:
            if len(shape) != 1:
                raise ValueError(f"feature {key!r} needs a 1-D shape [D], got {shape}")
        else:
            raise ValueError(f"feature {key!r} has dtype {dtype!r}; use 'video' for cameras or one of {NUMERIC_DTYPES}")
        out[key] = {"dtype": dtype, "shape": shape, "names": ft.get("names")}
    return out


def check_array(key: str, x: np.ndarray, ft: dict[str, Any]) -> np.ndarray:
    """One episode's values of a feature as [T, *shape] in the feature's dtype (same-kind casts only)."""
    shape = tuple(ft["shape"])
    if ft["dtype"] == "video":
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != shape:
            raise ValueError(
                f"{key}: frames must be uint8 [T, {', '.join(map(str, shape))}], got {x.dtype} {list(x.shape)}"
            )
        return x
    dtype = np.dtype(ft["dtype"])
    if not np.can_cast(x.dtype, dtype, "same_kind"):
        raise ValueError(f"{key}: values of dtype {x.dtype} do not fit feature dtype {dtype}")
    if shape == (1,) and x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1:] != shape:
        raise ValueError(f"{key}: values must be [T, {shape[0]}], got {list(x.shape)}")
    return x.astype(dtype, copy=False)


def data_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    """Parquet schema of data files, as LeRobot writes them (vectors as fixed-size lists, [1] as scalars)."""
    fields, hf = [], {}
    for key, ft in {**{k: f for k, f in features.items() if f["dtype"] != "video"}, **DEFAULT_FEATURES}.items():
        value = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
        hf_value = {"dtype": ft["dtype"], "_type": "Value"}
        if ft["shape"] == [1]:
            fields.append(pa.field(key, value))
            hf[key] = hf_value
        else:
            fields.append(pa.field(key, pa.list_(value, ft["shape"][0])))
            hf[key] = {"feature": hf_value, "length": ft["shape"][0], "_type": "List"}
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf}})})


def to_arrow(x: np.ndarray, field: pa.Field) -> pa.Array:
    """numpy [T] or [T, D] -> an arrow array of ``field``'s type."""
    if pa.types.is_fixed_size_list(field.type):
        return pa.FixedSizeListArray.from_arrays(
            pa.array(x.reshape(-1), type=field.type.value_type), field.type.list_size
        )
    return pa.array(x.reshape(-1), type=field.type)


def column_to_numpy(col: pa.ChunkedArray | pa.Array, shape: list[int]) -> np.ndarray:
    """A parquet column -> numpy [T, *shape] (lists flattened, offset-aware), or [T] when shape is []."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    while pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    return values.reshape(n, *shape) if shape else values.reshape(n)


def _replace_columns(table: pa.Table, new: dict[str, np.ndarray]) -> pa.Table:
    for name, values in new.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    return table


def _write_tasks(path: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as pandas writes a DataFrame indexed by task (so LeRobot's ``pd.read_parquet`` reads it)."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": pa.array(tasks, pa.large_string())}
    )
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


def assemble(
    root: str | Path, workdir: str | Path, parts: list[dict[str, Any]], extra_meta: dict[str, Any] | None = None
) -> Path:
    """Turn writer parts (manifests from ``LeRobotDatasetWriter.finish_part``) into the dataset ``root``.

    Files are moved into ``workdir`` (a temporary directory on the same filesystem, which may be the
    part's own directory), meta/ is written there, and ``workdir`` is renamed to ``root``.
    ``extra_meta`` maps file names under meta/ to JSON-able objects.
    """
    root, workdir = Path(root), Path(workdir)
    info = dict(parts[0]["info"])
    for part in parts[1:]:
        if part["info"] != parts[0]["info"]:
            raise ValueError("parts disagree on fps, features or layout; they cannot form one dataset")
    features, chunks = info["features"], info["chunks_size"]
    cameras = [k for k, f in features.items() if f["dtype"] == "video"]
    task_ids: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    n_data, n_video = 0, dict.fromkeys(cameras, 0)
    hist = {k: np.zeros((3, 256), dtype=np.int64) for k in cameras}
    ep_off = frame_off = 0
    for part in parts:
        pdir = Path(part["dir"])
        task_map = np.array([task_ids.setdefault(t, len(task_ids)) for t in part["tasks"]], dtype=np.int64)
        data_map = []
        for rel in part["data_files"]:
            table = pq.read_table(pdir / rel)
            table = _replace_columns(
                table,
                {
                    "episode_index": table.column("episode_index").to_numpy() + ep_off,
                    "index": table.column("index").to_numpy() + frame_off,
                    "task_index": task_map[table.column("task_index").to_numpy()],
                },
            )
            dst = workdir / file_path(DATA_PATH, n_data, chunks)
            dst.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, dst.with_name(dst.name + ".tmp"))
            os.replace(dst.with_name(dst.name + ".tmp"), dst)
            if (pdir / rel).resolve() != dst.resolve():
                (pdir / rel).unlink()
            data_map.append(n_data)
            n_data += 1
        video_map: dict[str, list[int]] = {}
        for key in cameras:
            video_map[key] = []
            for rel in part["video_files"][key]:
                dst = workdir / file_path(VIDEO_PATH, n_video[key], chunks, video_key=key)
                if (pdir / rel).resolve() != dst.resolve():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(pdir / rel, dst)
                video_map[key].append(n_video[key])
                n_video[key] += 1
            hist[key] += part["image_hist"][key]
        for r in part["episodes"]:
            e, length = r["episode_index"] + ep_off, r["length"]
            start = r["dataset_from_index"] + frame_off
            dc, df = divmod(data_map[r["_data_file"]], chunks)
            row: dict[str, Any] = {
                "episode_index": e,
                "tasks": r["tasks"],
                "length": length,
                "data/chunk_index": dc,
                "data/file_index": df,
                "dataset_from_index": start,
                "dataset_to_index": start + length,
            }
            for key in cameras:
                row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"] = divmod(
                    video_map[key][r[f"_video_file/{key}"]], chunks
                )
                for end in ("from_timestamp", "to_timestamp"):
                    row[f"videos/{key}/{end}"] = float(r[f"videos/{key}/{end}"])
            stats = {
                **r["_stats"],
                "episode_index": array_stats(np.full(length, e, np.int64)),
                "index": array_stats(np.arange(start, start + length, dtype=np.int64)),
                "task_index": array_stats(np.full(length, task_ids[r["tasks"][0]], np.int64)),
            }
            for key in features:
                row.update({f"stats/{key}/{name}": v for name, v in to_json(stats[key]).items()})
            rows.append({**row, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        ep_off += len(part["episodes"])
        frame_off += sum(r["length"] for r in part["episodes"])
        if pdir.resolve() != workdir.resolve():
            shutil.rmtree(pdir)

    # Dataset stats: vectors from the data files (small), images from the summed histograms (exact).
    numeric = [k for k, f in features.items() if f["dtype"] != "video"]
    data = pa.concat_tables(
        pq.read_table(workdir / file_path(DATA_PATH, n, chunks), columns=numeric) for n in range(n_data)
    )
    stats = {}
    for key in features:
        if key in cameras:
            stats[key] = to_json(histogram_stats(hist[key], frame_off))
        else:
            stats[key] = to_json(
                array_stats(
                    column_to_numpy(data.column(key), [] if features[key]["shape"] == [1] else features[key]["shape"])
                )
            )
    meta = workdir / "meta"
    (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    _write_tasks(meta / "tasks.parquet", list(task_ids))
    pq.write_table(pa.Table.from_pylist(rows), workdir / EPISODES_PATH.format(chunk_index=0, file_index=0))
    full_info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": info["robot_type"],
        "total_episodes": ep_off,
        "total_frames": frame_off,
        "total_tasks": len(task_ids),
        "chunks_size": chunks,
        "data_files_size_in_mb": info["data_files_size_in_mb"],
        "video_files_size_in_mb": info["video_files_size_in_mb"],
        "fps": info["fps"],
        "splits": {"train": f"0:{ep_off}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if cameras else None,
        "features": features,
    }
    (meta / "info.json").write_text(json.dumps(full_info, indent=4))
    (meta / "stats.json").write_text(json.dumps(stats, indent=4))
    for name, obj in (extra_meta or {}).items():
        (meta / name).write_text(json.dumps(obj, indent=2))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(workdir, 0o777 & ~umask)  # mkdtemp made it private; a dataset is as readable as any new folder
    if root.exists():
        raise FileExistsError(f"{root} appeared while writing; not overwriting it")
    os.replace(workdir, root)
    return root
