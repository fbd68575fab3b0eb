"""Action tokenizers: turn action chunks ``[H, D]`` into token ids and back.

Three kinds behind one interface (each in its own module):

- ``BinningTokenizer`` (``action_binning.py``): one token per dimension per step, ``H * D`` tokens (RT-2, OpenVLA).
- ``DCTBPETokenizer`` (``action_dct_bpe.py``): DCT + BPE, variable length, 5-10x fewer tokens (FAST).
- ``BSplineTokenizer`` (``action_bspline.py``): quantised B-spline control points, ``K * D`` tokens (BEAST).

Common interface: ``fit(chunks[N, H, D]) -> self``; ``encode(chunk[H, D]) -> list[int]``; ``encode_batch``;
``decode(ids, horizon, dim) -> (chunk[H, D] float32, ok)`` which never raises for any id sequence and flags
repairs with ``ok=False``; ``decode_batch``; ``vocab_size`` (valid ids are ``0 .. vocab_size-1``);
``tokens_per_chunk(horizon, dim)`` (an int for fixed-length kinds, ``None`` for DCT+BPE) and
``max_tokens_per_chunk(horizon, dim)`` (an upper bound for every kind, for generation budgets); ``save(dir)``,
``load(dir)``. Each tokenizer normalises internally from its fitted statistics: callers pass raw actions.

On disk a tokenizer is a directory with ``config.json`` (its ``kind`` and fitted state) and, for DCT+BPE, the
HuggingFace tokenizers file ``bpe.json``. ``load_action_tokenizer(dir)`` opens any kind.
"""

from __future__ import annotations

from pathlib import Path

from robotok.tokenizers.action_binning import BinningTokenizer
from robotok.tokenizers.action_bspline import BSplineTokenizer, bspline_basis
from robotok.tokenizers.action_common import RangeNormalizer, read_config, reconstruction_metrics, sanitize_ids
from robotok.tokenizers.action_dct_bpe import DCTBPETokenizer, dct_matrix

ActionTokenizer = BinningTokenizer | DCTBPETokenizer | BSplineTokenizer
KINDS: dict[str, type[ActionTokenizer]] = {
    BinningTokenizer.kind: BinningTokenizer,
    DCTBPETokenizer.kind: DCTBPETokenizer,
    BSplineTokenizer.kind: BSplineTokenizer,
}

__all__ = [
    "KINDS",
    "ActionTokenizer",
    "BSplineTokenizer",
    "BinningTokenizer",
    "DCTBPETokenizer",
    "RangeNormalizer",
    "bspline_basis",
    "dct_matrix",
    "load_action_tokenizer",
    "reconstruction_metrics",
    "sanitize_ids",
]


def load_action_tokenizer(directory: str | Path) -> ActionTokenizer:
    """Open the action tokenizer saved in ``directory``, whichever kind its ``config.json`` names."""
    kind = read_config(directory).get("kind")
    if kind not in KINDS:
        raise ValueError(f"{directory}: unknown action tokenizer kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind].load(directory)
