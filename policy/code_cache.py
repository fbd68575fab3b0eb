"""Video codes kept between ``robotok-pretokenize`` runs (``--code-cache DIR``).

Each round of corrections pre-tokenises the demonstrations and every earlier round again, with the same video
tokenizer: without a cache the old episodes' frames are decoded and encoded once per round. The cache keeps,
per dataset directory and camera, the codes of all its episodes' frames, under a key made of the video
tokenizer's weights and the dataset's recorded content (``meta/info.json``, the episode tables, the size of
every video file). A re-recorded directory or a retrained tokenizer gets a new key, never a stale entry.

Layout: ``DIR/<tokenizer key>/<dataset key>/<camera>.npz`` with ``codes`` [frames, h, w] int16 and ``starts``
[episodes + 1] (episode i's codes are ``codes[starts[i]:starts[i + 1]]``). A file is written, atomically,
only once every episode of its dataset was encoded in a run that finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np


def tokenizer_key(video_tokenizer: Any) -> str:
    """A key of the video tokenizer's configuration and weights: equal keys encode frames the same way."""
    h = hashlib.sha256(json.dumps(asdict(video_tokenizer.cfg), sort_keys=True, default=str).encode())
    for name, tensor in sorted(video_tokenizer.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def dataset_key(root: Path) -> str:
    """A key of a recorded dataset directory's content: its info, episode tables and video file sizes."""
    h = hashlib.sha256()
    for path in sorted([root / "meta" / "info.json", *(root / "meta" / "episodes").rglob("*.parquet")]):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for path in sorted((root / "videos").rglob("*.mp4")):
        h.update(f"{path.relative_to(root)}:{path.stat().st_size}".encode())
    return h.hexdigest()[:20]


class CodeCache:
    """Codes of episodes' frames per (dataset directory, camera); ``get`` reads, ``put`` collects and
    ``flush`` writes the complete ones."""

    def __init__(self, root: str | Path, video_tokenizer: Any) -> None:
        self.root = Path(root) / tokenizer_key(video_tokenizer)
        self._keys: dict[Path, str] = {}
        self._loaded: dict[tuple[Path, str], tuple[np.ndarray, np.ndarray] | None] = {}
        self._new: dict[tuple[Path, str], dict[int, np.ndarray]] = {}
        self._sizes: dict[Path, int] = {}
        self.hits = self.misses = 0

    def _file(self, root: Path, camera: str) -> Path:
        if root not in self._keys:
            self._keys[root] = dataset_key(root)
        return self.root / self._keys[root] / f"{camera}.npz"

    def get(self, ds: Any, i: int, camera: str) -> np.ndarray | None:
        """Codes [T, h, w] of episode ``i`` of LeRobotDataset ``ds`` and ``camera``, or None when not cached."""
        key = (Path(ds.root), camera)
        if key not in self._loaded:
            path = self._file(*key)
            if path.is_file():
                with np.load(path) as z:
                    self._loaded[key] = (z["codes"], z["starts"])
            else:
                self._loaded[key] = None
        entry = self._loaded[key]
        if entry is None or i + 1 >= len(entry[1]):
            self.misses += 1
            return None
        self.hits += 1
        codes, starts = entry
        return codes[starts[i] : starts[i + 1]].astype(np.int64)

    def put(self, ds: Any, i: int, camera: str, codes: np.ndarray) -> None:
        """Keep episode ``i``'s codes until ``flush``."""
        key = (Path(ds.root), camera)
        if self._loaded.get(key) is None:
            codes = np.asarray(codes)
            small = codes.size == 0 or int(codes.max()) < 2**15
            self._new.setdefault(key, {})[i] = codes.astype(np.int16 if small else np.int32)
            self._sizes[key[0]] = ds.num_episodes

    def flush(self) -> list[Path]:
        """Write the (dataset, camera) entries whose every episode was put; returns the files written."""
        written = []
        for (root, camera), eps in self._new.items():
            if sorted(eps) != list(range(self._sizes[root])):
                continue  # e.g. --max-episodes: not the whole dataset
            path = self._file(root, camera)
            path.parent.mkdir(parents=True, exist_ok=True)
            lengths = [len(eps[i]) for i in range(len(eps))]
            starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
            os.close(fd)
            try:
                np.savez(tmp, codes=np.concatenate([eps[i] for i in range(len(eps))]), starts=starts)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            written.append(path)
        self._new.clear()
        return written


def episode_codes(
    ds: Any, i: int, keys: list[str], length: int, used: list[int], video_tokenizer: Any, cache: CodeCache | None
) -> tuple[list[np.ndarray], dict[int, int]]:
    """Video codes of episode ``i`` of ``ds`` (a LeRobotDataset or DatasetGroup) per camera key, and the row of
    each frame index in them. Without a cache only the ``used`` frames are encoded; with one, every frame (for
    whichever stride or history the next run asks), read from the cache when it holds every camera."""
    part, j = ds.locate(i)
    if cache is not None:
        hit = [cache.get(part, j, k) for k in keys]
        if all(c is not None and len(c) == length for c in hit):
            return hit, {t: t for t in range(length)}
        used = list(range(length))
    frames = [np.asarray(part.episode_frames(j, k)) for k in keys]
    assert all(len(f) == length for f in frames), f"{part.root} episode {j}: frames vs {length} states"
    codes = [video_tokenizer.encode(f[used]) for f in frames]  # per camera [len(used), h, w]
    if cache is not None:
        for k, c in zip(keys, codes, strict=True):
            cache.put(part, j, k, c)
    return codes, {t: r for r, t in enumerate(used)}
