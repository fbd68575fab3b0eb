"""Pre-tokenised training shards: fixed-length token sequences on disk, read memory-mapped.

Tokenise once, train many times: the trainer never decodes video. A shard directory holds

- ``meta.json``: ``{"format": "robotok-shards-v1", "num_sequences": N, "seq_len": L, "vocab_size": V, ...}``
  plus whatever the writer adds (task names, source datasets);
- ``tokens.bin``: int32 [N, L] token ids, right-padded with the PAD id;
- ``kinds.bin``: uint8 [N, L], what the token at each position is as a *target* (``KIND_*``): the loss
  at position t predicts ``tokens[t]`` from ``tokens[:t]``, weighted by its kind;
- ``episodes.bin``: int32 [N, 2], (episode index, step index) of each sequence, for splits by episode.

Beside them, the writer of the shards puts everything a checkpoint needs to describe itself
(``token_space.json``, ``policy.json``, ``tokenizers/``); the trainer copies those into every checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from robotok.tokenizers.space import PAD

FORMAT = "robotok-shards-v1"
KIND_NONE = 0  # context only (prompt, frames, state, padding): no loss
KIND_ACTION = 1  # action tokens and the action-closing marker: the policy loss
KIND_FRAME = 2  # next-frame video tokens: the world-model loss (weighted)
KIND_GOAL = 3  # goal-state bins and their closing marker: predicted before the actions (weighted as actions)


def write_shards(
    out_dir: str | Path,
    tokens: np.ndarray,
    kinds: np.ndarray,
    episodes: np.ndarray,
    meta: dict[str, Any],
    extra_files: dict[str, str | Path] | None = None,
) -> Path:
    """Write a shard directory atomically (temporary directory, then rename).

    ``tokens``/``kinds``: [N, L]; ``episodes``: [N, 2]. ``extra_files`` maps a name inside the shard
    directory to a file or folder to copy there (token space, tokenizers, policy conventions).
    """
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    kinds = np.ascontiguousarray(kinds, dtype=np.uint8)
    episodes = np.ascontiguousarray(episodes, dtype=np.int32)
    if tokens.ndim != 2 or kinds.shape != tokens.shape or episodes.shape != (tokens.shape[0], 2):
        raise ValueError(f"shapes disagree: tokens {tokens.shape}, kinds {kinds.shape}, episodes {episodes.shape}")
    if "vocab_size" not in meta:
        raise ValueError("meta must give vocab_size")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= meta["vocab_size"]):
        raise ValueError(f"token ids span [{tokens.min()}, {tokens.max()}], outside vocab_size {meta['vocab_size']}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tokens.tofile(tmp / "tokens.bin")
        kinds.tofile(tmp / "kinds.bin")
        episodes.tofile(tmp / "episodes.bin")
        full = {**meta, "format": FORMAT, "num_sequences": int(tokens.shape[0]), "seq_len": int(tokens.shape[1])}
        (tmp / "meta.json").write_text(json.dumps(full, indent=2))
        for name, src in (extra_files or {}).items():
            src = Path(src)
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            else:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


class TokenShards:
    """Read-only, memory-mapped view of a shard directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.root} is not a shard directory (no meta.json); make one with robotok-pretokenize"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.root}: shard format {self.meta.get('format')!r}, expected {FORMAT!r}")
        n, length = self.meta["num_sequences"], self.meta["seq_len"]
        self.tokens = np.memmap(self.root / "tokens.bin", dtype=np.int32, mode="r", shape=(n, length))
        self.kinds = np.memmap(self.root / "kinds.bin", dtype=np.uint8, mode="r", shape=(n, length))
        self.episodes = np.memmap(self.root / "episodes.bin", dtype=np.int32, mode="r", shape=(n, 2))

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def __len__(self) -> int:
        return int(self.meta["num_sequences"])

    def lengths(self, chunk: int = 8192) -> np.ndarray:
        """int64 [N]: tokens of each row up to its last non-PAD id (rows are right-padded), read in chunks."""
        out = np.empty(len(self), dtype=np.int64)
        cols = np.arange(1, self.seq_len + 1)
        for i in range(0, len(self), chunk):
            rows = np.asarray(self.tokens[i : i + chunk])
            out[i : i + len(rows)] = ((rows != 0) * cols).max(axis=1)  # PAD is id 0
        return out

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and kinds of the given sequences, copied out of the memory map: ([B, L] int64, [B, L] uint8)."""
        indices = np.asarray(indices)
        return self.tokens[indices].astype(np.int64), np.asarray(self.kinds[indices])


# --- which rows a step trains on ---------------------------------------------------------------------------
def split_by_episode(episodes: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequence indices (train, val): whole episodes go to one side, chosen at random from the seed."""
    ep = np.asarray(episodes[:, 0])
    unique = np.unique(ep)
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    else:
        n_val = 0
    val_eps = np.random.default_rng([seed, 7]).permutation(unique)[:n_val]
    is_val = np.isin(ep, val_eps)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def global_batch_indices(
    train_idx: np.ndarray,
    global_batch: int,
    seed: int,
    step: int,
    lengths: np.ndarray | None = None,
    bucket: int = 16,
) -> np.ndarray:
    """The sequences of optimizer step ``step``: [global_batch] indices, a pure function of (seed, step).

    Walks epoch-wise permutations of the training set, so every sequence is seen once per epoch.
    ``lengths`` (per shard row, non-PAD tokens): group ``bucket`` consecutive batches, sort the group's
    sequences by length, cut it into batches again and shuffle their order; a batch then holds sequences of
    about one length, and the trainer trims its padding (two robots of 197 and 329 tokens cost their mean,
    not 329 each). The multiset of sequences per group is unchanged.
    """
    if lengths is not None and bucket > 1:
        group = step // bucket
        rows = _stream(train_idx, global_batch * bucket, seed, group)
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        order = np.random.default_rng([seed, 7919, group]).permutation(bucket)
        k = int(order[step % bucket])
        return rows[k * global_batch : (k + 1) * global_batch]
    return _stream(train_idx, global_batch, seed, step)


def _stream(train_idx: np.ndarray, global_batch: int, seed: int, step: int) -> np.ndarray:
    n = len(train_idx)
    pos = step * global_batch + np.arange(global_batch)
    out = np.empty(global_batch, dtype=np.int64)
    for epoch in np.unique(pos // n):
        sel = pos // n == epoch
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        out[sel] = train_idx[perm[pos[sel] % n]]
    return out


def trimmed_length(tokens: np.ndarray) -> int:
    """Columns up to the last non-PAD id of any row (rows are right-padded), at least 2 (an input and a target)."""
    used = np.flatnonzero((tokens != PAD).any(axis=0))
    return max(int(used[-1]) + 1 if len(used) else 0, 2)


def kind_weights(kinds: np.ndarray, frame_w: float) -> np.ndarray:
    """Loss weight per target position: 1 on actions and goals, ``frame_w`` on next-frame video ids, 0 elsewhere."""
    return np.isin(kinds, (KIND_ACTION, KIND_GOAL)).astype(np.float32) + frame_w * (kinds == KIND_FRAME).astype(
        np.float32
    )
