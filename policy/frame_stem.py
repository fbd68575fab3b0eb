"""The frame inputs of the policy transformer: where each video id sits in its frame, a small CNN over the
observed frames' code vectors, conditioned on the prompt, and the place in each observed frame that the CNN's
pointing read-outs mark: the named object and the robot's effector (``ModelConfig.video_grid``, ``video_stem``,
``prompt_film``, ``ground_head``, ``keypoint`` and ``keypoint_effector`` in ``robotok.policy.model``).

Video ids stay the stream's tokens: everything here only adds to their input embeddings, and is written as
gathers and masked reductions along the sequence (no loops, static shapes), so that the same code runs in
training, in a KV-cache step and in the exported decode graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from robotok.tokenizers.space import ACT_CLOSE, FRAME_CLOSE, FRAME_OPEN, SEP, SPECIAL, TEXT_SIZE

KEYPOINT_OCTAVES = 4  # Fourier features of the keypoint at 1, 2, 4 and 8 periods across the frame

if TYPE_CHECKING:
    from robotok.policy.model import ModelConfig


def frame_layout(
    idx: Tensor, pos0: Tensor, open_before: Tensor | None, grid: tuple[int, ...]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Where the frames are in ids [B, T] that start at position ``pos0`` (int64 scalar tensor).

    ``open_before`` ([B], -1: none): the position of a FRAME_OPEN before ``pos0`` whose frame is still open.
    Returns ``cell`` [B, T] (each id's cell in its camera's grid, row-major), ``in_frame`` [B, T] (ids
    between a FRAME_OPEN and its FRAME_CLOSE), ``observed`` [B, T] (those of frames that open in these ids
    and do not follow ACT_CLOSE: observed frames, fed whole; a predicted frame follows ACT_CLOSE) and the
    ``open_after`` [B] to carry to the next step, and ``opened`` [B, T] (the position of the latest FRAME_OPEN at
    or before each id, -1: none). Static shapes and no loops, for the exported graph."""
    b, t = idx.shape
    ar = torch.arange(t, device=idx.device)
    positions = pos0.reshape(()).to(torch.long) + ar
    causal = (ar[:, None] >= ar[None, :]).unsqueeze(0)  # [1, T, T]: j <= i

    def last(token: int) -> Tensor:  # [B, T]: position of the latest `token` at or before each id, or -1
        at = torch.where(idx == token, positions, torch.full_like(idx, -1))
        return torch.where(causal, at[:, None, :], torch.full_like(at[:, None, :], -1)).amax(-1)

    opened, closed = last(FRAME_OPEN), last(FRAME_CLOSE)
    if open_before is not None:
        opened = torch.maximum(opened, open_before.to(opened.device)[:, None])
    in_frame = (opened >= 0) & (opened > closed) & (positions > opened)
    h, w = grid
    cell = torch.where(in_frame, (positions - opened - 1) % (h * w), torch.zeros_like(opened))
    before = opened - positions[0] - 1  # index of the id before the frame's FRAME_OPEN in these ids
    prev = torch.gather(idx, 1, before.clamp(0, t - 1))
    observed = in_frame & (opened >= positions[0]) & ((before < 0) | (prev != ACT_CLOSE))
    open_after = torch.where(opened[:, -1] > closed[:, -1], opened[:, -1], torch.full_like(opened[:, -1], -1))
    return cell, in_frame, observed, open_after, opened


def _soft(logits: Tensor, dim: int) -> Tensor:
    """fp32 softmax over ``dim``, cells more than 30 nats below the best given exactly 0: a confident read-out
    otherwise fills the soft-argmax with subnormal floats, which made CPU training steps 2x slower."""
    z = logits.float()
    z = (z - z.amax(dim, keepdim=True).detach()).clamp(min=-30.0)
    return torch.where(z > -30.0, torch.softmax(z, dim), torch.zeros_like(z))


class FrameStem(nn.Module):
    """Two 3x3 convolutions over a frame's grid of code vectors (zero padding), then a projection to the width.

    What a patch means depends on its neighbours (a cup's rim and body are different codes); a small CNN
    reads that before the transformer does, as RT-1 and ACT put an image encoder in front of theirs. The video
    ids stay the stream's tokens: the stem only adds to their input embeddings. It sees observed frames only
    (``frame_layout``): a predicted frame's later cells would leak into its earlier ones.

    With ``prompt_film`` the second layer is scaled and shifted by the prompt (FiLM, Perez et al. 2018, as RT-1
    conditions its image encoder on the instruction): a byte embedding, a width-3 convolution over the prompt
    (byte trigrams: "red", "lef") and a max over the prompt give a vector whose features fire on the words
    that matter wherever they stand; a zero-initialised layer maps it to the scale and shift, so the stem
    starts unconditioned. The comparison of a colour word with each patch then happens before attention,
    where one layer can do it, instead of being composed across two attention hops."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        (self.h, self.w), c, d_code = cfg.video_grid, cfg.video_stem, len(cfg.video_levels)
        self.c1, self.c2 = nn.Linear(9 * d_code, c), nn.Linear(9 * c, c)
        self.out = nn.Linear(c, cfg.d_model, bias=False)
        self.text_start, p = len(SPECIAL), cfg.prompt_film
        if p:
            self.byte_emb = nn.Embedding(TEXT_SIZE, 32)
            self.prompt_conv = nn.Conv1d(32, p, 3, padding=1)
            self.film = nn.Linear(p, 2 * c)
        if cfg.ground_head:  # the pointing read-out (ModelConfig.ground_head): one logit per cell
            self.point = nn.Linear(cfg.d_model, 1, bias=False)  # a softmax over cells ignores a shared bias
        self.k = 2 if cfg.keypoint_effector else 1  # read-outs: the named object, the robot's effector
        if cfg.keypoint_effector:
            self.point_effector = nn.Linear(cfg.d_model, 1, bias=False)
        if cfg.keypoint:  # ModelConfig.keypoint: each cell's sub-cell place, and the embedding of the soft-argmax
            self.offset = nn.Linear(cfg.d_model, 2 * self.k)
            places = 3 if self.k == 2 else 1  # with the effector: the object, the effector, the one from the other
            self.kp_proj = nn.Linear(places * (2 + 4 * KEYPOINT_OCTAVES), cfg.d_model, bias=False)
            # the places read in the frame's further cameras (ModelConfig.keypoint_cameras), each embedded apart
            self.kp_proj_cams = nn.ModuleList(
                nn.Linear(places * (2 + 4 * KEYPOINT_OCTAVES), cfg.d_model, bias=False)
                for _ in range(cfg.keypoint_cameras - 1)
            )
            r, q = torch.meshgrid(torch.arange(self.h), torch.arange(self.w), indexing="ij")
            centre = torch.stack([r, q], -1).reshape(-1, 2).float() + 0.5
            self.register_buffer("centre", centre, persistent=False)  # [h*w, 2] row, col in cells
            freqs = torch.pi * 2.0 ** torch.arange(KEYPOINT_OCTAVES).float()
            self.register_buffer("freqs", freqs, persistent=False)
        offsets = [(dr, dq) for dr in (-1, 0, 1) for dq in (-1, 0, 1)]
        self.register_buffer("dr", torch.tensor([o[0] for o in offsets]), persistent=False)
        self.register_buffer("dq", torch.tensor([o[1] for o in offsets]), persistent=False)

    def reset_parameters(self) -> None:
        for m in (self.c1, self.c2, self.out):
            m.reset_parameters()
        if hasattr(self, "film"):
            self.byte_emb.reset_parameters()
            self.prompt_conv.reset_parameters()
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        if hasattr(self, "point"):
            self.point.reset_parameters()
        if hasattr(self, "point_effector"):
            self.point_effector.reset_parameters()
        if hasattr(self, "offset"):
            nn.init.zeros_(self.offset.weight)  # every cell's place starts at its centre
            nn.init.zeros_(self.offset.bias)
            self.kp_proj.reset_parameters()
            for proj in self.kp_proj_cams:
                proj.reset_parameters()

    def encode_prompt(self, idx: Tensor, pos0: Tensor, cond_before: Tensor | None) -> Tensor:
        """[B, prompt_film]: the encoding of the prompt, the text ids before the first SEP of ids that start the
        sequence (``pos0`` 0: the grammar puts ``BOS prompt SEP`` first, and it is fed in one call); ids that
        start later carry ``cond_before`` (zeros when None). No later id can change how an earlier frame is read."""
        first = pos0.reshape(()) == 0
        before_sep = torch.cumsum((idx == SEP).long(), 1) == 0
        is_text = (idx >= self.text_start) & (idx < self.text_start + TEXT_SIZE) & before_sep & first
        e = self.byte_emb((idx - self.text_start).clamp(0, TEXT_SIZE - 1)) * is_text.unsqueeze(-1)
        h = F.relu(self.prompt_conv(e.transpose(1, 2).to(self.prompt_conv.weight.dtype)))  # [B, p, T]
        pooled = torch.where(is_text.unsqueeze(1), h, torch.zeros_like(h)).amax(-1)  # ReLU >= 0: 0 is neutral
        before = torch.zeros_like(pooled) if cond_before is None else cond_before.to(pooled)
        return torch.where(first, pooled, before)

    def point_logits(self, prompt: Tensor, video_vecs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits [B, h*w, K] of which cell of a lone frame holds what the prompt names (and, K = 2, the robot's
        effector): ``prompt`` [B, P] ids (``BOS bytes SEP``, anything after), ``video_vecs`` [B, h*w, d_code] the
        frame's code vectors, row-major. With ``keypoint`` also the soft-argmax places [B, K, 2] (row, col in
        cells) that ``keypoint`` embeds; else None. What the pointing loss trains."""
        b, n = video_vecs.shape[:2]
        cond = self.encode_prompt(prompt, torch.zeros((), dtype=torch.long, device=prompt.device), None)
        cell = torch.arange(n, device=prompt.device).expand(b, n)
        out = self(video_vecs, cell, torch.ones_like(cell, dtype=torch.bool), cond)
        logits = self._logits(out)
        if not hasattr(self, "offset"):
            return logits, None
        places = self.centre[:, None] + self._offsets(out)  # [B, h*w, K, 2]
        return logits, (_soft(logits, 1).unsqueeze(-1) * places).sum(1)

    def _logits(self, out: Tensor) -> Tensor:
        """[..., K]: the read-outs' logits (the named object; the effector with ``keypoint_effector``)."""
        if self.k == 1:
            return self.point(out)
        return torch.cat([self.point(out), self.point_effector(out)], -1)

    def _offsets(self, out: Tensor) -> Tensor:
        """[..., K, 2] fp32: how far each cell's point lies from the cell's centre (at most half a cell each way)."""
        return 0.5 * torch.tanh(self.offset(out).float()).unflatten(-1, (self.k, 2))

    def keypoint(self, idx: Tensor, out: Tensor, observed: Tensor, opened: Tensor, pos0: Tensor) -> Tensor:
        """[B, T, d_model]: at each FRAME_CLOSE that ends a whole observed frame of ``idx`` [B, T], the embedding of
        the soft-argmax place (``point_logits``) over that frame's first camera, from the stem's output ``out``
        [B, T, d_model], plus, with ``keypoint_cameras`` > 1, those over its next cameras; zero elsewhere.
        ``opened`` [B, T] (``frame_layout``): the position of the latest FRAME_OPEN; the h*w ids after it are the
        first camera's cells in order (the grammar's layout), the one the front-camera scenes show, then the next
        camera's h*w, and so on. A camera the frame does not have (fewer cells before FRAME_CLOSE) adds nothing."""
        b, t = idx.shape
        n, k = self.h * self.w, self.k
        logits_all, offsets_all = self._logits(out).float(), self._offsets(out).flatten(2)
        total = torch.zeros((b, t, out.shape[-1]), dtype=out.dtype, device=out.device)
        for cam, proj in enumerate([self.kp_proj, *self.kp_proj_cams]):
            first = opened - pos0.reshape(()).to(torch.long) + 1 + cam * n  # [B, T]: this camera's first cell
            j = first.unsqueeze(-1) + torch.arange(n, device=idx.device)
            jc = j.clamp(0, t - 1).view(b, t * n)  # [B, T*n]: the i-th of them is cell i
            whole = (torch.gather(observed, 1, jc).view(b, t, n) & (j >= 0) & (j < t)).all(-1)
            close = (idx == FRAME_CLOSE) & whole
            logits = torch.gather(logits_all, 1, jc.unsqueeze(-1).expand(b, t * n, k)).view(b, t, n, k)
            offsets = torch.gather(offsets_all, 1, jc.unsqueeze(-1).expand(b, t * n, 2 * k))
            places = self.centre[:, None] + offsets.view(b, t, n, k, 2)  # [B, T, n, K, 2]
            place = (_soft(logits, 2).unsqueeze(-1) * places).sum(2)  # [B, T, K, 2] in cells
            total = total + self.embed_place(place, proj) * close.unsqueeze(-1).to(out.dtype)
        return total

    def embed_place(self, place: Tensor, proj: nn.Linear | None = None) -> Tensor:
        """[..., d_model]: the input embedding of the places [..., K, 2] (row, col in cells): each scaled to
        [-1, 1] across the frame (with K = 2 also the first minus the second) and their sines and cosines at 1,
        2, 4 and 8 periods, projected to the width."""
        u = place.float() / self.centre.new_tensor([self.h, self.w]) * 2 - 1  # [..., K, 2]
        if self.k == 2:
            u = torch.cat([u, (u[..., :1, :] - u[..., 1:, :])], -2)
        ang = u.unsqueeze(-1) * self.freqs  # [..., P, 2, octaves]
        feats = torch.cat([u, ang.sin().flatten(-2), ang.cos().flatten(-2)], -1).flatten(-2)
        proj = self.kp_proj if proj is None else proj  # the first camera's, or a further camera's
        return proj(feats.to(proj.weight.dtype))

    def _conv(self, x: Tensor, layer: nn.Linear, index: Tensor, valid: Tensor) -> Tensor:
        b, t, c = x.shape
        g = torch.gather(x, 1, index.reshape(1, t * 9, 1).expand(b, t * 9, c)).view(b, t, 9, c)
        return layer((g * valid.unsqueeze(-1).to(g.dtype)).flatten(2))

    def forward(self, vecs: Tensor, cell: Tensor, on: Tensor, cond: Tensor | None = None) -> Tensor:
        """vecs [B, T, d_code] (zero off frames), cell [B, T] (cell within the camera), on [B, T] bool (ids of
        whole observed frames), cond [B, prompt_film] (``encode_prompt``). Returns [B, T, d_model], zero where
        not ``on``."""
        b, t = cell.shape
        r, q = torch.div(cell, self.w, rounding_mode="floor"), cell % self.w
        nr, nq = r.unsqueeze(-1) + self.dr, q.unsqueeze(-1) + self.dq  # [B, T, 9]
        ar = torch.arange(t, device=cell.device)
        index = ar[None, :, None] + self.dr * self.w + self.dq
        valid = on.unsqueeze(-1) & (nr >= 0) & (nr < self.h) & (nq >= 0) & (nq < self.w) & (index >= 0) & (index < t)
        index = index.clamp(0, t - 1)  # [1, T, 9]: the same offsets for every row
        mask = on.unsqueeze(-1).to(vecs.dtype)
        hid = F.relu(self._conv(vecs * mask, self.c1, index, valid)) * mask
        hid = self._conv(hid, self.c2, index, valid)
        if cond is not None:
            gamma, beta = self.film(cond.to(hid.dtype)).unsqueeze(1).chunk(2, -1)
            hid = hid * (1 + gamma) + beta
        return self.out(F.relu(hid)) * mask
