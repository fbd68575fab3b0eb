"""The robot runtime: an exported bundle as a policy, with numpy and onnxruntime only (no torch, no robotok).

    pip install numpy onnxruntime
    import sys; sys.path.insert(0, "path/to/bundle")
    from robotok_runtime import RobotPolicy        # this file, copied into every bundle by robotok-export
    policy = RobotPolicy("path/to/bundle")
    policy.reset()
    action = policy.select_action({"pixels": {"front": img, ...}, "agent_pos": state, "task": "pick up the red cup"})

Inside robotok the same class is ``robotok.policy.runtime.RobotPolicy`` (what ``robotok-eval --policy BUNDLE``
uses). It takes the env's observation dict plus ``"task"`` and reproduces ``robotok.policy.Policy`` token for
token: the context ``BOS prompt SEP {FRAME_OPEN video FRAME_CLOSE STATE_OPEN state STATE_CLOSE}* ACT_OPEN`` over
the last ``history`` steps, the prompt prefix kept in a KV cache, grammar-constrained greedy decoding (only the
embodiment's action ids, ACT_CLOSE where the grammar allows it), and the action tokenizer's decode with the
``hold`` action for a chunk that needs repair. Everything it needs is JSON in the bundle (see
``robotok.policy.export`` for the layout); ``tokenizers/space.py`` and ``tokenizers/action_*.py`` are the
reference implementations this file mirrors, and the export tests check that the two agree.

Graphs: ``video_encoder.onnx`` (frames [B, 3, H, W] float in [0, 1] -> codes [B, h, w] int64), ``prefill.onnx``
(ids [1, T], pos, k/v caches [n_layer, 1, n_head, L, head_dim] -> last logits [1, V], new caches) and
``decode.onnx`` (the same for T = 1). Caches are plain numpy arrays; the graphs never modify their inputs, so
the prompt prefix's cache is reused as is for every chunk.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

BUNDLE_FORMAT = "robotok-bundle"
BUNDLE_VERSION = 1
TOKEN_SPACE_FORMAT = "robotok-token-space-v1"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: str | Path, verify: bool = True) -> dict[str, Any]:
    """The bundle's manifest.json, after checking its format version and (``verify``) every file's sha256."""
    bundle = Path(bundle)
    path = bundle / "manifest.json"
    if not path.is_file():
        raise ValueError(
            f"{bundle} is not a robotok bundle (no manifest.json); make one with robotok-export CHECKPOINT --out BUNDLE"
        )
    manifest = json.loads(path.read_text())
    found = (manifest.get("format"), manifest.get("format_version"))
    if found != (BUNDLE_FORMAT, BUNDLE_VERSION):
        raise ValueError(
            f"{bundle}: bundle format {found[0]!r} version {found[1]!r}, this runtime reads "
            f"{BUNDLE_FORMAT!r} version {BUNDLE_VERSION}; re-export the checkpoint with a matching "
            "robotok-export, or use the robotok_runtime.py shipped inside that bundle"
        )
    if verify:
        for name, digest in manifest["files"].items():
            f = bundle / name
            if not f.is_file():
                raise ValueError(f"{bundle}: {name} is missing; copy the whole bundle folder again")
            if sha256_file(f) != digest:
                raise ValueError(
                    f"{bundle}: checksum mismatch for {name} (the file was changed or copied "
                    "incompletely); copy the bundle again or re-run robotok-export"
                )
    return manifest


# ---- action tokenizers (numpy mirrors of robotok.tokenizers.action_*) ------------------------------------------


def _clean_ids(ids: Any, size: int) -> tuple[np.ndarray, bool]:
    """Ids in [0, size) as int64 [n], and whether nothing had to be dropped."""
    arr = np.asarray(list(ids), dtype=np.int64).reshape(-1)
    valid = (arr >= 0) & (arr < size)
    return arr[valid], bool(valid.all())


class _Range:
    """RangeNormalizer: per-dimension affine map of [low, high] to [-1, 1], outputs clipped to the data range."""

    def __init__(self, d: dict[str, Any]):
        low, high = np.asarray(d["low"], np.float64), np.asarray(d["high"], np.float64)
        self.data_min, self.data_max = np.asarray(d["data_min"], np.float64), np.asarray(d["data_max"], np.float64)
        self.half, self.mid = np.maximum((high - low) / 2.0, 1e-8), (high + low) / 2.0

    def clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.data_min, self.data_max)


class BinningDecoder:
    """H * D ids, time-major; each id is a bin centre (BinningTokenizer.decode)."""

    def __init__(self, cfg: dict[str, Any]):
        self.norm, self.size = _Range(cfg["normalizer"]), int(cfg["bins"])
        edges = np.asarray(cfg["edges"], np.float64)
        self.centers = (edges[:, :-1] + edges[:, 1:]) / 2.0  # [D, bins]

    def decode(self, ids: Any, horizon: int, dim: int) -> tuple[np.ndarray, bool]:
        ids, ok = _clean_ids(ids, self.size)
        n = horizon * dim
        ok = ok and ids.size == n
        ids = ids[:n]
        full, rest = divmod(ids.size, dim)
        out = np.empty((horizon, dim), dtype=np.float64)
        if full:
            out[:full] = self.centers[np.arange(dim), ids[: full * dim].reshape(full, dim)]
        hold = out[full - 1] if full else self.norm.clip(self.norm.mid)
        if full < horizon:
            last = hold.copy()
            if rest:
                last[:rest] = self.centers[np.arange(rest), ids[full * dim :]]
            out[full:] = last
        return out.astype(np.float32), ok


def bspline_basis(num_points: int, horizon: int, degree: int = 3) -> np.ndarray:
    """B[horizon, num_points]: clamped B-spline basis on uniform knots (Cox-de Boor), as in action_bspline."""
    k, p = num_points, degree
    knots = np.concatenate([np.zeros(p + 1), np.linspace(0.0, 1.0, k - p + 1)[1:-1], np.ones(p + 1)])
    t = np.linspace(0.0, 1.0, horizon) if horizon > 1 else np.zeros(1)
    b = ((knots[None, :-1] <= t[:, None]) & (t[:, None] < knots[None, 1:])).astype(np.float64)
    b[t >= 1.0, :] = 0.0
    b[t >= 1.0, k - 1] = 1.0
    for q in range(1, p + 1):
        n = b.shape[1] - 1
        left_den, right_den = knots[q : q + n] - knots[:n], knots[q + 1 : q + 1 + n] - knots[1 : 1 + n]
        with np.errstate(divide="ignore", invalid="ignore"):
            left = np.where(left_den > 0, (t[:, None] - knots[None, :n]) / left_den, 0.0)
            right = np.where(right_den > 0, (knots[None, q + 1 : q + 1 + n] - t[:, None]) / right_den, 0.0)
        b = left * b[:, :n] + right * b[:, 1 : n + 1]
    return b


class BSplineDecoder:
    """K * D ids, control-point-major; the curve through the quantised control points (BSplineTokenizer.decode)."""

    def __init__(self, cfg: dict[str, Any]):
        if cfg.get("degree", 3) != 3:
            raise ValueError(f"B-spline degree {cfg['degree']} is not supported (only 3)")
        self.norm, self.size, self.k = _Range(cfg["normalizer"]), int(cfg["bins"]), int(cfg["num_control_points"])
        self.binary = [int(j) for j in cfg["binary"]]
        self.levels = np.asarray(cfg["levels"], np.float64).reshape(-1, 2)
        self.cp_low = np.asarray(cfg["cp_low"], np.float64)
        self.width = (np.asarray(cfg["cp_high"], np.float64) - self.cp_low) / (self.size - 1)

    def decode(self, ids: Any, horizon: int, dim: int) -> tuple[np.ndarray, bool]:
        ids, ok = _clean_ids(ids, self.size)
        n = self.k * dim
        ok = ok and ids.size == n
        ids = ids[:n]
        full, rest = divmod(ids.size, dim)
        grid = np.empty((self.k, dim), dtype=np.float64)
        if full:
            grid[:full] = ids[: full * dim].reshape(full, dim)
        if full < self.k:
            last = grid[full - 1].copy() if full else np.clip(np.rint(-self.cp_low / self.width), 0, self.size - 1)
            last[:rest] = ids[full * dim :]
            grid[full:] = last
        z = bspline_basis(self.k, horizon) @ (self.cp_low + grid * self.width)  # [horizon, D]
        out = self.norm.clip(z * self.norm.half + self.norm.mid)
        for b, j in enumerate(self.binary):
            out[:, j] = np.where(out[:, j] > self.levels[b].mean(), self.levels[b, 1], self.levels[b, 0])
        return out.astype(np.float32), ok


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C[k, t]."""
    t = np.arange(n)
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t[None, :] + 1) * np.arange(n)[:, None] / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


class DCTBPEDecoder:
    """BPE ids -> symbol string -> binary-dim switches and quantised DCT coefficients (DCTBPETokenizer.decode)."""

    CHAR_BASE = 0x100

    def __init__(self, cfg: dict[str, Any]):
        self.norm, self.tokens = _Range(cfg["normalizer"]), list(cfg["token_strings"])
        self.scale, self.cmin, self.cmax = float(cfg["scale"]), int(cfg["cmin"]), int(cfg["cmax"])
        self.binary = [int(j) for j in cfg["binary"]]
        self.levels = np.asarray(cfg["levels"], np.float64).reshape(-1, 2)
        self.default_level = [int(v) for v in cfg["default_level"]]

    def decode(self, ids: Any, horizon: int, dim: int) -> tuple[np.ndarray, bool]:
        ids, ok = _clean_ids(ids, len(self.tokens))
        text = "".join(self.tokens[i] for i in ids.tolist())
        sym = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64) - self.CHAR_BASE
        a = self.cmax - self.cmin + 1
        out = np.empty((horizon, dim), dtype=np.float64)
        pos = 0
        for b, j in enumerate(self.binary):
            if pos < sym.size and a <= sym[pos] < a + 2:
                level, pos = int(sym[pos] - a), pos + 1
            else:
                level, ok = self.default_level[b], False
            series, last = np.full(horizon, level), 0
            while pos < sym.size and sym[pos] >= a + 2:  # switch times, strictly increasing, inside the chunk
                t, pos = int(sym[pos] - a - 1), pos + 1
                if last < t < horizon:
                    series[t:] = 1 - series[t - 1]
                    last = t
                else:
                    ok = False
            out[:, j] = self.levels[b][series]
        rest = sym[pos:]
        is_coef = (rest >= 0) & (rest < a)
        if not is_coef.all():
            ok, rest = False, rest[is_coef]
        cont = [d for d in range(dim) if d not in self.binary]
        n = horizon * len(cont)
        ok = ok and rest.size == n
        coefs = np.zeros(n, dtype=np.float64)
        m = min(n, rest.size)
        coefs[:m] = (rest[:m] + self.cmin) / self.scale  # missing high frequencies stay zero
        z = dct_matrix(horizon).T @ coefs.reshape(horizon, len(cont))  # [horizon, Dc]
        out[:, cont] = z * self.norm.half[cont] + self.norm.mid[cont]
        return self.norm.clip(out).astype(np.float32), ok


DECODERS = {"binning": BinningDecoder, "bspline": BSplineDecoder, "dct_bpe": DCTBPEDecoder}


def load_action_decoder(path: str | Path) -> BinningDecoder | BSplineDecoder | DCTBPEDecoder:
    cfg = json.loads(Path(path).read_text())
    if cfg.get("kind") not in DECODERS:
        raise ValueError(f"{path}: unknown action tokenizer kind {cfg.get('kind')!r}; known: {sorted(DECODERS)}")
    return DECODERS[cfg["kind"]](cfg)


# ---- the policy ---------------------------------------------------------------------------------------------


class RobotPolicy:
    """An exported bundle as a policy: ``reset()``, ``select_action(obs)``, ``infer(obs) -> {"actions": chunk}``.

    ``threads``: onnxruntime intra-op threads (2 by default: a robot computer has other work to do).
    ``verify``: check every file's sha256 against the manifest when loading. ``n_action_steps``: actions
    executed per chunk (default: the trained value). ``embodiment``: force one robot of a multi-robot bundle.
    """

    def __init__(
        self,
        bundle: str | Path,
        threads: int = 2,
        verify: bool = True,
        n_action_steps: int | None = None,
        embodiment: str | None = None,
    ):
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle, verify)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        space = json.loads((self.bundle / "token_space.json").read_text())
        if space.get("format") != TOKEN_SPACE_FORMAT:
            raise ValueError(
                f"{self.bundle}: token space {space.get('format')!r}, this runtime reads "
                f"{TOKEN_SPACE_FORMAT!r}; re-export the checkpoint"
            )
        self.config = json.loads((self.bundle / "policy.json").read_text())
        self.special = {name: i for i, name in enumerate(space["special"])}
        ranges = {k: tuple(v) for k, v in space["ranges"].items()}
        self.text_start, self.state_start = ranges["text"][0], ranges["state"][0]
        self.video_start, self.state_bins = ranges["video"][0], int(space["state_bins"])
        self.space_vocab = int(space["vocab_size"])
        self.action_ranges = space["action_ranges"]  # name, size, length (None: variable), max_length, start
        self.state_bounds = [
            (
                np.asarray(e["state_lo"], np.float64),
                np.maximum(np.asarray(e["state_hi"], np.float64) - np.asarray(e["state_lo"], np.float64), 1e-6),
            )
            for e in space["embodiments"]
        ]
        self.decoders = [
            load_action_decoder(self.bundle / self.manifest["action_tokenizers"][r["name"]]) for r in self.action_ranges
        ]
        self.model = self.manifest["model"]  # n_layer, n_head, head_dim, vocab_size, max_seq_len
        self.horizon, self.history = int(self.config["horizon"]), int(self.config["history"])
        self.history_stride = int(self.config.get("history_stride", 1))
        self.n_action_steps = int(n_action_steps or self.config["n_action_steps"])  # given, else the default
        self.embodiments: list[dict[str, Any]] = self.config["embodiments"]
        # actions executed per chunk, per embodiment: the given count, else each one's own (policy.json)
        self.executed = [int(n_action_steps or e.get("n_action_steps", self.n_action_steps)) for e in self.embodiments]
        if not all(1 <= k <= self.horizon for k in (self.n_action_steps, *self.executed)):
            raise ValueError(f"n_action_steps {self.executed} must lie in [1, horizon {self.horizon}]")
        names = [e["name"] for e in self.embodiments]
        if embodiment is not None and embodiment not in names:
            raise ValueError(f"embodiment {embodiment!r} is not one of {names}")
        self.fixed_embodiment = None if embodiment is None else names.index(embodiment)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        graphs = self.manifest["graphs"]
        self.sessions = {
            name: ort.InferenceSession(str(self.bundle / graphs[name]), opts, providers=["CPUExecutionProvider"])
            for name in ("video_encoder", "prefill", "decode")
        }
        self.decode_failures = 0
        self.chunk_latencies_ms: list[float] = []
        self.last_action_ids: list[int] = []
        self.last_goal_ids: list[int] = []
        self._resume: tuple[list[int], tuple[np.ndarray, ...], int] | None = None  # with_goal's context, cache, pos
        self._prefix: tuple[list[int], tuple[np.ndarray, ...]] | None = None  # prompt prefix ids, its cache
        self._masks: dict[tuple[int, int], tuple[np.ndarray, bool]] = {}
        self.reset()

    # ---- LeRobot's contract ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start an episode: forget the observation history and the queued actions (the prompt cache stays)."""
        self._history: deque[dict[str, Any]] = deque(maxlen=(self.history - 1) * self.history_stride + 1)
        self._queue: deque[np.ndarray] = deque()
        self._embodiment = self.fixed_embodiment

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """The next action float32[A]: from the queue, refilled with a new chunk's first n_action_steps (the
        embodiment's own, ``executed``)."""
        self._observe(obs)
        if not self._queue:
            self._queue.extend(self._predict(obs["task"])[: self.executed[self._embodiment]])
        return self._queue.popleft()

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Record the observation and predict a whole chunk: ``{"actions": float32[H, A], "action_ids": [...],
        "latency_ms": float}`` (the queue of ``select_action`` is left alone)."""
        self._observe(obs)
        chunk = self._predict(obs["task"])
        return {"actions": chunk, "action_ids": list(self.last_action_ids), "latency_ms": self.chunk_latencies_ms[-1]}

    def predict_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        """``infer(obs)["actions"]``: the torch Policy's name for it."""
        return self.infer(obs)["actions"]

    @property
    def last_latency_ms(self) -> float | None:
        return self.chunk_latencies_ms[-1] if self.chunk_latencies_ms else None

    # ---- observations -----------------------------------------------------------------------------------------
    def embodiment_of(self, obs: dict[str, Any]) -> int:
        """Which embodiment an observation comes from: state size and cameras, then the prompt if they tie."""
        if self.fixed_embodiment is not None:
            return self.fixed_embodiment
        dim, cams = int(np.asarray(obs["agent_pos"]).reshape(-1).shape[0]), set(obs["pixels"])
        found = [i for i, e in enumerate(self.embodiments) if e["state_dim"] == dim and set(e["cameras"]) <= cams]
        if len(found) > 1:
            found = [i for i in found if obs.get("task") in self.embodiments[i]["tasks"]] or found
        if len({self.embodiments[i]["action_range"] for i in found}) != 1:
            desc = [(e["name"], e["state_dim"], e["cameras"]) for e in self.embodiments]
            raise ValueError(
                f"observation with {dim}-D state and cameras {sorted(cams)} matches {len(found)} of the "
                f"embodiments (name, state dim, cameras) {desc}; pass the cameras and state the policy "
                "was trained on, or embodiment=NAME"
            )
        return found[0]

    def _observe(self, obs: dict[str, Any]) -> None:
        if not isinstance(obs, dict) or "pixels" not in obs or "agent_pos" not in obs:
            found = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(
                "observation must be the env's dict {'pixels': {camera: uint8 [H, W, 3]}, "
                f"'agent_pos': float [S], 'task': str}}; got {found}"
            )
        if not isinstance(obs.get("task"), str) or not obs["task"]:
            raise ValueError("observation has no 'task': add the prompt string, e.g. {**obs, 'task': info['prompt']}")
        state = np.asarray(obs["agent_pos"], dtype=np.float32)
        if state.ndim != 1 or not np.isfinite(state).all():
            raise ValueError(
                f"observation 'agent_pos' must be a finite 1-D state vector, got shape {state.shape} "
                f"with {int(np.size(state) - np.isfinite(state).sum())} NaN/inf values; check the robot's "
                "state estimate before calling the policy"
            )
        if self._embodiment is None:
            self._embodiment = self.embodiment_of(obs)
        e = self.embodiments[self._embodiment]
        if state.shape[0] != e["state_dim"]:
            raise ValueError(
                f"observation 'agent_pos' has {state.shape[0]} dims, embodiment {e['name']!r} was "
                f"trained on {e['state_dim']}"
            )
        frames = []
        for cam in e["cameras"]:
            if cam not in obs["pixels"]:
                raise ValueError(
                    f"observation lacks camera {cam!r} (found {sorted(obs['pixels'])}); embodiment "
                    f"{e['name']!r} needs cameras {e['cameras']}"
                )
            f = obs["pixels"][cam]
            want = (*e["image_size"], 3)
            if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.shape != want:
                raise ValueError(
                    f"camera {cam!r}: frame {getattr(f, 'dtype', type(f).__name__)} "
                    f"{getattr(f, 'shape', '')}, the policy was trained on uint8 {want} (H, W, RGB); "
                    "resize the image or make the env with that width/height"
                )
            frames.append(f)
        self._history.append({"frames": frames, "state": state, "codes": None})

    def _encode_state(self, state: np.ndarray, embodiment: int) -> list[int]:
        lo, width = self.state_bounds[embodiment]
        u = np.clip((np.asarray(state, np.float64) - lo) / width, 0.0, 1.0)
        bins = np.minimum((u * self.state_bins).astype(np.int64), self.state_bins - 1)
        return (bins + self.state_start).tolist()

    def _context(self, prompt: str) -> list[int]:
        """The ids before the first action id, as ``TokenSpace.context`` builds them."""
        hist = list(self._history)
        t = len(hist) - 1
        steps = [hist[max(0, t - (self.history - 1 - j) * self.history_stride)] for j in range(self.history)]
        todo = [s for s in {id(s): s for s in steps}.values() if s["codes"] is None]
        if todo:  # each observed frame is encoded once; all cameras of all new steps in one batch
            frames = np.stack([f for s in todo for f in s["frames"]]).astype(np.float32) / 255.0  # [B, H, W, 3]
            codes = self.sessions["video_encoder"].run(None, {"frames": frames.transpose(0, 3, 1, 2)})[0]  # [B, h, w]
            k = len(todo[0]["frames"])
            for j, s in enumerate(todo):
                s["codes"] = list(codes[j * k : (j + 1) * k])
        sp = self.special
        out = [sp["BOS"], *(self.text_start + b for b in prompt.encode("utf-8")), sp["SEP"]]
        for s in steps:
            out += [
                sp["FRAME_OPEN"],
                *(int(c) + self.video_start for cam in s["codes"] for c in cam.ravel()),
                sp["FRAME_CLOSE"],
                sp["STATE_OPEN"],
                *self._encode_state(s["state"], self._embodiment),
                sp["STATE_CLOSE"],
            ]
        out.append(sp["ACT_OPEN"])
        return out

    # ---- generation -------------------------------------------------------------------------------------------
    def _mask(self, n_emitted: int, action_range: int) -> tuple[np.ndarray, bool]:
        """bool[model vocab] of the ids the grammar allows next (TokenSpace.allowed_after), and whether that is
        ACT_CLOSE alone."""
        r = self.action_ranges[action_range]
        key = (0 if n_emitted == 0 else 1 if n_emitted < r["max_length"] else 2, action_range)
        if key not in self._masks:
            m = np.zeros(int(self.model["vocab_size"]), dtype=bool)
            close = self.special["ACT_CLOSE"]
            if n_emitted >= r["max_length"]:
                m[close] = True
            else:
                m[r["start"] : r["start"] + r["size"]] = True
                m[close] = r["length"] is None and n_emitted > 0  # fixed length: never close early
            self._masks[key] = (m, bool(m[close] and m.sum() == 1))
        return self._masks[key]

    def _run(
        self, ids: list[int], pos: int, cache: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Logits after ``ids`` at ``pos``, and the new cache: (k, v), and the prompt's encoding when the model
        conditions its frame stem on the prompt (manifest ``model.prompt_cond`` > 0)."""
        graph = "decode" if len(ids) == 1 else "prefill"
        feed = {
            "idx": np.asarray([ids], dtype=np.int64),
            "pos": np.asarray(pos, dtype=np.int64),
            "k_cache": cache[0],
            "v_cache": cache[1],
        }
        if len(cache) > 2:
            feed["cond"] = cache[2]
        logits, *new = self.sessions[graph].run(None, feed)
        return logits[0], tuple(new)

    def _prefix_cache(self, prefix: list[int], need: int) -> tuple[np.ndarray, ...]:
        """The cache holding the prompt prefix; rebuilt for a new prompt or a longer context."""
        if self._prefix is None or self._prefix[0] != prefix or self._prefix[1][0].shape[3] < need:
            size = max(need, min(int(self.config.get("seq_len", 0)), int(self.model["max_seq_len"])))
            if size > int(self.model["max_seq_len"]):
                raise ValueError(
                    f"a context of {need} tokens exceeds the model's max_seq_len "
                    f"{self.model['max_seq_len']}; shorten the prompt"
                )
            m = self.model
            zeros = np.zeros((m["n_layer"], 1, m["n_head"], size, m["head_dim"]), dtype=np.float32)
            cond = int(m.get("prompt_cond", 0))
            empty = (zeros, zeros, np.zeros((1, cond), np.float32)) if cond else (zeros, zeros)
            _, cache = self._run(prefix, 0, empty)
            self._prefix = (prefix, cache)
        return self._prefix[1]

    def generate(self, context: list[int], action_range: int) -> list[int]:
        """Greedy action ids after ``context`` (which ends with ACT_OPEN), ACT_CLOSE excluded."""
        r = self.action_ranges[action_range]
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == context:  # with_goal left the context in a cache, but its last ids
            _, cache, pos = resume
            feed, out = context[pos:], []
        else:
            n_prefix = context.index(self.special["SEP"]) + 1
            cache = self._prefix_cache(context[:n_prefix], len(context) + r["max_length"])
            feed, pos, out = context[n_prefix:], n_prefix, []
        while True:
            mask, only_close = self._mask(len(out), action_range)
            if only_close:  # the grammar leaves nothing else: no model call
                return out
            logits, cache = self._run(feed, pos, cache)
            pos += len(feed)
            tok = int(np.argmax(np.where(mask, logits, -np.inf)))
            if tok == self.special["ACT_CLOSE"]:
                return out
            out.append(tok)
            feed = [tok]

    def with_goal(self, context: list[int], embodiment: int) -> list[int]:
        """Policies trained with goals (``policy.json`` ``goal``): the context with the predicted goal state,
        ``... STATE_OPEN goal-bins STATE_CLOSE ACT_OPEN`` (greedy, state ids only); else ``context``."""
        if not self.config.get("goal", False):
            return context
        sp = self.special
        out = [*context[:-1], sp["STATE_OPEN"]]
        dim = int(self.embodiments[embodiment]["state_dim"])
        n_act = int(self.action_ranges[self.embodiments[embodiment]["action_range"]]["max_length"])
        n_prefix = out.index(sp["SEP"]) + 1
        cache = self._prefix_cache(out[:n_prefix], len(out) + dim + 2 + n_act)  # generate goes on in it
        feed, pos, goal = out[n_prefix:], n_prefix, []
        lo, hi = self.state_start, self.state_start + self.state_bins
        for _ in range(dim):
            logits, cache = self._run(feed, pos, cache)
            pos += len(feed)
            goal.append(lo + int(np.argmax(logits[lo:hi])))
            feed = goal[-1:]
        self.last_goal_ids = goal
        context = [*out, *goal, sp["STATE_CLOSE"], sp["ACT_OPEN"]]
        self._resume = (context, cache, pos)
        return context

    def _predict(self, prompt: str) -> np.ndarray:
        t0 = time.perf_counter()
        e = self.embodiments[self._embodiment]
        ri = e["action_range"]
        ids = self.generate(self.with_goal(self._context(prompt), self._embodiment), ri)
        self.last_action_ids = ids
        r = self.action_ranges[ri]
        tokens = [i - r["start"] for i in ids if r["start"] <= i < r["start"] + r["size"]]
        chunk, ok = self.decoders[ri].decode(tokens, self.horizon, e["tokenizer_dim"])
        if not ok or len(tokens) != len(ids):
            self.decode_failures += 1
            chunk = np.tile(np.asarray(e["hold"], dtype=np.float32), (self.horizon, 1))
        chunk = np.asarray(chunk, dtype=np.float32)[:, : e["action_dim"]]
        assert chunk.shape == (self.horizon, e["action_dim"]), f"chunk {chunk.shape}"
        self.chunk_latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        return chunk
