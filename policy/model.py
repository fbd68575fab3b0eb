"""A decoder-only transformer over the joint token stream (prompt bytes, video codes, state bins, actions).

nanoGPT's shape (Radford et al. 2019) with the LLaMA changes (Touvron et al. 2023): RMSNorm before each
sub-layer (Zhang & Sennrich 2019), rotary position embeddings (Su et al. 2021, "RoFormer"), SwiGLU
feed-forward (Shazeer 2020), no biases. Attention is ``F.scaled_dot_product_attention``, in fp32 on the CPU
(see ``robotok.policy.layers.attend``).

Conventions:
- Input and output embeddings are TIED (one ``[V, d]`` matrix): the vocabulary is small (a few thousand
  ids), so at ``tiny`` scale an untied head would add ~15% parameters for no measurable gain, and the
  saved file holds it once (``tok_emb.weight``; there is no ``lm_head`` key).
- ``forward`` is tensors in, tensors out; sampling, constraints and text handling live outside.
- Incremental decoding has two faces over the same maths: ``forward_kv(idx, pos, k_cache, v_cache)`` is a
  pure function of explicit tensors (caches ``[n_layer, B, n_head, T_max, head_dim]``, attention over the
  whole ``T_max`` under a position mask, static shapes) so it can be exported as a single-step decode
  graph; ``forward_cached(idx, cache)`` writes into a preallocated ``KVCache`` (``robotok.policy.layers``) in
  place and attends only to the filled prefix, for speed in torch.
- Frame inputs (``robotok.policy.frame_stem``, off unless the config sets them): a video id's input embedding
  adds its cell's embedding and, in observed frames, a small prompt-conditioned CNN's reading of the frame;
  with ``keypoint`` an observed frame's FRAME_CLOSE adds the embedding of the place that CNN points at.
- FSDP2 wrap units: every element of ``model.blocks`` (a ``Block``); the root unit keeps the tied
  embedding and the final norm. See ``robotok.policy.train``.

Parameters per preset with a 2048-id vocabulary (``python -m robotok.policy.model`` prints them):
micro 0.23M, tiny 3.74M, small 11.41M, base 86.53M, large 305.71M.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from robotok.policy.frame_stem import FrameStem, frame_layout
from robotok.policy.layers import Block, KVCache, RMSNorm, rope_tables


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the transformer; saved in every checkpoint's ``config.json``."""

    vocab_size: int = 2048
    """Size of the joint token space (the trainer takes it from the shards)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; ``d_model`` must be a multiple of it."""
    d_model: int = 256
    """Width of the residual stream."""
    max_seq_len: int = 1024
    """Longest sequence the rotary tables and KV caches cover."""
    ffn_mult: float = 8 / 3
    """SwiGLU hidden width as a multiple of d_model (8/3 keeps the parameter count of a 4x GELU MLP)."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    dropout: float = 0.0
    """Residual and attention dropout (0: none; training stays deterministic)."""
    video_start: int = 0
    """First video id of the token space (with ``video_levels``)."""
    video_levels: tuple[int, ...] = ()
    """FSQ levels of the video tokenizer: when set, a video id's input embedding adds a learned projection of
    its code's latent vector (``fsq_code_vectors``), so codes that look alike start alike (see Transformer)."""
    video_grid: tuple[int, ...] = ()
    """(h, w): one camera's code grid. When set, every video id of a frame adds a learned embedding of its cell
    (``robotok.policy.frame_stem.frame_layout``): rotary positions tell attention how far apart two tokens
    are, but an attended value carries no position, so without it the model can see a cup and not say where."""
    video_stem: int = 0
    """Channels of two 3x3 convolutions over each observed frame's grid of code vectors, added to its video
    ids' input embeddings (0: none; needs ``video_levels`` and ``video_grid``); ``frame_stem.FrameStem``."""
    prompt_film: int = 0
    """Width of a small encoder of the prompt's bytes whose output scales and shifts the stem's second layer
    (FiLM), so the stem compares each patch with what the prompt names (0: none; needs ``video_stem``)."""
    ground_head: bool = False
    """A linear read-out of the stem's output per cell of a lone frame, trained to mark the cell that holds what
    the prompt names (``Transformer.ground_logits``; robotok-train's pointing loss). Without ``keypoint`` it is
    training only: acting never calls it. Needs ``prompt_film``."""
    keypoint: bool = False
    """Hand the policy the place the prompt names as two numbers: per observed frame, the soft-argmax of the
    pointing read-out over its cells (each cell's centre moved by a learned sub-cell offset) is embedded with
    Fourier features and added to the frame's FRAME_CLOSE input (``FrameStem.keypoint``). A spatial soft-argmax
    (Levine et al. 2016) instead of a place the transformer must infer from which of 64 tokens carries the mark.
    Trained by the pointing loss (cell and sub-cell place) and the policy loss; needs ``ground_head``."""
    keypoint_effector: bool = False
    """With ``keypoint``: a second read-out points at the robot's effector (its grip) in each observed frame, and
    the policy is handed that place too, and the named place minus it: where the object lies from the gripper,
    in the image, which is what a reaching controller acts on. Trained on the scenes' effector pixel."""
    keypoint_cameras: int = 1
    """With ``keypoint``: the cameras of each observed frame whose places are read and handed over, from the first
    (2: the front and the wrist camera too, with an embedding of its own). The same read-outs point in every
    camera; the pointing loss teaches them on scenes of each (``robotok-record-scenes --camera``). A frame
    without that camera (another robot's) gets nothing for it."""
    prompt_context: bool = False
    """Add a projection of the prompt's encoding (the FiLM encoder's, ``FrameStem.encode_prompt``) to every input
    embedding, so each position holds what the prompt asks without attending back to its bytes: a route that
    decides the actions only at the intersection, a hundred positions after the prompt. Needs ``prompt_film``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "video_levels", tuple(int(v) for v in self.video_levels))
        object.__setattr__(self, "video_grid", tuple(int(v) for v in self.video_grid))
        if self.video_grid and (len(self.video_grid) != 2 or min(self.video_grid) < 1):
            raise ValueError(f"video_grid must be (h, w) of positive sizes, got {self.video_grid}")
        if self.video_stem and not (self.video_levels and self.video_grid):
            raise ValueError("video_stem needs video_levels and video_grid (the stem reads code vectors on the grid)")
        if self.prompt_film and not self.video_stem:
            raise ValueError("prompt_film conditions the frame stem: set video_stem too")
        if self.prompt_context and not self.prompt_film:
            raise ValueError("prompt_context adds the prompt encoder's output: set prompt_film too")
        if self.ground_head and not self.prompt_film:
            raise ValueError("ground_head reads the prompt-conditioned stem: set prompt_film too")
        if self.keypoint and not self.ground_head:
            raise ValueError("keypoint is the soft-argmax of the pointing read-out: set ground_head too")
        if self.keypoint_effector and not self.keypoint:
            raise ValueError("keypoint_effector adds a second keypoint: set keypoint too")
        if self.keypoint_cameras < 1 or (self.keypoint_cameras > 1 and not self.keypoint):
            raise ValueError(f"keypoint_cameras {self.keypoint_cameras}: >= 1, and > 1 reads keypoints: set keypoint")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model {self.d_model} must split into n_head {self.n_head} heads of even width")
        if min(self.vocab_size, self.n_layer, self.n_head, self.max_seq_len) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_hidden(self) -> int:
        return 64 * math.ceil(self.ffn_mult * self.d_model / 64)  # a multiple of 64 for fast matmuls


# Named presets, a plain dict. ``tiny`` is the CPU demo; small, base and large are for GPUs.
PRESETS: dict[str, ModelConfig] = {
    "micro": ModelConfig(n_layer=2, n_head=2, d_model=64, max_seq_len=256),  # tests and smoke runs
    "tiny": ModelConfig(n_layer=4, n_head=4, d_model=256),
    "small": ModelConfig(n_layer=6, n_head=6, d_model=384),
    "base": ModelConfig(n_layer=12, n_head=12, d_model=768, max_seq_len=2048),
    "large": ModelConfig(n_layer=24, n_head=16, d_model=1024, max_seq_len=2048),
}


def _no_observed_frame(observed: Tensor, open_before: Tensor | None) -> bool:
    """Whether cached decoding feeds ids of no observed frame (an action id, a predicted frame's ids): the frame
    stem's output and the keypoint are exactly zero there and the prompt's encoding is the one carried, so
    ``Transformer.embed`` skips computing them at each of a chunk's ~20 decoding steps. Never while tracing or
    compiling: a data-dependent branch would be baked into the graph."""
    if open_before is None or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False
    return not bool(observed.any())


def weighted_cross_entropy(
    logits: Tensor, targets: Tensor, weights: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy of logits [B, T, V] against targets [B, T], weighted per position (weights [B, T], 0 = ignore).

    ``reduction="mean"``: sum(w * ce) / sum(w); ``"sum"``: sum(w * ce) (the trainer normalises by the weight
    of the whole global batch, so that gradients do not depend on how it is split across ranks).
    Without weights every target counts, except negative ids.
    """
    assert logits.shape[:2] == targets.shape, f"logits {tuple(logits.shape)} vs targets {tuple(targets.shape)}"
    if weights is None:
        weights = (targets >= 0).float()
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().clamp_min(0), reduction="none")
    total = (ce * weights.flatten().float()).sum()
    if reduction == "sum":
        return total
    return total / weights.sum().float().clamp_min(1e-8)


def fsq_code_vectors(levels: tuple[int, ...]) -> Tensor:
    """float32 [prod(levels), len(levels)]: each FSQ code's latent vector in [-1, 1], in the mixed-radix id
    order of ``robotok.tokenizers.video.FSQ`` (id = sum_i k_i * prod_{j<i} L_j)."""
    lv = torch.tensor(levels, dtype=torch.int64)
    basis = torch.cumprod(torch.cat([lv.new_ones(1), lv[:-1]]), 0)
    ids = torch.arange(int(lv.prod()))[:, None]
    digits = torch.div(ids, basis, rounding_mode="floor") % lv
    return ((digits - lv // 2) / (lv // 2)).float()


class Transformer(nn.Module):
    """The decoder. Video ids (when ``cfg.video_levels`` is set) are embedded as ``tok_emb[id] +
    video_proj(code_vector(id))``: the video tokenizer's latent of a code says what its patch looks like
    (two codes of the same red cup sit close), which a table of independent rows learns only from how often
    each code occurs; small objects cover a few cells of a few frames, and their rare codes stayed unlearned."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.video_levels:
            vecs = fsq_code_vectors(cfg.video_levels)
            if cfg.video_start < 1 or cfg.video_start + len(vecs) > cfg.vocab_size:
                raise ValueError(
                    f"video ids [{cfg.video_start}, {cfg.video_start + len(vecs)}) lie outside the "
                    f"vocabulary of {cfg.vocab_size} ids; video_start must follow the special ids"
                )
            self.register_buffer("video_vecs", vecs, persistent=False)  # derived from cfg; not saved
            self.video_proj = nn.Linear(len(cfg.video_levels), cfg.d_model, bias=False)
        if cfg.video_grid:
            self.cell_emb = nn.Embedding(cfg.video_grid[0] * cfg.video_grid[1], cfg.d_model)
        self.stem = FrameStem(cfg) if cfg.video_stem else None
        if cfg.prompt_context:
            self.prompt_proj = nn.Linear(cfg.prompt_film, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived from cfg; not saved
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layer)."""
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            else:
                nn.init.ones_(p)
        if self.stem is not None:  # a CNN's own (Kaiming-uniform) initialisation, biases included
            self.stem.reset_parameters()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(
        self,
        idx: Tensor,
        pos0: Tensor | None = None,
        open_before: Tensor | None = None,
        cond_before: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Input embeddings [B, T, d] of ids [B, T] at positions pos0.. (see the class docstring), the
        ``open_after`` of ``frame_layout`` (None without ``video_grid``) and the prompt's encoding to carry
        (``FrameStem.encode_prompt``; None without ``prompt_film``)."""
        x = self.tok_emb(idx)
        vec = None
        if self.cfg.video_levels:
            n = self.video_vecs.shape[0]
            rel = idx - self.cfg.video_start
            is_video = ((rel >= 0) & (rel < n)).unsqueeze(-1).to(x.dtype)
            vec = self.video_vecs[rel.clamp(0, n - 1)].to(x.dtype) * is_video
            x = x + self.video_proj(vec)
        if not self.cfg.video_grid:
            return x, None, None
        pos0 = torch.zeros((), dtype=torch.long, device=idx.device) if pos0 is None else pos0
        cell, in_frame, observed, open_after, opened = frame_layout(idx, pos0, open_before, self.cfg.video_grid)
        x = x + self.cell_emb(cell) * in_frame.unsqueeze(-1).to(x.dtype)
        # a decoding step of action or predicted-frame ids (not the prompt's, at 0: its encoding is made below)
        if _no_observed_frame(observed, open_before) and (not self.cfg.prompt_film or int(pos0) > 0):
            return self._with_prompt(x, cond_before), open_after, cond_before if self.cfg.prompt_film else None
        cond = self.stem.encode_prompt(idx, pos0, cond_before) if self.cfg.prompt_film else None
        if self.stem is not None:
            stem = self.stem(vec, cell, observed, cond)
            x = x + stem.to(x.dtype)
            if self.cfg.keypoint:
                x = x + self.stem.keypoint(idx, stem, observed, opened, pos0).to(x.dtype)
        return self._with_prompt(x, cond), open_after, cond

    def _with_prompt(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """``x`` plus the projected prompt encoding at every position (``cfg.prompt_context``; else ``x``)."""
        if not self.cfg.prompt_context or cond is None:  # None: no encoding carried in, zeros as the stem takes it
            return x
        return x + self.prompt_proj(cond.to(self.prompt_proj.weight.dtype)).unsqueeze(1).to(x.dtype)

    def ground_logits(self, prompt: Tensor, video: Tensor) -> Tensor:
        """Which cell of a lone frame holds what the prompt names: logits [B, h*w] from ``prompt`` [B, P] ids
        (``BOS bytes SEP``, PAD after) and ``video`` [B, h*w] video ids (``cfg.ground_head``)."""
        return self.ground_point(prompt, video)[0][..., 0]

    def ground_point(self, prompt: Tensor, video: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits [B, h*w, K] of the pointing read-outs (K = 1, the named object; 2 with
        ``cfg.keypoint_effector``: then the effector) and, with ``cfg.keypoint``, their soft-argmax places
        [B, K, 2] (row, col in cells, the grid's corner at 0) that the policy is handed (None without)."""
        if not self.cfg.ground_head:
            raise ValueError("this model has no ground head (ModelConfig.ground_head)")
        vecs = self.video_vecs[video - self.cfg.video_start]
        return self.stem.point_logits(prompt, vecs)

    def _head(self, x: Tensor) -> Tensor:
        return F.linear(self.norm(x), self.tok_emb.weight)  # tied output embedding

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        weights: Tensor | None = None,
        select: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """idx, targets: [B, T] int64; weights: [B, T] float (0 = ignore). Returns (logits [B, T, V], loss | None).

        ``select`` (bool [B, T]): compute the head only at those positions and return logits [N, V] in
        ``x[select]`` order (the loss too). Training uses it for the positions that carry a loss: a policy
        sequence supervises ~40% of its positions, and the [T, V] head and softmax are then skipped for the rest.
        """
        b, t = idx.shape
        assert t <= self.cfg.max_seq_len, f"sequence length {t} > max_seq_len {self.cfg.max_seq_len}"
        x = self.drop(self.embed(idx)[0])
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for block in self.blocks:
            x = block(x, cos, sin)
        if select is not None:
            logits = self._head(x[select])
            if targets is None:
                return logits, None
            w = None if weights is None else weights[select][:, None]
            return logits, weighted_cross_entropy(logits[:, None], targets[select][:, None], w)
        logits = self._head(x)
        loss = None if targets is None else weighted_cross_entropy(logits, targets, weights)
        return logits, loss

    def _decode(
        self,
        idx: Tensor,
        pos: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        length: int | None,
        inplace: bool,
        open_before: Tensor | None = None,
        cond_before: Tensor | None = None,
        last: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        b, t = idx.shape
        positions = pos.reshape(()).to(torch.long) + torch.arange(t, device=idx.device)  # [T]
        length = k_cache.shape[3] if length is None else length
        mask = torch.arange(length, device=idx.device)[None, :] <= positions[:, None]  # [T, L]
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        x, open_after, cond = self.embed(idx, pos, open_before, cond_before)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, k_i, v_i = block.forward_kv(x, cos, sin, mask, positions, k_cache[i], v_cache[i], inplace)
            ks.append(k_i)
            vs.append(v_i)
        if not inplace:
            k_cache, v_cache = torch.stack(ks), torch.stack(vs)
        return self._head(x[:, -1:] if last else x), k_cache, v_cache, open_after, cond

    def forward_kv(
        self, idx: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, cond: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Pure incremental step: idx [B, T] at positions pos..pos+T-1 (pos: int64 scalar tensor).

        k_cache, v_cache: [n_layer, B, n_head, T_max, head_dim]; cond: the prompt's encoding from an earlier step
        (``cfg.prompt_film``; None: zeros). Returns (logits [B, T, V], new k, new v, new cond or None); the inputs
        are not modified. Static shapes throughout, for export as a decode graph. A frame's ids must come in one
        call with its FRAME_OPEN (the decode graph is fed whole observations; ``forward_cached`` carries an open
        frame across calls).
        """
        logits, k, v, _, cond = self._decode(idx, pos, k_cache, v_cache, None, False, None, cond)
        return logits, k, v, cond

    def new_cache(
        self,
        batch: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        max_len = self.cfg.max_seq_len if max_len is None else max_len
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} > max_seq_len {self.cfg.max_seq_len}")
        ref = self.tok_emb.weight
        shape = (self.cfg.n_layer, batch, self.cfg.n_head, max_len, self.cfg.head_dim)
        k = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)
        return KVCache(k, torch.zeros_like(k), 0)

    def forward_cached(self, idx: Tensor, cache: KVCache, last: bool = False) -> Tensor:
        """Append idx [B, T] to the cache (in place), advance it, and return logits [B, T, V]; with ``last``
        only the last position's, [B, 1, V] (what a decoding step reads: the head over a prefill is skipped)."""
        t = idx.shape[1]
        if idx.shape[0] != cache.k.shape[1]:
            raise ValueError(f"batch {idx.shape[0]} != cache batch {cache.k.shape[1]}")
        if cache.pos + t > cache.max_len:
            raise ValueError(f"cache full: position {cache.pos} + {t} tokens > {cache.max_len}")
        pos = torch.tensor(cache.pos, device=idx.device)
        logits, _, _, open_after, cond = self._decode(
            idx, pos, cache.k, cache.v, cache.pos + t, True, cache.frame_open, cache.cond, last
        )
        if open_after is not None:
            cache.frame_open = open_after
        cache.cond = cond
        cache.pos += t
        return logits


def config_from_dict(d: dict) -> ModelConfig:
    return ModelConfig(**{k: v for k, v in d.items() if k in ModelConfig.__dataclass_fields__})


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


if __name__ == "__main__":
    for name, c in PRESETS.items():
        with torch.device("meta"):
            n = Transformer(c).num_params()
        print(f"{name:6s} {n / 1e6:7.2f}M params  {asdict(c)}")
