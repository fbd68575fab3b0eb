"""DCT + BPE action tokens: FAST (Pertsch et al., 2025, "FAST: Efficient Action Tokenization for VLAs").

Per chunk ``[H, D]``: normalise each dimension to ``[-1, 1]`` from the fitted q01/q99 quantiles; orthonormal
DCT-II along time; multiply by ``scale`` and round to integers; flatten low frequencies first (all dims of
frequency 0, then frequency 1, ...); write each integer as one character and compress the string with a BPE
vocabulary trained (HuggingFace ``tokenizers``) on the fitted chunks. Smooth chunks leave mostly zeros in the
high frequencies, which BPE merges into a few tokens.

A two-valued dimension (a gripper that is open or closed) is a step in time, which the DCT spreads over every
frequency. With ``binary_dims=True`` such dimensions (detected at fit time) are written instead as one
character for the level at ``t=0`` plus one character per switch time; they come first in the string.

Round-trip bound (continuous dims, chunks inside the q01/q99 range): each coefficient is off by at most
``0.5 / scale`` after rounding, so by orthonormality the RMSE over a chunk's ``H`` steps is at most ``0.5 / scale``
and any single value at most ``sqrt(H) * 0.5 / scale`` (normalised units; times ``(q99 - q01) / 2`` in raw units).
Binary dims round-trip exactly. Decode never raises: malformed strings are parsed as far as they make sense,
missing coefficients are zero (a low-pass chunk), and ``ok`` is False.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from robotok.tokenizers.action_common import (
    CONFIG_NAME,
    FORMAT_VERSION,
    RangeNormalizer,
    check_chunks,
    check_decode_args,
    detect_binary_dims,
    read_config,
    sanitize_ids,
    write_json_atomic,
    write_text_atomic,
)
from tokenizers import Tokenizer, models, trainers

BPE_NAME = "bpe.json"
CHAR_BASE = 0x100  # code point of the first symbol: skips ASCII/Latin-1 control and space characters
MAX_CODE_POINT = 0xD800  # surrogates start here; the alphabet must end below


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C[k, t]``: ``coefs = C @ x``, ``x = C.T @ coefs``."""
    t = np.arange(n)
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t[None, :] + 1) * np.arange(n)[:, None] / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


class DCTBPETokenizer:
    """Variable-length tokens; ids ``0 .. vocab_size-1``."""

    kind = "dct_bpe"

    def __init__(
        self, scale: float = 10.0, bpe_vocab_size: int = 1024, range_quantile: float = 0.01, binary_dims: bool = True
    ):
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.bpe_vocab_size = int(bpe_vocab_size)
        self.range_quantile = float(range_quantile)
        self.binary_dims = bool(binary_dims)
        self.norm: RangeNormalizer | None = None
        self.horizon = 0
        self.binary: list[int] = []  # dims written as level + switch times
        self.levels = np.zeros((0, 2))  # [nb, 2] (low level, high level) of each binary dim
        self.default_level: list[int] = []  # the more common level, used when a decode must guess
        self.cmin = self.cmax = 0  # range of the rounded, scaled DCT coefficients
        self._bpe: Tokenizer | None = None
        self._token_str: list[str] = []
        self._dct: dict[int, np.ndarray] = {}

    # ---- layout of the character alphabet --------------------------------------------------------------------
    @property
    def continuous(self) -> list[int]:
        return [d for d in range(self.dim) if d not in self.binary]

    @property
    def _n_coef_symbols(self) -> int:
        return self.cmax - self.cmin + 1

    @property
    def _n_symbols(self) -> int:
        return self._n_coef_symbols + (2 + self.horizon - 1 if self.binary else 0)

    def _dct_matrix(self, n: int) -> np.ndarray:
        if n not in self._dct:
            self._dct[n] = dct_matrix(n)
        return self._dct[n]

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, chunks: np.ndarray) -> DCTBPETokenizer:
        """Fit normalisation, binary dims, coefficient range and the BPE vocabulary on ``chunks[N, H, D]``."""
        x = check_chunks(chunks)
        n, h, d = x.shape
        self.horizon = h
        self.norm = RangeNormalizer.fit(x, self.range_quantile)
        flat = x.reshape(-1, d)
        self.binary, self.levels = detect_binary_dims(flat) if self.binary_dims else ([], np.zeros((0, 2)))
        self.default_level = [int(np.mean(flat[:, j] > self.levels[b].mean()) > 0.5) for b, j in enumerate(self.binary)]
        q = self._quantised_coefs(x, clip=False)
        # Cover every chunk inside the q01/q99 range (|coef| <= sqrt(H) there) as well as the fitted ones.
        bound = math.ceil(math.sqrt(h) * self.scale)
        self.cmin = int(min(q.min(initial=0), -bound))
        self.cmax = int(max(q.max(initial=0), bound))
        if CHAR_BASE + self._n_symbols >= MAX_CODE_POINT:
            raise ValueError(f"scale={self.scale} with horizon {h} needs {self._n_symbols} symbols; lower the scale")
        if self.bpe_vocab_size < self._n_symbols:
            raise ValueError(
                f"bpe_vocab_size={self.bpe_vocab_size} is below the {self._n_symbols} base symbols "
                f"(scale={self.scale}, horizon={h}); raise bpe_vocab_size or lower the scale"
            )
        alphabet = [chr(CHAR_BASE + i) for i in range(self._n_symbols)]
        bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=self.bpe_vocab_size, initial_alphabet=alphabet, special_tokens=[], show_progress=False
        )
        bpe.train_from_iterator(self._strings(x), trainer)
        self._set_bpe(bpe)
        return self

    def _set_bpe(self, bpe: Tokenizer) -> None:
        self._bpe = bpe
        self._token_str = [bpe.id_to_token(i) for i in range(bpe.get_vocab_size())]
        assert all(s is not None for s in self._token_str), "BPE ids must be contiguous"

    def _require_fit(self) -> RangeNormalizer:
        if self.norm is None or self._bpe is None:
            raise RuntimeError("DCTBPETokenizer is not fitted: call fit(chunks) or load(dir) first")
        return self.norm

    def _quantised_coefs(self, x: np.ndarray, clip: bool = True) -> np.ndarray:
        """Raw chunks ``[N, H, D]`` -> rounded scaled DCT coefficients of the continuous dims ``[N, H * Dc]``."""
        cont = [j for j in range(x.shape[2]) if j not in self.binary]
        z = self.norm.normalize(x)[..., cont]  # [N, H, Dc]
        coefs = np.einsum("kt,ntd->nkd", self._dct_matrix(x.shape[1]), z)  # frequency-major
        q = np.rint(coefs * self.scale).reshape(x.shape[0], -1)
        return np.clip(q, self.cmin, self.cmax).astype(np.int64) if clip else q

    def _strings(self, x: np.ndarray) -> list[str]:
        """Raw chunks ``[N, H, D]`` -> one symbol string per chunk (binary dims first, then coefficients)."""
        codes = self._quantised_coefs(x) - self.cmin + CHAR_BASE  # [N, H * Dc]
        init0 = CHAR_BASE + self._n_coef_symbols
        out = []
        for i in range(x.shape[0]):
            parts = []
            for b, j in enumerate(self.binary):
                high = x[i, :, j] > self.levels[b].mean()  # [H] bool
                switches = np.flatnonzero(high[1:] != high[:-1]) + 1  # times t in 1..H-1
                parts += [init0 + int(high[0])] + (init0 + 1 + switches).tolist()
            row = np.concatenate([np.asarray(parts, dtype="<u4"), codes[i].astype("<u4")])
            out.append(row.tobytes().decode("utf-32-le"))
        return out

    # ---- the interface ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        self._require_fit()
        return self._bpe.get_vocab_size()

    @property
    def dim(self) -> int:
        return self._require_fit().dim

    def tokens_per_chunk(self, horizon: int, dim: int) -> None:
        """Variable length: ``None``. See ``max_tokens_per_chunk`` for an upper bound."""
        return None

    def max_tokens_per_chunk(self, horizon: int, dim: int) -> int:
        """Upper bound on the tokens of a well-formed chunk (one symbol per token, every switch present)."""
        return len(self.binary) * int(horizon) + (int(dim) - len(self.binary)) * int(horizon)

    def encode_batch(self, chunks: np.ndarray) -> list[list[int]]:
        """``chunks[N, H, D]`` (H = the fitted horizon) -> N id lists."""
        norm = self._require_fit()
        x = check_chunks(chunks, norm.dim)
        if x.shape[1] != self.horizon:
            raise ValueError(f"chunks have horizon {x.shape[1]}, the tokenizer was fitted on {self.horizon}")
        return [e.ids for e in self._bpe.encode_batch(self._strings(x))]

    def encode(self, chunk: np.ndarray) -> list[int]:
        return self.encode_batch(np.asarray(chunk)[None])[0]

    def decode(self, ids: Any, horizon: int, dim: int) -> tuple[np.ndarray, bool]:
        """Ids -> ``(chunk[horizon, dim] float32, ok)``. Never raises for any ids; ``ok`` is False on repair."""
        norm = self._require_fit()
        check_decode_args(horizon, dim, norm.dim)
        ids, ok = sanitize_ids(ids, len(self._token_str))
        text = "".join([self._token_str[i] for i in ids.tolist()])
        sym = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64) - CHAR_BASE
        a = self._n_coef_symbols
        out = np.empty((horizon, dim), dtype=np.float64)
        pos = 0
        for b, j in enumerate(self.binary):
            if pos < sym.size and a <= sym[pos] < a + 2:
                level = int(sym[pos] - a)
                pos += 1
            else:
                level, ok = self.default_level[b], False
            series, last = np.full(horizon, level), 0
            while pos < sym.size and sym[pos] >= a + 2:  # switch times, strictly increasing, inside the chunk
                t = int(sym[pos] - a - 1)
                pos += 1
                if last < t < horizon:
                    series[t:] = 1 - series[t - 1]
                    last = t
                else:
                    ok = False
            out[:, j] = self.levels[b][series]
        rest = sym[pos:]
        is_coef = (rest >= 0) & (rest < a)
        if not is_coef.all():
            ok = False
            rest = rest[is_coef]
        cont = self.continuous
        n = horizon * len(cont)
        if rest.size != n:
            ok = False
        coefs = np.zeros(n, dtype=np.float64)
        m = min(n, rest.size)
        coefs[:m] = (rest[:m] + self.cmin) / self.scale  # missing high frequencies stay zero
        z = self._dct_matrix(horizon).T @ coefs.reshape(horizon, len(cont))  # [horizon, Dc]
        out[:, cont] = z * norm.half[cont] + norm.mid[cont]
        return norm.clip(out).astype(np.float32), ok

    def decode_batch(self, ids_list: list[Any], horizon: int, dim: int) -> list[tuple[np.ndarray, bool]]:
        return [self.decode(ids, horizon, dim) for ids in ids_list]

    # ---- files -----------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        norm = self._require_fit()
        return {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "scale": self.scale,
            "bpe_vocab_size": self.bpe_vocab_size,
            "range_quantile": self.range_quantile,
            "binary_dims": self.binary_dims,
            "horizon": self.horizon,
            "normalizer": norm.to_json(),
            "binary": self.binary,
            "levels": self.levels.tolist(),
            "default_level": self.default_level,
            "cmin": self.cmin,
            "cmax": self.cmax,
            "vocab_size": self.vocab_size,
            "bpe_file": BPE_NAME,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``<dir>/config.json`` and the BPE vocabulary ``<dir>/bpe.json`` (HuggingFace tokenizers)."""
        directory = Path(directory)
        self._require_fit()
        write_text_atomic(directory / BPE_NAME, self._bpe.to_str(pretty=True))
        write_json_atomic(directory / CONFIG_NAME, self.to_json())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DCTBPETokenizer:
        cfg = read_config(directory, cls.kind)
        tok = cls(cfg["scale"], cfg["bpe_vocab_size"], cfg["range_quantile"], cfg["binary_dims"])
        tok.norm = RangeNormalizer.from_json(cfg["normalizer"])
        tok.horizon = int(cfg["horizon"])
        tok.binary = [int(j) for j in cfg["binary"]]
        tok.levels = np.asarray(cfg["levels"], dtype=np.float64).reshape(-1, 2)
        tok.default_level = [int(v) for v in cfg["default_level"]]
        tok.cmin, tok.cmax = int(cfg["cmin"]), int(cfg["cmax"])
        tok._set_bpe(Tokenizer.from_file(str(Path(directory) / cfg["bpe_file"])))
        if tok.vocab_size != cfg["vocab_size"]:
            raise ValueError(f"{directory}: BPE file has {tok.vocab_size} ids, config says {cfg['vocab_size']}")
        return tok

    def __repr__(self) -> str:
        fitted = self._bpe is not None
        return (
            f"DCTBPETokenizer(scale={self.scale}, bpe_vocab_size={self.bpe_vocab_size}, "
            f"binary={self.binary if fitted else '?'}, fitted={fitted})"
        )
