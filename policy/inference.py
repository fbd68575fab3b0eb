"""Prompted generation: a trained checkpoint as a policy with LeRobot's ``select_action`` contract.

``Policy.from_checkpoint(dir)`` opens a checkpoint by path alone (model, token space, policy conventions,
tokenizers). An observation is the env's dict plus the prompt: ``{"pixels": {cam: uint8 [H, W, 3]},
"agent_pos": float32 [S], "task": str}``. Each call of ``select_action`` records the observation; when its
queue of actions is empty it predicts a chunk of H actions and queues the first ``n_action_steps``.

Generating a chunk:

1. the context is built by :meth:`TokenSpace.context` from the last ``history`` observations: the very
   function that built the training sequences (``robotok.policy.pretokenize``), so they cannot drift;
2. the prompt prefix ``BOS prompt SEP`` sits in a KV cache computed once per prompt; each chunk moves the
   cache back to the end of the prefix (``KVCache.truncate``: later entries are overwritten) and prefills
   only the frame and state ids;
3. action ids are generated one at a time with ``forward_cached`` under the grammar of
   :meth:`TokenSpace.allowed_after`: every logit outside the embodiment's action range (and ACT_CLOSE where
   the grammar does not allow it) is set to -inf, so the model cannot emit an id the action tokenizer
   cannot read. Greedy by default; ``temperature`` and ``top_k`` sample;
4. the action tokenizer decodes; a chunk it flags as repaired (``ok=False``) is counted in
   ``decode_failures`` and replaced by the embodiment's ``hold`` action from ``policy.json``.

Per-chunk wall time (observation encoding included) is kept in ``chunk_latencies_ms``.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robotok.tokenizers.space import ACT_CLOSE, ACT_OPEN, SEP, STATE_CLOSE, STATE_OPEN, TokenSpace, history_indices


class Policy:
    """A prompted token-stream policy; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        space: TokenSpace,
        config: dict[str, Any],
        action_tokenizers: list[Any],
        video_tokenizer: Any,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        use_cache: bool = True,
        n_action_steps: int | None = None,
        embodiment: str | None = None,
        seed: int | None = None,
    ):
        if len(action_tokenizers) != len(space.action_ranges):
            raise ValueError(f"{len(action_tokenizers)} action tokenizers for {len(space.action_ranges)} action ranges")
        vocab = model.cfg.vocab_size
        if vocab < space.vocab_size:
            raise ValueError(f"model vocabulary {vocab} < token space {space.vocab_size}: not trained on this space")
        if temperature < 0 or top_k < 0:
            raise ValueError(f"temperature {temperature} and top_k {top_k} must be >= 0")
        self.model, self.space, self.config = model.eval(), space, config
        self.action_tokenizers, self.video_tokenizer = action_tokenizers, video_tokenizer
        self.temperature, self.top_k, self.use_cache = temperature, top_k, use_cache
        self.horizon, self.history = int(config["horizon"]), int(config["history"])
        self.history_stride = int(config.get("history_stride", 1))
        self.n_action_steps = int(n_action_steps or config["n_action_steps"])  # given, else the default
        self.embodiments: list[dict[str, Any]] = config["embodiments"]
        # actions executed per chunk, per embodiment: the given count, else each one's own (policy.json)
        self.executed = [int(n_action_steps or e.get("n_action_steps", self.n_action_steps)) for e in self.embodiments]
        if not all(1 <= k <= self.horizon for k in (self.n_action_steps, *self.executed)):
            raise ValueError(f"n_action_steps {self.executed} must lie in [1, horizon {self.horizon}]")
        names = [e["name"] for e in self.embodiments]
        if embodiment is not None and embodiment not in names:
            raise ValueError(f"embodiment {embodiment!r} is not one of {names}")
        self.fixed_embodiment = None if embodiment is None else names.index(embodiment)
        self.device = next(model.parameters()).device
        # sampling draws from torch's global RNG unless given a seed (then from a generator of its own)
        self.generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        self.decode_failures = 0
        self.chunk_latencies_ms: list[float] = []
        self.last_action_ids: list[int] = []  # token ids of the last chunk, for inspection and tests
        self._prefix: tuple[list[int], Any] | None = None  # (prompt prefix ids, its KV cache)
        self._resume: tuple[list[int], Any, int] | None = None  # with_goal's context, its cache, the position fed
        self._masks: dict[tuple[int, int], tuple[torch.Tensor, bool]] = {}
        self._masks_named: dict[str, torch.Tensor] = {}
        self.last_goal_ids: list[int] = []  # the goal-state ids of the last chunk (policies trained with goals)
        self.reset()

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | Path, device: str = "cpu", **kwargs: Any) -> Policy:
        """Open a checkpoint directory written by robotok-train (``kwargs`` go to the constructor)."""
        from robotok.policy.checkpoint import load_checkpoint
        from robotok.tokenizers.action import load_action_tokenizer
        from robotok.tokenizers.video import VideoTokenizer

        ckpt_dir = Path(ckpt_dir)
        for name in ("token_space.json", "policy.json", "tokenizers/video"):
            if not (ckpt_dir / name).exists():
                raise FileNotFoundError(
                    f"{ckpt_dir} lacks {name}; a checkpoint from robotok-train carries it "
                    "(copied from the shards of robotok-pretokenize)"
                )
        model, _ = load_checkpoint(ckpt_dir, device=device)
        space = TokenSpace.load(ckpt_dir / "token_space.json")
        config = json.loads((ckpt_dir / "policy.json").read_text())
        toks = [load_action_tokenizer(ckpt_dir / "tokenizers" / "action" / r.name) for r in space.action_ranges]
        return cls(
            model, space, config, toks, VideoTokenizer.load(ckpt_dir / "tokenizers" / "video", device=device), **kwargs
        )

    # ---- LeRobot's contract ---------------------------------------------------------------------
    def reset(self) -> None:
        """Start an episode: forget the observation history and the queued actions (the prompt cache stays:
        it depends on the prompt and the weights only)."""
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

    def predict_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        """Record the observation and predict a whole chunk float32[H, A] (the queue is left alone)."""
        self._observe(obs)
        return self._predict(obs["task"])

    @property
    def last_latency_ms(self) -> float | None:
        return self.chunk_latencies_ms[-1] if self.chunk_latencies_ms else None

    # ---- observations -------------------------------------------------------------------------
    def embodiment_of(self, obs: dict[str, Any]) -> int:
        """Which embodiment an observation comes from: state size and cameras, then the prompt if they tie."""
        if self.fixed_embodiment is not None:
            return self.fixed_embodiment
        dim, cams = int(np.asarray(obs["agent_pos"]).shape[0]), set(obs["pixels"])
        found = [i for i, e in enumerate(self.embodiments) if e["state_dim"] == dim and set(e["cameras"]) <= cams]
        if len(found) > 1:
            found = [i for i in found if obs.get("task") in self.embodiments[i]["tasks"]] or found
        if len({self.embodiments[i]["action_range"] for i in found}) != 1:
            desc = [(e["name"], e["state_dim"], e["cameras"]) for e in self.embodiments]
            raise ValueError(
                f"observation with {dim}-D state and cameras {sorted(cams)} matches "
                f"{len(found)} of the embodiments (name, state dim, cameras) {desc}; "
                "pass embodiment=NAME"
            )
        return found[0]

    def _observe(self, obs: dict[str, Any]) -> None:
        if self._embodiment is None:
            self._embodiment = self.embodiment_of(obs)
        e = self.embodiments[self._embodiment]
        frames = []
        for cam in e["cameras"]:
            f = np.asarray(obs["pixels"][cam])
            if f.dtype != np.uint8 or f.shape != (*e["image_size"], 3):
                raise ValueError(
                    f"camera {cam!r}: frame {f.dtype} {f.shape}, the policy was trained on uint8 "
                    f"{(*e['image_size'], 3)}; make the env with that width/height"
                )
            frames.append(f)
        state = np.asarray(obs["agent_pos"], dtype=np.float32)
        self._history.append({"frames": frames, "state": state, "codes": None})

    def _context(self, prompt: str) -> list[int]:
        hist = list(self._history)
        steps = [hist[i] for i in history_indices(len(hist) - 1, self.history, self.history_stride)]
        todo = [s for s in {id(s): s for s in steps}.values() if s["codes"] is None]
        if todo:  # encode each observed frame once, all cameras of all new steps in one batch
            ids = self.video_tokenizer.encode(np.stack([f for s in todo for f in s["frames"]]))
            k = len(todo[0]["frames"])
            for j, s in enumerate(todo):
                s["codes"] = list(ids[j * k : (j + 1) * k])
        return self.space.context(prompt, [(s["codes"], s["state"]) for s in steps], self._embodiment)

    # ---- generation --------------------------------------------------------------------------
    def _mask(self, n_emitted: int, action_range: int) -> tuple[torch.Tensor, bool]:
        """bool[model vocab] of the ids the grammar allows next, and whether that is ACT_CLOSE alone (cached)."""
        r = self.space.action_ranges[action_range]
        key = (0 if n_emitted == 0 else 1 if n_emitted < r.max_length else 2, action_range)
        if key not in self._masks:
            m = np.zeros(self.model.cfg.vocab_size, dtype=bool)
            m[: self.space.vocab_size] = self.space.allowed_after(n_emitted, action_range)
            self._masks[key] = (torch.from_numpy(m).to(self.device), bool(m[ACT_CLOSE] and m.sum() == 1))
        return self._masks[key]

    def _pick(self, logits: torch.Tensor, mask: torch.Tensor) -> int:
        """One id from logits[V] restricted to mask[V]: argmax, or a temperature/top-k sample."""
        logits = logits.float().masked_fill(~mask, float("-inf"))
        if self.temperature <= 0:
            return int(logits.argmax())
        logits = logits / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, int(mask.sum()))).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator))

    def _prefix_cache(self, prefix: list[int], need: int) -> Any:
        """The KV cache holding the prompt prefix, moved back to its end; rebuilt for a new prompt or length."""
        if self._prefix is None or self._prefix[0] != prefix or self._prefix[1].max_len < need:
            size = max(need, min(int(self.config.get("seq_len", 0)), self.model.cfg.max_seq_len))
            cache = self.model.new_cache(1, size)  # raises if `need` exceeds the model's max_seq_len
            self.model.forward_cached(torch.tensor([prefix], device=self.device), cache, last=True)
            self._prefix = (prefix, cache)
        cache = self._prefix[1]
        cache.truncate(len(prefix))
        return cache

    @torch.inference_mode()
    def generate(self, context: list[int], action_range: int) -> list[int]:
        """Action token ids that follow ``context`` (``BOS prompt SEP ... ACT_OPEN``), ACT_CLOSE excluded."""
        r = self.space.action_ranges[action_range]
        if self.use_cache:
            resume, self._resume = self._resume, None
            if resume is not None and resume[0] == context and resume[1].pos == resume[2]:
                cache = resume[1]  # with_goal left the context in the cache, but for its last few ids
                feed = context[resume[2] :]
            else:
                prefix_len = context.index(SEP) + 1
                cache = self._prefix_cache(context[:prefix_len], len(context) + r.max_length)
                feed = context[prefix_len:]
        out: list[int] = []
        while True:
            mask, only_close = self._mask(len(out), action_range)
            if only_close:  # the grammar leaves nothing else: no model call
                return out
            if self.use_cache:
                logits = self.model.forward_cached(torch.tensor([feed], device=self.device), cache, last=True)[0, -1]
            else:
                logits = self.model(torch.tensor([context + out], device=self.device))[0][0, -1]
            tok = self._pick(logits, mask)
            if tok == ACT_CLOSE:
                return out
            out.append(tok)
            feed = [tok]

    @torch.inference_mode()
    def with_goal(self, context: list[int], embodiment: int) -> list[int]:
        """For a policy trained with goals (``policy.json`` ``goal``): ``context`` (ending in ACT_OPEN) with
        the goal state the model predicts, ``... STATE_OPEN goal-bins STATE_CLOSE ACT_OPEN``; else unchanged.
        The bins are generated under the grammar (state ids only, exactly one per state dimension)."""
        if not self.config.get("goal", False):
            return context
        if "state" not in self._masks_named:
            m = np.zeros(self.model.cfg.vocab_size, dtype=bool)
            m[: self.space.vocab_size] = self.space.range_mask("state")
            self._masks_named["state"] = torch.from_numpy(m).to(self.device)
        mask = self._masks_named["state"]
        out = [*context[:-1], STATE_OPEN]
        dim = int(self.embodiments[embodiment]["state_dim"])
        n_act = self.space.action_ranges[self.embodiments[embodiment]["action_range"]].max_length
        goal: list[int] = []
        if self.use_cache:  # in the prompt prefix's cache, which generate then goes on from
            prefix_len = out.index(SEP) + 1
            cache = self._prefix_cache(out[:prefix_len], len(out) + dim + 2 + n_act)
            feed = out[prefix_len:]
        for _ in range(dim):
            if self.use_cache:
                logits = self.model.forward_cached(torch.tensor([feed], device=self.device), cache, last=True)[0, -1]
            else:
                logits = self.model(torch.tensor([out + goal], device=self.device))[0][0, -1]
            goal.append(self._pick(logits, mask))
            feed = goal[-1:]
        self.last_goal_ids = goal
        context = [*out, *goal, STATE_CLOSE, ACT_OPEN]
        if self.use_cache:
            self._resume = (context, cache, cache.pos)
        return context

    def _predict(self, prompt: str) -> np.ndarray:
        t0 = time.perf_counter()
        e = self.embodiments[self._embodiment]
        r = e["action_range"]
        ids = self.generate(self.with_goal(self._context(prompt), self._embodiment), r)
        self.last_action_ids = ids
        tokens = self.space.action_tokens(ids, r)
        chunk, ok = self.action_tokenizers[r].decode(tokens, self.horizon, e["tokenizer_dim"])
        if not ok or len(tokens) != len(ids):
            self.decode_failures += 1
            chunk = np.tile(np.asarray(e["hold"], dtype=np.float32), (self.horizon, 1))
        chunk = np.asarray(chunk, dtype=np.float32)[:, : e["action_dim"]]
        assert chunk.shape == (self.horizon, e["action_dim"]), f"chunk {chunk.shape}"
        self.chunk_latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        return chunk
