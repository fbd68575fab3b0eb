"""The joint token space: one vocabulary of contiguous id ranges for text, state, video and actions.

"A token is a token": the transformer sees one stream of ids, and this module is the only place that
knows which id means what. Every checkpoint carries it as ``token_space.json`` so that the trainer, the
evaluator and the torch-free runtime decode the same way. numpy only (the robot runtime reuses it).

Id layout (contiguous, disjoint, in this order; ``vocab_size`` is rounded up to a multiple of 64 and the
ids past the last range are never valid):

=========  ===================================================================================
special    PAD BOS EOS SEP FRAME_OPEN FRAME_CLOSE STATE_OPEN STATE_CLOSE ACT_OPEN ACT_CLOSE
text       256 ids, one per UTF-8 byte: prompts need no external text tokenizer
state      ``state_bins`` ids shared by all state dimensions; dimension ``d`` of embodiment ``e`` is
           normalised with that embodiment's q01/q99 (``state_lo``/``state_hi``) and binned uniformly
video      the video tokenizer's codebook (``video_vocab`` ids)
keep       one id, only when ``video_keep``: "this cell's code is the current frame's" (see below)
action     one range per action tokenizer (``action_ranges``), e.g. one per embodiment
=========  ===================================================================================

Sequence grammar (one training sample, built by :meth:`TokenSpace.sequence`; inference builds its
context with :meth:`TokenSpace.context`, the same code, so the two cannot drift)::

    BOS prompt-bytes SEP                                         <- the prompt prefix (cached at inference)
    { FRAME_OPEN video(cam1) [video(cam2) ...] FRAME_CLOSE       <- for each of the last `history` steps,
      STATE_OPEN state-bins STATE_CLOSE }                           oldest first
    [ STATE_OPEN goal-bins STATE_CLOSE ]                         <- optional: the state the episode ends in,
                                                                    predicted before acting (``--goal``)
    ACT_OPEN action-ids ACT_CLOSE                                <- the chunk of H actions from the current step
    [ FRAME_OPEN video(cam1) [video(cam2) ...] FRAME_CLOSE       <- optional: the frame n_action_steps later
      [ STATE_OPEN state-bins STATE_CLOSE ] ]                       and the state at that step

The targets that carry a loss are the goal bins plus their ``STATE_CLOSE`` (when present), the action ids
plus ``ACT_CLOSE`` (the policy loss) and the video ids plus ``FRAME_CLOSE`` of the trailing frame, and
the state bins plus ``STATE_CLOSE`` after it (the world-model loss: a rollout with no simulator predicts
the next step whole, so the state it reads next agrees with the frame); everything else is context. Video ids
of a frame are the tokenizer's [h, w] code grid in row-major order, one camera after the other.

With ``video_keep`` (``robotok-pretokenize --frame-keep``) the trailing frame is written as a change to the
current one, as a video codec's predicted frame skips unchanged blocks: a cell whose code equals the
current (newest observed) frame's code at that cell is the KEEP id, the others their video id. Observed
frames are always whole codes. Many cells of a frame a fraction of a second later are unchanged, so the
model learns which cells change instead of copying 1 of ``video_vocab`` codes from a frame ago;
:meth:`TokenSpace.resolve_frame` turns a predicted frame back into codes.

Constrained decoding (:meth:`TokenSpace.allowed_after`): at an action position only the ids of the
embodiment's action range, or ``ACT_CLOSE`` where the grammar allows it, may be sampled. A fixed-length
tokenizer (binning, B-spline) must emit exactly ``length`` ids and then closes; a variable-length one
(DCT+BPE) emits 1..``max_length`` ids and closes when the model says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

FORMAT = "robotok-token-space-v1"
SPECIAL = (
    "PAD",
    "BOS",
    "EOS",
    "SEP",
    "FRAME_OPEN",
    "FRAME_CLOSE",
    "STATE_OPEN",
    "STATE_CLOSE",
    "ACT_OPEN",
    "ACT_CLOSE",
)
PAD, BOS, EOS, SEP, FRAME_OPEN, FRAME_CLOSE, STATE_OPEN, STATE_CLOSE, ACT_OPEN, ACT_CLOSE = range(len(SPECIAL))
TEXT_SIZE = 256
VOCAB_MULTIPLE = 64  # a round vocabulary size keeps the output matmul on fast GPU kernels


@dataclass
class ActionRange:
    """The ids of one action tokenizer. ``length``: its fixed token count per chunk (None if variable)."""

    name: str
    size: int
    length: int | None = None
    max_length: int = 0  # longest chunk the decoder may emit; for fixed length tokenizers equal to length
    start: int = -1  # assigned by TokenSpace

    def __post_init__(self) -> None:
        if self.length is not None:
            self.max_length = self.length
        if self.size <= 0 or self.max_length <= 0:
            raise ValueError(f"action range {self.name!r}: size {self.size}, max_length {self.max_length} must be > 0")


@dataclass
class Embodiment:
    """A robot's state normalisation (q01/q99 per dimension) and the action range it decodes with."""

    name: str
    state_lo: list[float]
    state_hi: list[float]
    action_range: int = 0

    def __post_init__(self) -> None:
        if len(self.state_lo) != len(self.state_hi):
            raise ValueError(f"embodiment {self.name!r}: {len(self.state_lo)} lows vs {len(self.state_hi)} highs")

    @property
    def state_dim(self) -> int:
        return len(self.state_lo)


def history_indices(t: int, history: int, stride: int = 1) -> list[int]:
    """Steps observed at step t, oldest first, clamped at the episode start (training and inference alike)."""
    return [max(0, t - (history - 1 - j) * stride) for j in range(history)]


class Sequence(NamedTuple):
    """A built sequence and where its target spans are: ``tokens[action[0]:action[1]]`` are the action ids
    plus ACT_CLOSE, ``tokens[frame[0]:frame[1]]`` the next frame's video ids plus FRAME_CLOSE (or None),
    ``tokens[next_state[0]:next_state[1]]`` the next state's bins plus STATE_CLOSE (or None)."""

    tokens: list[int]
    action: tuple[int, int]
    frame: tuple[int, int] | None
    goal: tuple[int, int] | None = None
    next_state: tuple[int, int] | None = None


@dataclass
class TokenSpace:
    """One vocabulary of contiguous id ranges; see the module docstring for the layout and grammar."""

    state_bins: int
    video_vocab: int
    action_ranges: list[ActionRange]
    embodiments: list[Embodiment] = field(default_factory=list)
    video_keep: bool = False
    """One KEEP id after the video range: the trailing frame is written as a change to the current one."""

    def __post_init__(self) -> None:
        if self.state_bins < 2 or self.video_vocab < 1 or not self.action_ranges:
            raise ValueError(
                f"state_bins {self.state_bins} (>=2), video_vocab {self.video_vocab} (>=1), "
                f"{len(self.action_ranges)} action ranges (>=1)"
            )
        self.text_start = len(SPECIAL)
        self.state_start = self.text_start + TEXT_SIZE
        self.video_start = self.state_start + self.state_bins
        start = self.video_start + self.video_vocab
        self.keep_id: int | None = start if self.video_keep else None
        start += int(self.video_keep)
        for r in self.action_ranges:
            r.start, start = start, start + r.size
        self.num_used = start
        self.vocab_size = -(-start // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        for e in self.embodiments:
            if not 0 <= e.action_range < len(self.action_ranges):
                raise ValueError(f"embodiment {e.name!r}: action_range {e.action_range} of {len(self.action_ranges)}")

    # ---- ranges -----------------------------------------------------------------------------------
    def ranges(self) -> dict[str, tuple[int, int]]:
        """Name -> [start, stop) of every range, in id order."""
        out = {
            "special": (0, self.text_start),
            "text": (self.text_start, self.state_start),
            "state": (self.state_start, self.video_start),
            "video": (self.video_start, self.video_start + self.video_vocab),
        }
        if self.keep_id is not None:
            out["keep"] = (self.keep_id, self.keep_id + 1)
        for r in self.action_ranges:
            out[f"action/{r.name}"] = (r.start, r.start + r.size)
        return out

    def is_action(self, token: int, action_range: int | None = None) -> bool:
        """Is ``token`` an action id (of the given range, or of any)?"""
        rs = self.action_ranges if action_range is None else [self.action_ranges[action_range]]
        return any(r.start <= token < r.start + r.size for r in rs)

    def is_video(self, token: int) -> bool:
        return self.video_start <= token < self.video_start + self.video_vocab

    def range_mask(self, name: str) -> np.ndarray:
        """bool[vocab_size], True on the ids of one named range (see :meth:`ranges`)."""
        lo, hi = self.ranges()[name]
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[lo:hi] = True
        return mask

    def action_mask(self, action_range: int = 0, allow_close: bool = True) -> np.ndarray:
        """bool[vocab_size]: the ids of one action range, plus ACT_CLOSE when ``allow_close``."""
        mask = self.range_mask(f"action/{self.action_ranges[action_range].name}")
        mask[ACT_CLOSE] = allow_close
        return mask

    def allowed_after(self, n_emitted: int, action_range: int = 0) -> np.ndarray:
        """bool[vocab_size]: the ids the grammar allows after ``n_emitted`` action ids of one chunk."""
        r = self.action_ranges[action_range]
        if n_emitted >= r.max_length:
            mask = np.zeros(self.vocab_size, dtype=bool)
            mask[ACT_CLOSE] = True
            return mask
        # fixed length: never close early; variable length: at least one id before closing
        return self.action_mask(action_range, allow_close=r.length is None and n_emitted > 0)

    # ---- text -------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return [self.text_start + b for b in text.encode("utf-8")]

    def decode_text(self, ids: list[int] | np.ndarray) -> str:
        """Bytes back to text; ids outside the text range are skipped, bad UTF-8 is replaced."""
        data = bytes(int(i) - self.text_start for i in ids if self.text_start <= int(i) < self.state_start)
        return data.decode("utf-8", errors="replace")

    def encode_prompt(self, prompt: str) -> list[int]:
        """``BOS prompt-bytes SEP``: the prefix every sequence of this prompt starts with."""
        return [BOS, *self.encode_text(prompt), SEP]

    # ---- state ------------------------------------------------------------------------------------
    def _state_bounds(self, embodiment: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        e = self.embodiments[embodiment]
        if dim != e.state_dim:
            raise ValueError(f"state of {dim} dims, embodiment {e.name!r} has {e.state_dim}")
        lo = np.asarray(e.state_lo, dtype=np.float64)
        return lo, np.maximum(np.asarray(e.state_hi, dtype=np.float64) - lo, 1e-6)

    def encode_state(self, state: np.ndarray, embodiment: int = 0) -> list[int]:
        """float[S] -> S ids: per-dim q01/q99 scaling to [0, 1] (clipped), then ``state_bins`` uniform bins."""
        state = np.asarray(state, dtype=np.float64)
        assert state.ndim == 1, f"state must be [S], got {state.shape}"
        lo, width = self._state_bounds(embodiment, state.shape[0])
        u = np.clip((state - lo) / width, 0.0, 1.0)
        bins = np.minimum((u * self.state_bins).astype(np.int64), self.state_bins - 1)
        return (bins + self.state_start).tolist()

    def decode_state(self, ids: list[int] | np.ndarray, embodiment: int = 0) -> np.ndarray:
        """S ids -> float32[S], the centre of each bin (within half a bin of any in-range input)."""
        bins = np.asarray(ids, dtype=np.int64) - self.state_start
        lo, width = self._state_bounds(embodiment, bins.shape[0])
        return (lo + (np.clip(bins, 0, self.state_bins - 1) + 0.5) / self.state_bins * width).astype(np.float32)

    # ---- video and actions ------------------------------------------------------------------------
    def video_ids(self, codes: np.ndarray) -> np.ndarray:
        """Video tokenizer codes (any shape, in [0, video_vocab)) -> token ids of the same shape."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.video_vocab):
            raise ValueError(f"video codes span [{codes.min()}, {codes.max()}], codebook has {self.video_vocab}")
        return codes + self.video_start

    def video_codes(self, ids: np.ndarray) -> np.ndarray:
        """Token ids -> video codes; ids outside the video range map to code 0 (decoders must not crash)."""
        codes = np.asarray(ids, dtype=np.int64) - self.video_start
        return np.where((codes >= 0) & (codes < self.video_vocab), codes, 0)

    def action_ids(self, tokens: list[int] | np.ndarray, action_range: int = 0) -> list[int]:
        """Action tokenizer ids -> token ids of the given range."""
        r = self.action_ranges[action_range]
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= r.size):
            raise ValueError(f"action tokens span [{tokens.min()}, {tokens.max()}], range {r.name!r} has {r.size}")
        return (tokens + r.start).tolist()

    def action_tokens(self, ids: list[int] | np.ndarray, action_range: int = 0) -> list[int]:
        """Token ids -> action tokenizer ids (ids outside the range are dropped; the decoder then flags it)."""
        r = self.action_ranges[action_range]
        return [int(i) - r.start for i in ids if r.start <= int(i) < r.start + r.size]

    # ---- the grammar ------------------------------------------------------------------------------
    def frame(self, codes: list[np.ndarray], current: list[np.ndarray] | None = None) -> list[int]:
        """``FRAME_OPEN video(cam1) video(cam2) ... FRAME_CLOSE`` from one [h, w] code grid per camera.

        ``current`` (the space must have ``video_keep``): the frame these codes follow; a cell with the same
        code there is written as the KEEP id."""
        ids = np.concatenate([self.video_ids(c).ravel() for c in codes]) if codes else np.zeros(0, np.int64)
        if current is not None:
            if self.keep_id is None:
                raise ValueError("a frame written as a change needs a token space with video_keep")
            same = np.concatenate(
                [np.asarray(c).ravel() == np.asarray(p).ravel() for c, p in zip(codes, current, strict=True)]
            )
            ids = np.where(same, self.keep_id, ids)
        return [FRAME_OPEN, *ids.tolist(), FRAME_CLOSE]

    def resolve_frame(self, ids: list[int] | np.ndarray, current: list[np.ndarray]) -> np.ndarray:
        """Predicted frame ids (video ids, and KEEP where the space has it) -> codes [cams, h, w]: KEEP takes
        the code of ``current`` (one [h, w] grid per camera) at that cell; other non-video ids map to code 0."""
        prev = np.stack([np.asarray(c, dtype=np.int64) for c in current])
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size != prev.size:
            raise ValueError(f"{ids.size} frame ids for {len(current)} camera(s) of {prev.shape[1:]} codes")
        codes = self.video_codes(ids).reshape(prev.shape)
        return codes if self.keep_id is None else np.where(ids.reshape(prev.shape) == self.keep_id, prev, codes)

    def state_segment(self, state: np.ndarray, embodiment: int = 0) -> list[int]:
        """``STATE_OPEN state-bins STATE_CLOSE``: an observed state, a goal or the state after a chunk."""
        return [STATE_OPEN, *self.encode_state(state, embodiment), STATE_CLOSE]

    def step(self, codes: list[np.ndarray], state: np.ndarray, embodiment: int = 0) -> list[int]:
        """One observed step: its frame, then its :meth:`state_segment`."""
        return [*self.frame(codes), *self.state_segment(state, embodiment)]

    def context(self, prompt: str, steps: list[tuple[list[np.ndarray], np.ndarray]], embodiment: int = 0) -> list[int]:
        """Everything before the first action id: prompt prefix, the history steps (oldest first), ACT_OPEN.

        ``steps``: ``(codes per camera [h, w], state [S])`` per history step.
        """
        out = self.encode_prompt(prompt)
        for codes, state in steps:
            out += self.step(codes, state, embodiment)
        out.append(ACT_OPEN)
        return out

    def sequence(
        self,
        prompt: str,
        steps: list[tuple[list[np.ndarray], np.ndarray]],
        action_tokens: list[int],
        embodiment: int = 0,
        next_frame: list[np.ndarray] | None = None,
        goal: np.ndarray | None = None,
        next_state: np.ndarray | None = None,
    ) -> Sequence:
        """A whole training sample: :meth:`context`, the action ids, ACT_CLOSE, optionally the next frame
        (and after it ``next_state``, float [S]: the step that follows the chunk, as :meth:`step` writes it).
        With ``video_keep`` the next frame is written as a change to the newest observed step's frame.

        ``goal`` (float [S], a state): ``STATE_OPEN goal-bins STATE_CLOSE`` goes between the observed steps
        and ACT_OPEN, as a target the model predicts before it acts (the state the episode ends in)."""
        if next_state is not None and next_frame is None:
            raise ValueError("next_state follows the next frame: give next_frame too")
        tokens = self.context(prompt, steps, embodiment)
        goal_span = None
        if goal is not None:
            g0 = len(tokens)  # ACT_OPEN's place: STATE_OPEN is forced, the bins and STATE_CLOSE are targets
            tokens[-1:] = [*self.state_segment(goal, embodiment), ACT_OPEN]
            goal_span = (g0, len(tokens) - 1)
        a0 = len(tokens)
        tokens += [*self.action_ids(action_tokens, self.embodiments[embodiment].action_range), ACT_CLOSE]
        frame = None
        if next_frame is not None:
            f0 = len(tokens) + 1  # FRAME_OPEN is forced by the grammar: context, not target
            tokens += self.frame(next_frame, steps[-1][0] if self.video_keep and steps else None)
            frame = (f0, len(tokens))
        state_span = None
        if next_state is not None:
            s0 = len(tokens) + 1  # STATE_OPEN is forced after FRAME_CLOSE here: context, not target
            tokens += self.state_segment(next_state, embodiment)
            state_span = (s0, len(tokens))
        return Sequence(tokens, (a0, a0 + len(action_tokens) + 1), frame, goal_span, state_span)

    def parse(self, tokens: list[int] | np.ndarray) -> dict[str, Any]:
        """Split a sequence back into its parts (PAD ignored): ``prompt`` (str), ``steps`` (list of
        (video ids, state ids)), ``goal`` (state ids or None), ``actions`` (action ids, None when ACT_OPEN is
        missing), ``next_frame``, ``next_state`` (state ids or None).
        Raises ValueError where the sequence breaks the grammar."""
        toks = [int(t) for t in tokens if int(t) != PAD]

        def expect(i: int, tok: int) -> int:
            if i >= len(toks) or toks[i] != tok:
                found = toks[i] if i < len(toks) else "end"
                raise ValueError(f"position {i}: expected {SPECIAL[tok]}, found {found}")
            return i + 1

        def until(i: int, tok: int) -> tuple[list[int], int]:
            try:
                j = toks.index(tok, i)
            except ValueError:
                raise ValueError(f"no {SPECIAL[tok]} after position {i}") from None
            return toks[i:j], j + 1

        i = expect(0, BOS)
        text, i = until(i, SEP)
        out: dict[str, Any] = {
            "prompt": self.decode_text(text),
            "steps": [],
            "goal": None,
            "actions": None,
            "next_frame": None,
            "next_state": None,
        }
        while i < len(toks) and toks[i] == FRAME_OPEN:
            video, i = until(i + 1, FRAME_CLOSE)
            state, i = until(expect(i, STATE_OPEN), STATE_CLOSE)
            out["steps"].append((video, state))
        if i < len(toks) and toks[i] == STATE_OPEN:  # a state with no frame before it: the goal
            out["goal"], i = until(i + 1, STATE_CLOSE)
        if i < len(toks):
            out["actions"], i = until(expect(i, ACT_OPEN), ACT_CLOSE)
            if i < len(toks):
                out["next_frame"], i = until(expect(i, FRAME_OPEN), FRAME_CLOSE)
            if i < len(toks):
                out["next_state"], i = until(expect(i, STATE_OPEN), STATE_CLOSE)
            if i != len(toks):
                raise ValueError(f"{len(toks) - i} trailing tokens after position {i}")
        return out

    # ---- serialisation ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "special": list(SPECIAL),
                "text_size": TEXT_SIZE,
                "vocab_size": self.vocab_size,
                "state_bins": self.state_bins,
                "video_vocab": self.video_vocab,
                "action_ranges": [asdict(r) for r in self.action_ranges],
                "embodiments": [asdict(e) for e in self.embodiments],
                "video_keep": self.video_keep,
                "ranges": self.ranges(),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> TokenSpace:
        d = json.loads(text)
        if d.get("format") != FORMAT or tuple(d.get("special", ())) != SPECIAL:
            raise ValueError(
                f"token space format {d.get('format')!r} with specials {d.get('special')}; "
                f"this robotok reads {FORMAT!r} with {list(SPECIAL)}"
            )
        space = cls(
            state_bins=d["state_bins"],
            video_vocab=d["video_vocab"],
            action_ranges=[ActionRange(**{k: v for k, v in r.items() if k != "start"}) for r in d["action_ranges"]],
            embodiments=[Embodiment(**e) for e in d["embodiments"]],
            video_keep=bool(d.get("video_keep", False)),  # absent in token spaces written before it
        )
        saved = [r["start"] for r in d["action_ranges"]]
        if space.vocab_size != d["vocab_size"] or [r.start for r in space.action_ranges] != saved:
            raise ValueError(
                f"token space layout disagrees with its file: vocab {space.vocab_size} vs "
                f"{d['vocab_size']}, action starts {[r.start for r in space.action_ranges]} vs {saved}"
            )
        return space

    def save(self, path: str | Path) -> Path:
        """Write ``token_space.json`` (or the given file path) atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / "token_space.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TokenSpace:
        path = Path(path)
        return cls.from_json((path / "token_space.json" if path.is_dir() else path).read_text())
