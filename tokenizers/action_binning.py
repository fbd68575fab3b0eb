"""Per-dimension binning of actions: one token per action dimension per time step (RT-2, OpenVLA).

Each dimension gets ``bins`` representative values, shared token ids ``0 .. bins-1`` across dimensions. A value
is encoded by its nearest representative. ``strategy="uniform"`` spaces the bins evenly over the fitted
``[min, max]`` (or a quantile range); ``"quantile"`` places bin edges at quantiles of the fitted data, so that
each bin holds about the same number of samples (finer where the actions dwell; a two-valued dimension gets
exact representatives). A chunk ``[H, D]`` becomes ``H * D`` tokens, time-major: ``t0d0 t0d1 ... t1d0 ...``.

Round-trip bound: a value inside the fitted range is off by at most half the width of its bin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robotok.tokenizers.action_common import (
    CONFIG_NAME,
    FORMAT_VERSION,
    RangeNormalizer,
    check_chunks,
    check_decode_args,
    read_config,
    sanitize_ids,
    write_json_atomic,
)

STRATEGIES = ("uniform", "quantile")


class BinningTokenizer:
    """``H * D`` tokens per chunk; ids ``0 .. bins-1``."""

    kind = "binning"

    def __init__(self, bins: int = 256, strategy: str = "uniform", range_quantile: float = 0.0):
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.bins = int(bins)
        self.strategy = strategy
        self.range_quantile = float(range_quantile)  # uniform bins over [q, 1-q] quantiles; 0 = min/max
        self.norm: RangeNormalizer | None = None
        self.horizon = 0  # the chunk length fitted on (informative: any horizon encodes and decodes)
        self.edges: np.ndarray | None = None  # [D, bins+1] raw units, non-decreasing
        self._set_edges(None)

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, chunks: np.ndarray) -> BinningTokenizer:
        """Fit bin edges on ``chunks[N, H, D]`` (raw actions)."""
        x = check_chunks(chunks)
        flat = x.reshape(-1, x.shape[-1])
        self.horizon = x.shape[1]
        self.norm = RangeNormalizer.fit(flat, self.range_quantile)
        if self.strategy == "uniform":
            edges = np.linspace(self.norm.low, self.norm.high, self.bins + 1, axis=1)
        else:
            edges = np.quantile(flat, np.linspace(0.0, 1.0, self.bins + 1), axis=0).T
        self._set_edges(np.maximum.accumulate(edges, axis=1))
        return self

    def _set_edges(self, edges: np.ndarray | None) -> None:
        self.edges = edges
        if edges is None:
            self.centers = self._bounds = None
            return
        self.centers = (edges[:, :-1] + edges[:, 1:]) / 2.0  # [D, bins] decode values
        self._bounds = (self.centers[:, :-1] + self.centers[:, 1:]) / 2.0  # [D, bins-1] nearest-centre cuts

    def _require_fit(self) -> RangeNormalizer:
        if self.norm is None:
            raise RuntimeError("BinningTokenizer is not fitted: call fit(chunks) or load(dir) first")
        return self.norm

    # ---- the interface ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.bins

    @property
    def dim(self) -> int:
        return self._require_fit().dim

    def tokens_per_chunk(self, horizon: int, dim: int) -> int:
        """Fixed: ``horizon * dim``."""
        return int(horizon) * int(dim)

    def max_tokens_per_chunk(self, horizon: int, dim: int) -> int:
        return self.tokens_per_chunk(horizon, dim)

    def bin_widths(self) -> np.ndarray:
        """``[D, bins]`` widths of the bins in raw units (for error bounds)."""
        self._require_fit()
        return np.diff(self.edges, axis=1)

    def encode_array(self, chunks: np.ndarray) -> np.ndarray:
        """``chunks[N, H, D]`` -> int64 ids ``[N, H * D]``."""
        self._require_fit()
        x = check_chunks(chunks, self.dim)
        ids = np.empty(x.shape, dtype=np.int64)
        for d in range(x.shape[2]):
            ids[..., d] = np.searchsorted(self._bounds[d], x[..., d], side="left")
        return ids.reshape(x.shape[0], -1)

    def encode(self, chunk: np.ndarray) -> list[int]:
        """``chunk[H, D]`` -> ``H * D`` ids."""
        return self.encode_array(np.asarray(chunk)[None])[0].tolist()

    def encode_batch(self, chunks: np.ndarray) -> list[list[int]]:
        return self.encode_array(chunks).tolist()

    def decode(self, ids: Any, horizon: int, dim: int) -> tuple[np.ndarray, bool]:
        """Ids -> ``(chunk[horizon, dim] float32, ok)``. Never raises for any ids.

        Repairs: ids outside ``[0, bins)`` are dropped; a short sequence is completed by holding its last
        complete step (missing dims of a partial step come from the step before, or the range midpoint);
        a long one is cut. ``ok`` is False whenever a repair was needed.
        """
        norm = self._require_fit()
        check_decode_args(horizon, dim, norm.dim)
        ids, ok = sanitize_ids(ids, self.bins)
        n = horizon * dim
        if ids.size != n:
            ok = False
        ids = ids[:n]
        full, rest = divmod(ids.size, dim)
        out = np.empty((horizon, dim), dtype=np.float64)
        if full:
            steps = ids[: full * dim].reshape(full, dim)
            out[:full] = self.centers[np.arange(dim), steps]
        hold = out[full - 1] if full else norm.clip(norm.mid)
        if full < horizon:
            last = hold.copy()
            if rest:
                last[:rest] = self.centers[np.arange(rest), ids[full * dim :]]
            out[full:] = last  # hold the last (possibly partial, repaired) step
        return out.astype(np.float32), ok

    def decode_batch(self, ids_list: list[Any], horizon: int, dim: int) -> list[tuple[np.ndarray, bool]]:
        return [self.decode(ids, horizon, dim) for ids in ids_list]

    def decode_array(self, ids: np.ndarray, horizon: int, dim: int) -> np.ndarray:
        """Fast path for well-formed ids ``[N, horizon * dim]`` -> chunks ``[N, horizon, dim]`` float32."""
        self._require_fit()
        ids = np.clip(np.asarray(ids, dtype=np.int64), 0, self.bins - 1).reshape(-1, horizon, dim)
        return self.centers[np.arange(dim), ids].astype(np.float32)

    # ---- files -----------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        norm = self._require_fit()
        return {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "bins": self.bins,
            "strategy": self.strategy,
            "range_quantile": self.range_quantile,
            "horizon": self.horizon,
            "normalizer": norm.to_json(),
            "edges": self.edges.tolist(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``<dir>/config.json``."""
        directory = Path(directory)
        write_json_atomic(directory / CONFIG_NAME, self.to_json())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BinningTokenizer:
        cfg = read_config(directory, cls.kind)
        tok = cls(cfg["bins"], cfg["strategy"], cfg["range_quantile"])
        tok.norm = RangeNormalizer.from_json(cfg["normalizer"])
        tok.horizon = int(cfg["horizon"])
        tok._set_edges(np.asarray(cfg["edges"], dtype=np.float64))
        return tok

    def __repr__(self) -> str:
        return f"BinningTokenizer(bins={self.bins}, strategy={self.strategy!r}, fitted={self.norm is not None})"
