"""Imagination: the policy's own transformer rolled out as a world model, with no simulator in the loop.

A checkpoint trained on shards made with ``robotok-pretokenize --frame-loss`` and ``robotok-train
--frame-loss-weight W`` has learned, after every action chunk, the video ids of the frame that follows it
(policy.json ``frame_steps`` later, the shards' ``--n-action-steps``; see the grammar in
``robotok.tokenizers.space``)::

    BOS prompt SEP {FRAME_OPEN video FRAME_CLOSE STATE_OPEN state STATE_CLOSE} ACT_OPEN actions ACT_CLOSE
    FRAME_OPEN video' FRAME_CLOSE [STATE_OPEN state' STATE_CLOSE]

Imagining alternates the two: from one real observation, generate an action chunk, then the next frame's
ids; that imagined frame becomes the newest context frame, and so on (as GR-1, Genie and GAIA-1 do at
scale). Both halves are grammar-constrained: action positions admit only the embodiment's action ids (or
ACT_CLOSE where allowed), frame positions only video ids, exactly ``cameras x tokens_per_frame`` of them
(and the KEEP id when the checkpoint's frames are written as a change to the current one: it resolves to
the code the newest context frame has at that cell).

Conventions:
- A checkpoint whose shards carry the next state after the next frame (policy.json ``next_state``, what
  ``--frame-loss`` writes) predicts that state too, and the imagined state becomes the context's state:
  the frame and the state the model reads next then agree. Older frame-loss checkpoints predict frames
  only; their context holds the last real state. Either way :meth:`Imagination.set_state` overrides it
  (e.g. with the simulator's state, as a diagnostic).
- Imagined frames exist every ``frame_steps`` env steps, and each chunk advances the rollout that many
  steps, whatever count the policy executes per chunk when it acts (policy.json ``n_action_steps``). A
  history step that falls in between uses the latest frame imagined before it (exact when ``history == 1``
  or ``history_stride`` is a multiple of ``frame_steps``).
- Generation reuses the public pieces of :class:`robotok.policy.inference.Policy` (model, token space,
  tokenizers, sampling settings) with a KV cache of its own: the prompt prefix is computed once per
  rollout, each chunk moves the cache back to its end and prefills the frame/state ids only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robotok.policy.inference import Policy
from robotok.tokenizers.space import ACT_CLOSE, FRAME_CLOSE, FRAME_OPEN, SEP, STATE_OPEN, history_indices


def check_frame_loss(ckpt_dir: str | Path) -> None:
    """Raise ValueError unless the checkpoint was trained with the next-frame (world-model) loss."""
    ckpt_dir = Path(ckpt_dir)
    policy = json.loads((ckpt_dir / "policy.json").read_text())
    if not policy.get("frame_loss", False):
        raise ValueError(
            f"{ckpt_dir} was trained on shards without next-frame targets (policy.json frame_loss is "
            "false): it cannot imagine frames; pretokenize with --frame-loss and train again"
        )
    weight = json.loads((ckpt_dir / "config.json").read_text()).get("train", {}).get("frame_loss_weight", 0.0)
    if not weight or float(weight) <= 0:
        raise ValueError(
            f"{ckpt_dir} was trained with frame_loss_weight {weight}: its frame tokens carried no "
            "loss, so it never learned to predict them; train with --frame-loss-weight W (e.g. 0.5)"
        )


def pick(
    logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> int:
    """One id from logits[V] restricted to mask[V] (bool): argmax, or a temperature/top-k sample."""
    logits = logits.float().masked_fill(~mask, float("-inf"))
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, int(mask.sum()))).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


@dataclass
class ImaginedChunk:
    """One imagined step: the action chunk generated, then the frame the model expects after it."""

    actions: np.ndarray  # float32 [H, A]: the decoded chunk (the hold action where decoding failed)
    codes: list[np.ndarray]  # per camera int64 [h, w]: the imagined frame's video codes
    action_ids: list[int]  # token ids of the chunk, ACT_CLOSE excluded
    video_ids: list[int]  # token ids of the frame, all cameras in order, FRAME_OPEN/CLOSE excluded (KEEP ids kept)
    tokens: list[int]  # the whole sequence this step generated from: context + actions + ACT_CLOSE + frame
    decode_ok: bool  # False when the action tokenizer flagged the chunk and it was replaced by the hold
    state: np.ndarray | None = None  # float32 [S]: the imagined state after the chunk (None: not predicted)


class WorldModel:
    """A frame-loss checkpoint as an action-and-frame generator; :meth:`start` opens a rollout."""

    def __init__(self, policy: Policy, stay_bias: float = 0.0):
        self.policy = policy
        # added to the logit of each cell's current code when a frame is generated: a prior that what the model
        # is unsure about stays as it is (0: the model's own distribution)
        self.stay_bias = float(stay_bias)
        self.space, self.model = policy.space, policy.model
        self.grid = tuple(policy.video_tokenizer.grid)  # (h, w) of one camera's code grid
        # actions between the context frame and the predicted one: the shards' offset (older checkpoints: the
        # executed count, which was the same)
        self.frame_steps = int(policy.config.get("frame_steps", policy.config["n_action_steps"]))
        vocab = self.model.cfg.vocab_size
        video = np.zeros(vocab, dtype=bool)
        video[: self.space.vocab_size] = self.space.range_mask("video")
        if self.space.keep_id is not None:  # frames predicted as a change: KEEP is a frame id too
            video[self.space.keep_id] = True
        self.video_mask = torch.from_numpy(video).to(policy.device)
        state = np.zeros(vocab, dtype=bool)
        state[: self.space.vocab_size] = self.space.range_mask("state")
        self.state_mask = torch.from_numpy(state).to(policy.device)
        self.next_state = bool(policy.config.get("next_state", False))
        self._action_masks: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def from_checkpoint(
        cls, ckpt_dir: str | Path, device: str = "cpu", stay_bias: float = 0.0, **kwargs: Any
    ) -> WorldModel:
        """Open a checkpoint trained with the next-frame loss (ValueError otherwise); kwargs go to Policy."""
        check_frame_loss(ckpt_dir)
        return cls(Policy.from_checkpoint(ckpt_dir, device=device, **kwargs), stay_bias=stay_bias)

    def action_mask(self, n_emitted: int, action_range: int) -> torch.Tensor:
        r = self.space.action_ranges[action_range]
        key = (0 if n_emitted == 0 else 1 if n_emitted < r.max_length else 2, action_range)
        if key not in self._action_masks:
            m = np.zeros(self.model.cfg.vocab_size, dtype=bool)
            m[: self.space.vocab_size] = self.space.allowed_after(n_emitted, action_range)
            self._action_masks[key] = torch.from_numpy(m).to(self.policy.device)
        return self._action_masks[key]

    def start(self, obs: dict[str, Any], prompt: str) -> Imagination:
        """A rollout from one real observation (the env's dict: ``pixels`` per camera, ``agent_pos``)."""
        return Imagination(self, obs, prompt)


class Imagination:
    """One imagined rollout: call :meth:`step` once per chunk; the imagined frames feed the context."""

    def __init__(self, wm: WorldModel, obs: dict[str, Any], prompt: str):
        self.wm, self.prompt = wm, prompt
        p = wm.policy
        self.embodiment = p.embodiment_of({**obs, "task": prompt})
        e = p.embodiments[self.embodiment]
        self.cameras, self.action_range = list(e["cameras"]), int(e["action_range"])
        frames = []
        for cam in self.cameras:
            f = np.asarray(obs["pixels"][cam])
            if f.dtype != np.uint8 or f.shape != (*e["image_size"], 3):
                raise ValueError(
                    f"camera {cam!r}: frame {f.dtype} {f.shape}, the model was trained on uint8 "
                    f"{(*e['image_size'], 3)}; make the env with that width/height"
                )
            frames.append(f)
        codes = p.video_tokenizer.encode(np.stack(frames))  # [cams, h, w]
        self.t = 0  # env steps since the real observation
        self.frames: dict[int, list[np.ndarray]] = {0: list(codes)}  # env step -> codes per camera
        self.states: dict[int, np.ndarray] = {0: np.asarray(obs["agent_pos"], dtype=np.float32)}
        self._prefix = wm.space.encode_prompt(prompt)
        self._cache = None

    def _latest(self, table: dict[int, Any], t: int) -> Any:
        return table[max(k for k in table if k <= t)]

    def context(self) -> list[int]:
        """The context at the current step, built by the same ``TokenSpace.context`` as training rows."""
        p = self.wm.policy
        steps = [
            (self._latest(self.frames, j), self._latest(self.states, j))
            for j in history_indices(self.t, p.history, p.history_stride)
        ]
        return self.wm.space.context(self.prompt, steps, self.embodiment)

    def current_state(self) -> np.ndarray:
        """The state the context holds at the current step (imagined, told with :meth:`set_state`, or held)."""
        return self._latest(self.states, self.t).copy()

    def set_state(self, state: np.ndarray) -> None:
        """Tell the state at the current step (e.g. the simulator's); without it the last known one is held."""
        self.states[self.t] = np.asarray(state, dtype=np.float32)

    @torch.inference_mode()
    def step(self) -> ImaginedChunk:
        """Generate the next action chunk and the frame after its first ``frame_steps`` actions; that frame
        becomes the newest context frame (the rollout advances ``frame_steps`` env steps)."""
        wm, p = self.wm, self.wm.policy
        space, model = wm.space, wm.model
        r = space.action_ranges[self.action_range]
        n_video = len(self.cameras) * self.wm.grid[0] * self.wm.grid[1]
        context = p.with_goal(self.context(), self.embodiment)  # unchanged unless the policy predicts goals
        assert context[: len(self._prefix)] == self._prefix and self._prefix[-1] == SEP
        n_state = 2 + space.embodiments[self.embodiment].state_dim if wm.next_state else 0
        need = len(context) + r.max_length + 2 + n_video + n_state
        if need > model.cfg.max_seq_len:
            raise ValueError(
                f"context {len(context)} + at most {r.max_length + 2} action + {n_video} frame "
                f"(+ {n_state} state) tokens "
                f"> the model's max_seq_len {model.cfg.max_seq_len}"
            )
        if self._cache is None or self._cache.max_len < need:
            self._cache = model.new_cache(1, max(need, min(int(p.config.get("seq_len", 0)) + 8, model.cfg.max_seq_len)))
            model.forward_cached(torch.tensor([self._prefix], device=p.device), self._cache, last=True)
        self._cache.truncate(len(self._prefix))

        def feed(ids: list[int]) -> torch.Tensor:
            return model.forward_cached(torch.tensor([ids], device=p.device), self._cache, last=True)[0, -1]

        sample = {"temperature": p.temperature, "top_k": p.top_k, "generator": p.generator}
        logits = feed(context[len(self._prefix) :])
        action_ids: list[int] = []
        while True:  # the action chunk, under the grammar of TokenSpace.allowed_after
            mask = wm.action_mask(len(action_ids), self.action_range)
            if bool(mask[ACT_CLOSE]) and int(mask.sum()) == 1:
                break
            tok = pick(logits, mask, **sample)
            if tok == ACT_CLOSE:
                break
            action_ids.append(tok)
            logits = feed([tok])
        logits = feed([ACT_CLOSE, FRAME_OPEN])  # both forced by the grammar: context, not sampled
        video_ids: list[int] = []
        current = space.video_ids(np.stack(self._latest(self.frames, self.t))).reshape(-1) if wm.stay_bias else None
        for k in range(n_video):  # the next frame: video ids only, exactly n_video of them
            if current is not None:
                logits = logits.float().clone()
                logits[int(current[k])] += wm.stay_bias
            tok = pick(logits, wm.video_mask, **sample)
            video_ids.append(tok)
            if k + 1 < n_video or wm.next_state:
                logits = feed([tok])
        assert all(space.is_video(i) or i == space.keep_id for i in video_ids), "a non-video id at a frame position"
        tokens = [*context, *action_ids, ACT_CLOSE, FRAME_OPEN, *video_ids]
        state = None
        if wm.next_state:  # the state after the frame: state ids only, one per dimension
            logits = feed([FRAME_CLOSE, STATE_OPEN])  # forced by the grammar
            dim = space.embodiments[self.embodiment].state_dim
            state_ids: list[int] = []
            for k in range(dim):
                state_ids.append(pick(logits, wm.state_mask, **sample))
                if k + 1 < dim:
                    logits = feed([state_ids[-1]])
            tokens += [FRAME_CLOSE, STATE_OPEN, *state_ids]
            state = space.decode_state(state_ids, self.embodiment)

        actions, ok = self._decode_actions(action_ids)
        codes = space.resolve_frame(video_ids, self._latest(self.frames, self.t))  # KEEP: the current frame's code
        self.t += wm.frame_steps
        self.frames[self.t] = list(codes)
        if state is not None:
            self.states[self.t] = state
        return ImaginedChunk(actions, list(codes), action_ids, video_ids, tokens, ok, state)

    def _decode_actions(self, ids: list[int]) -> tuple[np.ndarray, bool]:
        """Action ids -> float32 [H, A] with the policy's rule: a flagged chunk becomes the hold action."""
        p = self.wm.policy
        e = p.embodiments[self.embodiment]
        tokens = self.wm.space.action_tokens(ids, self.action_range)
        chunk, ok = p.action_tokenizers[self.action_range].decode(tokens, p.horizon, e["tokenizer_dim"])
        ok = bool(ok) and len(tokens) == len(ids)
        if not ok:
            p.decode_failures += 1
            chunk = np.tile(np.asarray(e["hold"], dtype=np.float32), (p.horizon, 1))
        chunk = np.asarray(chunk, dtype=np.float32)[:, : e["action_dim"]]
        assert chunk.shape == (p.horizon, e["action_dim"]), f"chunk {chunk.shape}"
        return chunk, ok

    def decode_frames(self, codes: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Codes per camera -> {camera: uint8 [H, W, 3]} through the video tokenizer's decoder."""
        frames = self.wm.policy.video_tokenizer.decode(np.stack(codes))
        return dict(zip(self.cameras, frames, strict=True))
