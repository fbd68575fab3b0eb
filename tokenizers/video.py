"""Video tokenizer: a small convolutional autoencoder with a finite scalar quantisation (FSQ) bottleneck.

A camera frame [H, W, 3] uint8 becomes a grid of (H/f) x (W/f) integer ids, f the spatial down-sampling
factor (8 by default: a 64x64 frame -> 8x8 = 64 tokens); each id is one of prod(levels) codes
(8*5*5*5 = 1000 by default). FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple",
arXiv:2309.15505) rounds each of len(levels) bounded channels to a few values, so every code is reachable
and no codebook collapse, commitment loss or EMA update is needed. The FSQ index maths follows
lucidrains/vector-quantize-pytorch (`codes_to_indices` / `indices_to_codes`, an exact inverse pair).

The network is built for CPU training speed: stride-2 convolutions down, pixel-shuffle up, a few residual
blocks with batch norm (a fixed affine map at inference).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class VideoTokenizerConfig:
    """Architecture of a video tokenizer; saved as JSON next to its weights."""

    image_size: tuple[int, int] = (64, 64)
    """(height, width) of the frames the tokenizer encodes; each must divide by `downsample`."""
    downsample: int = 8
    """Spatial down-sampling factor, a power of two: 8 gives 8x8 = 64 tokens for a 64x64 frame, 16 gives 4x4."""
    levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels per latent channel; the codebook has prod(levels) codes (default 1000)."""
    channels: tuple[int, ...] = (32, 64, 96)
    """Conv widths per resolution stage, from the finest (after the first stride-2 conv) to the coarsest;
    padded with its last entry (or cut) to log2(downsample) stages."""
    res_blocks: int = 1
    """Residual blocks per stage in the encoder and in the decoder."""
    norm: bool = True
    """Batch norm in the residual blocks: about +0.4 dB at equal CPU time on the sim renders (a fixed affine
    map at inference, so the exported encoder stays plain convolutions)."""

    def __post_init__(self) -> None:
        self.image_size = tuple(int(s) for s in self.image_size)
        self.levels = tuple(int(v) for v in self.levels)
        self.channels = tuple(int(c) for c in self.channels)
        d = self.downsample
        if d < 2 or d & (d - 1):
            raise ValueError(f"downsample must be a power of two >= 2, got {d}")
        if len(self.image_size) != 2 or any(s <= 0 or s % d for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be two positive sizes divisible by downsample={d}")
        if not self.levels or any(v < 2 for v in self.levels):
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {self.levels}")
        if not self.channels or any(c <= 0 for c in self.channels) or self.res_blocks < 0:
            raise ValueError(f"bad channels={self.channels} or res_blocks={self.res_blocks}")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        n = int(math.log2(self.downsample))
        return tuple(self.channels[min(i, len(self.channels) - 1)] for i in range(n))


class FSQ(nn.Module):
    """Finite scalar quantiser: z[B, d, h, w] -> codes on the grid {(k - L//2) / (L//2)} per channel."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        lv = torch.tensor(levels, dtype=torch.int64)
        self.register_buffer("levels", lv, persistent=False)
        # Mixed-radix basis: id = sum_i k_i * prod_{j<i} L_j.
        self.register_buffer("basis", torch.cumprod(torch.cat([lv.new_ones(1), lv[:-1]]), 0), persistent=False)
        self.codebook_size = int(lv.prod())

    def _view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.view(-1, *([1] * (ndim - 2))) if ndim > 1 else t  # per-channel constant along dim 1

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash z so that rounding gives exactly L values per channel (even L: shifted by a half)."""
        lv = self._view(self.levels, z.ndim).to(z.dtype)
        eps = 1e-3
        half_l = (lv - 1) * (1 + eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z[B, d, h, w] float -> codes[B, d, h, w] in [-1, 1], rounded with a straight-through gradient."""
        assert z.shape[1] == len(self.levels), f"expected {len(self.levels)} latent channels, got {tuple(z.shape)}"
        b = self.bound(z.float())
        q = b + (torch.round(b) - b).detach()
        return q / self._view(self.levels // 2, z.ndim).float()

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """codes[B, d, h, w] on the FSQ grid -> ids[B, h, w] int64 (exact inverse of `indices_to_codes`)."""
        half = self._view(self.levels // 2, codes.ndim).float()
        digits = torch.round(codes.float() * half + half).to(torch.int64)  # [B, d, h, w] in [0, L-1]
        return (digits * self._view(self.basis, codes.ndim)).sum(dim=1)

    def indices_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """ids[B, h, w] int -> codes[B, d, h, w] float32."""
        ids = ids.to(torch.int64).unsqueeze(1)  # [B, 1, h, w]
        ndim = ids.ndim
        digits = torch.div(ids, self._view(self.basis, ndim), rounding_mode="floor") % self._view(self.levels, ndim)
        half = self._view(self.levels // 2, ndim)
        return (digits - half).float() / half.float()


class ResBlock(nn.Module):
    """x + conv(silu(bn(conv(silu(bn(x)))))); the second conv starts at zero: each block starts as the identity."""

    def __init__(self, ch: int, norm: bool = False) -> None:
        super().__init__()
        self.n1 = nn.BatchNorm2d(ch) if norm else nn.Identity()
        self.n2 = nn.BatchNorm2d(ch) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.n2(self.conv1(F.silu(self.n1(x))))))


class Upsample2x(nn.Module):
    """Sub-pixel convolution: conv to 4x the channels, then depth-to-space (cheaper than a transposed conv)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.conv(x), "b (c p1 p2) h w -> b c (h p1) (w p2)", p1=2, p2=2)


class Encoder(nn.Module):
    """frames[B, 3, H, W] in [0, 1] -> latents[B, d, H/f, W/f] (pre-quantisation)."""

    def __init__(self, cfg: VideoTokenizerConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for ch in cfg.stage_channels:
            if layers:
                layers.append(nn.SiLU())
            layers.append(nn.Conv2d(cin, ch, 3, stride=2, padding=1))
            layers += [ResBlock(ch, cfg.norm) for _ in range(cfg.res_blocks)]
            cin = ch
        layers += [nn.SiLU(), nn.Conv2d(cin, len(cfg.levels), 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


class Decoder(nn.Module):
    """codes[B, d, h, w] -> frames[B, 3, h*f, w*f] (unclamped; ~[0, 1])."""

    def __init__(self, cfg: VideoTokenizerConfig) -> None:
        super().__init__()
        chans = cfg.stage_channels[::-1]  # coarsest first
        layers: list[nn.Module] = [nn.Conv2d(len(cfg.levels), chans[0], 3, padding=1)]
        for i, ch in enumerate(chans):
            layers += [ResBlock(ch, cfg.norm) for _ in range(cfg.res_blocks)]
            layers.append(nn.SiLU())
            layers.append(Upsample2x(ch, chans[i + 1] if i + 1 < len(chans) else 3))
        self.net = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes) * 0.5 + 0.5


class VideoAutoencoder(nn.Module):
    """Encoder -> FSQ -> decoder; `forward(x[B, 3, H, W] in [0, 1]) -> recon[B, 3, H, W]` for training."""

    def __init__(self, cfg: VideoTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.fsq = FSQ(cfg.levels)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fsq(self.encoder(x)))

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """x[B, 3, H, W] float in [0, 1] -> ids[B, H/f, W/f] int64."""
        return self.fsq.codes_to_indices(self.fsq(self.encoder(x)))

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids[B, h, w] -> frames[B, 3, H, W] float, clamped to [0, 1]."""
        return self.decoder(self.fsq.indices_to_codes(ids)).clamp(0, 1)


class EncoderToIds(nn.Module):
    """Export wrapper: float frames[B, 3, H, W] in [0, 1] -> ids[B, h, w] int64."""

    def __init__(self, model: VideoAutoencoder) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.fsq = model.fsq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fsq.codes_to_indices(self.fsq(self.encoder(x)))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass
class VideoTokenizer:
    """Frames <-> token ids. CPU by default; `device` moves the network (e.g. "cuda")."""

    cfg: VideoTokenizerConfig = field(default_factory=VideoTokenizerConfig)
    model: VideoAutoencoder | None = None
    device: str = "cpu"
    batch_size: int = 64
    """Frames per forward pass inside encode/decode (bounds memory on long inputs)."""

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = VideoAutoencoder(self.cfg)
        self.model.to(self.device).eval()

    @property
    def vocab_size(self) -> int:
        return self.model.fsq.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the token grid of one frame."""
        h, w = self.cfg.image_size
        return h // self.cfg.downsample, w // self.cfg.downsample

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def bits_per_frame(self) -> float:
        return self.tokens_per_frame * math.log2(self.vocab_size)

    def _check_frames(self, frames: np.ndarray) -> None:
        h, w = self.cfg.image_size
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be a uint8 numpy array [B, {h}, {w}, 3], got {type(frames).__name__} "
                f"of dtype {getattr(frames, 'dtype', None)}"
            )
        if frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
            raise ValueError(f"frames must have shape [B, {h}, {w}, 3], got {frames.shape}")

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """frames[B, H, W, 3] uint8 -> ids[B, h, w] int64."""
        self._check_frames(frames)
        out = []
        for i in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(frames[i : i + self.batch_size]).to(self.device)
            x = rearrange(x, "b h w c -> b c h w").float() / 255.0
            out.append(self.model.encode_ids(x).cpu())
        gh, gw = self.grid
        return torch.cat(out).numpy() if out else np.zeros((0, gh, gw), np.int64)

    @torch.inference_mode()
    def decode(self, ids: np.ndarray) -> np.ndarray:
        """ids[B, h, w] integers in [0, vocab_size) -> frames[B, H, W, 3] uint8."""
        ids = np.asarray(ids)
        gh, gw = self.grid
        if ids.ndim != 3 or ids.shape[1:] != (gh, gw) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be an integer array [B, {gh}, {gw}], got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got range [{ids.min()}, {ids.max()}]")
        out = []
        for i in range(0, len(ids), self.batch_size):
            t = torch.from_numpy(ids[i : i + self.batch_size].astype(np.int64)).to(self.device)
            x = self.model.decode_ids(t)
            out.append((rearrange(x, "b c h w -> b h w c") * 255.0).round().to(torch.uint8).cpu())
        h, w = self.cfg.image_size
        return torch.cat(out).numpy() if out else np.zeros((0, h, w, 3), np.uint8)

    def encoder_module(self) -> nn.Module:
        """An nn.Module float frames[B, 3, H, W] in [0, 1] -> ids[B, h, w] int64, in eval mode, for ONNX export."""
        return EncoderToIds(self.model).eval()

    def save(self, out_dir: str | Path) -> None:
        """Write config.json and model.safetensors into `out_dir` (each file atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{WEIGHTS_FILE}.")
        os.close(fd)
        save_file(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, out / WEIGHTS_FILE)
        meta = {"kind": "fsq_conv_autoencoder", "config": asdict(self.cfg)}
        _atomic_write_bytes(out / CONFIG_FILE, (json.dumps(meta, indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> VideoTokenizer:
        """Load a tokenizer saved by `save` (or a training output dir)."""
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no video tokenizer ({CONFIG_FILE} + {WEIGHTS_FILE} expected)")
        meta = json.loads((path / CONFIG_FILE).read_text())
        cfg = VideoTokenizerConfig(**meta["config"])
        model = VideoAutoencoder(cfg)
        model.load_state_dict(load_file(path / WEIGHTS_FILE))
        return cls(cfg=cfg, model=model, device=device)
