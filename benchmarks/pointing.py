"""Can a model learn, from video tokens and a prompt, where the named cup is? The policy's transformer against a
small language-conditioned CNN on the same tokens, by the number of training scenes.

    python benchmarks/pointing.py --tokenizer runs/demo/tokenizers/video --scenes 500 20000

PickCup's policy has to turn a colour word and 64 code ids into a place on the table. Whole policy runs take
20 to 40 minutes and their success sits near 0%, so they say little about which part fails. This isolates the
part: each model sees the prompt and the first frame of a PickCup scene (the arm at home, every cup in view),
tokenised by the demo's video tokenizer, and is trained with a cross-entropy loss to name the cell of an 8x8
grid over the cup area that holds the named cup; on held-out scenes the cup nearest the predicted cell's centre
must be the named one (chance is the mean of one over the number of cups). "Near a cup" counts predictions
within 6 cm of any cup's centre: finding cups at all, whatever their colour.

- ``transformer``: ``robotok.policy.model.Transformer`` (``--preset``, default the demo's ``tiny``), reading
  ``BOS prompt SEP FRAME_OPEN video FRAME_CLOSE ACT_OPEN`` in the policy's token space and predicting the cell at
  ``ACT_OPEN`` with a linear head: the policy's own architecture, embeddings and all.
- ``cnn``: the baseline in the same run, three 3x3 convolutions over the 8x8 grid of the same codes' latent
  vectors, the prompt's colour word modulating the middle one (FiLM, as in RT-1), and a linear read-out of
  the whole grid. It is told the colour word as one of seven ids, not the prompt's bytes.

Candidate inputs for the transformer (``--stem``, ``--trunk``, ``--film``; ``--condition`` says whether they
see the colour id or the prompt's bytes), the policy's own frame inputs (``--model-stem``, ``--model-film``)
with its pointing pre-training (``--stem-pretrain``), and ``--attention kernel`` (torch's bf16 attention kernel
instead of the model's fp32 one) are what the README's tables compare.

Scenes are rendered fresh (about 2 ms each) from seeds disjoint from the demo's demonstrations (from 0) and
evaluation (from 100,000): training from ``--seed-start``, held-out from ``--test-seed-start``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

import robotok.policy.layers
import robotok.sim_envs  # noqa: F401  (registers the env ids)
from robotok.policy.ground import pixel_cells
from robotok.policy.model import Transformer, fsq_code_vectors, preset
from robotok.sim_envs.pick_cup import CUP_AREA_HI, CUP_AREA_LO, CUP_COLORS
from robotok.tokenizers.space import ACT_OPEN, ActionRange, TokenSpace
from robotok.tokenizers.video import VideoTokenizer

GRID = 8  # cells per side of the grid over the cup area
MARGIN = 0.03  # m around the area where cup centres are drawn
LO, HI = np.asarray(CUP_AREA_LO) - MARGIN, np.asarray(CUP_AREA_HI) + MARGIN
COLORS = list(CUP_COLORS)
NEAR = 0.06  # m: a prediction this close to some cup "finds a cup"


@dataclass
class BenchConfig:
    """Train the policy's transformer and a FiLM CNN to point at the named cup; report held-out accuracy."""

    tokenizer: Path = Path("runs/demo/tokenizers/video")
    """Directory written by robotok-train-video-tokenizer (its front camera frames are 64x64 by default)."""
    scenes: list[int] = field(default_factory=lambda: [500, 20000])
    """Training-set sizes to compare (distinct scenes; each is its own run)."""
    models: list[str] = field(default_factory=lambda: ["transformer", "cnn"])
    """Which models to train: transformer, cnn."""
    steps: int = 1000
    """Optimiser steps per run (the demo trains its policy 2,500 steps on both tasks)."""
    batch_size: int = 32
    lr: float = 1e-3
    """Peak learning rate (the demo's), 100 warm-up steps, cosine decay to zero."""
    preset: str = "tiny"
    """robotok.policy.model preset of the transformer."""
    stem: bool = False
    """Add to each video token's input embedding two 3x3 convolutions over the frame's code-vector grid and a
    learned embedding of its cell (a candidate input for the policy; not in robotok.policy)."""
    film: bool = False
    """Scale and shift each video token's input embedding by an MLP of the condition (zero-initialised, so that
    it starts as the identity): the colour-to-patch comparison the CNN gets from its FiLM layer."""
    trunk: bool = False
    """Add to each video token's input embedding the CNN baseline's layers (two 3x3 convolutions over the frame's
    code-vector grid, FiLM by the condition, a third convolution to the model width) and a learned embedding of
    its cell: the CNN's reading of the tokens, with the transformer in place of its linear read-out. Unlike
    ``FiLMCNN`` its FiLM scales by 1 + gamma (near the identity at the start) and the third convolution's output
    goes to the transformer without a ReLU; ``FiLMCNN`` stays as its recorded results were measured."""
    model_stem: int = 0
    """``ModelConfig.video_stem`` (with the cell embedding, ``video_grid``): the policy's own frame stem, as
    ``robotok-train`` builds it (0: off)."""
    model_film: int = 0
    """``ModelConfig.prompt_film``: the policy's own prompt encoder conditioning that stem (needs --model-stem)."""
    stem_pretrain: int = 0
    """Steps of training the policy's own stem alone with its pointing read-out (``Transformer.ground_logits``,
    robotok-train's pointing loss; needs --model-stem and --model-film) to mark the cell of the camera's grid that
    holds the named cup, before the transformer trains; its own held-out figures are the ``stem`` row."""
    condition: str = "prompt"
    """What ``--film`` and ``--trunk`` are conditioned on: ``prompt`` (the mean input embedding of the prompt's
    bytes, through an MLP: what a policy has) or ``color`` (the colour word as one of seven ids, as the CNN)."""
    test_scenes: int = 1000
    seed_start: int = 1_000_000
    test_seed_start: int = 500_000
    dtype: str = "bf16"
    """Autocast dtype of training and scoring: bf16 (the trainer's choice on CPUs that multiply bf16) or fp32."""
    seed: int = 0
    """Seed of the models' initialisation and of the batch order."""
    attention: str = "fp32"
    """``fp32``: the model's own attention (``robotok.policy.layers.attend``: fp32 on the CPU under bf16 autocast);
    ``kernel``: torch's bf16 kernel under bf16 autocast, what the model used before, for comparison."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    out: Path = Path("")
    """Optional JSON file for the figures."""


def render_scenes(start: int, n: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """First front frames of n PickCup scenes, with each scene's prompt, colour id, cup centres and target."""
    env = gym.make("robotok/PickCup-v0", width=size[1], height=size[0])
    u = env.unwrapped
    frames = np.zeros((n, *size, 3), np.uint8)
    cups = np.full((n, 4, 2), np.nan, np.float32)
    pix = np.full((n, 4, 2), np.nan, np.float32)
    target, color, prompts = np.zeros(n, np.int64), np.zeros(n, np.int64), []
    for i in range(n):
        obs, info = env.reset(seed=start + i)
        frames[i] = obs["pixels"]["front"]
        xy = u.cup_positions()[:, :2]
        cups[i, : len(xy)] = xy
        pix[i, : len(xy)] = [u.project(c + np.array([0.0, 0.0, 0.02])) for c in u.cup_positions()]
        target[i], color[i] = u.target_index, COLORS.index(u.target_color)
        prompts.append(info["prompt"])
        if not re.search(rf"\b{u.target_color}\b", info["prompt"]):
            raise RuntimeError(f"scene {start + i}: prompt {info['prompt']!r} does not name {u.target_color}")
    env.close()
    return {
        "frames": frames,
        "cups": cups,
        "pix": pix,
        "target": target,
        "color": color,
        "prompts": np.asarray(prompts),
    }


def cell_of(xy: np.ndarray) -> np.ndarray:
    """Grid cell index (row-major over x then y) of table points [..., 2]."""
    ij = np.clip(((xy - LO) / (HI - LO) * GRID).astype(np.int64), 0, GRID - 1)
    return ij[..., 0] * GRID + ij[..., 1]


def score(pred: np.ndarray, cups: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Held-out figures of predicted cells: named cup nearest, some cup within NEAR, and chance."""
    centre = LO + (np.stack([pred // GRID, pred % GRID], 1) + 0.5) / GRID * (HI - LO)
    dist = np.nan_to_num(np.linalg.norm(cups - centre[:, None], axis=-1), nan=np.inf)
    n_cups = np.isfinite(cups[:, :, 0]).sum(1)
    return {
        "named_cup": float((dist.argmin(1) == target).mean()),
        "near_a_cup": float((dist.min(1) < NEAR).mean()),
        "chance": float((1.0 / n_cups).mean()),
    }


class FiLMCNN(nn.Module):
    """Three 3x3 convolutions over the code-vector grid; the colour id scales and shifts the second's output."""

    def __init__(self, code_dim: int, n_colors: int, width: int = 64):
        super().__init__()
        self.c1 = nn.Conv2d(code_dim, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.film = nn.Embedding(n_colors, 2 * width)
        self.c3 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.LazyLinear(GRID * GRID)

    def forward(self, codes: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
        h = self.c2(F.relu(self.c1(codes)))
        gamma, beta = self.film(color).chunk(2, -1)
        h = F.relu(h * gamma[..., None, None] + beta[..., None, None])
        return self.out(F.relu(self.c3(h)).flatten(1))


class Pointer(nn.Module):
    """The policy's transformer with a linear head over grid cells at the last position (ACT_OPEN)."""

    def __init__(
        self,
        name: str,
        space: TokenSpace,
        levels: tuple[int, ...],
        seq_len: int,
        grid: tuple[int, int],
        stem: bool,
        film: bool = False,
        trunk: bool = False,
        condition: str = "prompt",
        model_stem: int = 0,
        model_film: int = 0,
        ground_head: bool = False,
    ):
        super().__init__()
        own = {"video_grid": grid, "video_stem": model_stem, "prompt_film": model_film} if model_stem else {}
        if ground_head:
            own["ground_head"] = True
        cfg = preset(
            name,
            vocab_size=space.vocab_size,
            max_seq_len=seq_len,
            video_start=space.video_start,
            video_levels=levels,
            **own,
        )
        self.body = Transformer(cfg)
        self.head = nn.Linear(cfg.d_model, GRID * GRID)
        self.grid, self.stem = grid, None
        if stem:
            self.stem = nn.Sequential(
                nn.Conv2d(len(levels), 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, cfg.d_model, 3, padding=1)
            )
            self.cell = nn.Parameter(torch.randn(grid[0] * grid[1], cfg.d_model) * 0.02)
        self.text, self.by_color = (space.text_start, space.state_start), condition == "color"
        d = cfg.d_model
        self.film = None
        if film:  # the condition vector (the colour id's embedding, or an MLP of the pooled prompt), then FiLM
            self.cond = (
                nn.Embedding(len(COLORS), d)
                if self.by_color
                else nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            )
            self.film = nn.Linear(d, 2 * d)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.trunk = None
        if trunk:
            self.trunk = nn.ModuleDict(
                {
                    "c1": nn.Conv2d(len(levels), 64, 3, padding=1),
                    "c2": nn.Conv2d(64, 64, 3, padding=1),
                    # the colour id's scale and shift directly (as the CNN), or an MLP of the pooled prompt
                    "film": (
                        nn.Embedding(len(COLORS), 128)
                        if self.by_color
                        else nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 128))
                    ),
                    "c3": nn.Conv2d(64, d, 3, padding=1),
                }
            )
            if self.by_color:
                nn.init.normal_(self.trunk["film"].weight, std=0.1)  # scale near 1, shift near 0 at the start
            self.trunk_cell = nn.Parameter(torch.randn(grid[0] * grid[1], d) * 0.02)

    def forward(self, ids: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
        m, t = self.body, ids.shape[1]
        x = m.embed(ids)[0]
        (h, w), d = self.grid, m.video_vecs.shape[1]
        video = slice(t - 2 - h * w, t - 2)  # the frame's h*w video ids sit before FRAME_CLOSE ACT_OPEN
        grid = m.video_vecs[ids[:, video] - m.cfg.video_start].view(-1, h, w, d).permute(0, 3, 1, 2).to(x.dtype)
        is_text = ((ids >= self.text[0]) & (ids < self.text[1])).unsqueeze(-1).to(x.dtype)
        pooled = (x * is_text).sum(1) / is_text.sum(1).clamp_min(1)  # mean input embedding of the prompt's bytes
        add = torch.zeros_like(x[:, video])
        if self.stem is not None:
            add = add + self.stem(grid).flatten(2).transpose(1, 2).to(x.dtype) + self.cell
        if self.trunk is not None:
            tr = self.trunk
            gamma, beta = tr["film"](color if self.by_color else pooled).chunk(2, -1)
            f = tr["c2"](F.relu(tr["c1"](grid)))
            f = tr["c3"](F.relu(f * (1 + gamma[..., None, None]) + beta[..., None, None]))
            add = add + f.flatten(2).transpose(1, 2).to(x.dtype) + self.trunk_cell
        if self.film is not None:
            gamma, beta = self.film(self.cond(color if self.by_color else pooled)).unsqueeze(1).chunk(2, -1)
            add = add + x[:, video] * gamma + beta
        x = torch.cat([x[:, : video.start], x[:, video] + add, x[:, video.stop :]], 1)
        for block in m.blocks:
            x = block(x, m.rope_cos[:t], m.rope_sin[:t])
        return self.head(m.norm(x[:, -1]))


class StemPointer(nn.Module):
    """The policy's own frame stem alone with its pointing read-out (``Transformer.ground_logits``, what
    ``robotok-train --ground-weight`` trains): one logit per cell of the camera's grid for the named cup."""

    def __init__(self, body: Transformer):
        super().__init__()
        self.body = body

    def forward(self, ids: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
        (h, w), t = self.body.cfg.video_grid, ids.shape[1]
        return self.body.ground_logits(ids, ids[:, t - 2 - h * w : t - 2])  # the prompt's bytes end at SEP


def score_image(pred: np.ndarray, pix: np.ndarray, target: np.ndarray, size, grid) -> dict[str, float]:
    """Held-out figures of predicted image cells: the named cup's projection nearest the cell's centre."""
    cy = (pred // grid[1] + 0.5) * size[0] / grid[0]
    cx = (pred % grid[1] + 0.5) * size[1] / grid[1]
    dist = np.nan_to_num(np.hypot(pix[..., 0] - cy[:, None], pix[..., 1] - cx[:, None]), nan=np.inf)
    return {
        "named_cup": float((dist.argmin(1) == target).mean()),
        "near_a_cup": float((dist.min(1) < size[0] / grid[0]).mean()),
        "chance": float((1.0 / np.isfinite(pix[:, :, 0]).sum(1)).mean()),
    }


def sequences(space: TokenSpace, prompts: np.ndarray, ids: np.ndarray) -> torch.Tensor:
    """``BOS prompt SEP FRAME_OPEN video FRAME_CLOSE ACT_OPEN``, left-padded with PAD (id 0) to one length."""
    rows = [[*space.encode_prompt(str(p)), *space.frame([c]), ACT_OPEN] for p, c in zip(prompts, ids, strict=True)]
    out = np.zeros((len(rows), max(map(len, rows))), np.int64)
    for i, r in enumerate(rows):
        out[i, out.shape[1] - len(r) :] = r
    return torch.from_numpy(out)


def train_and_score(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    test_inputs: tuple[torch.Tensor, ...],
    test: dict[str, np.ndarray],
    cfg: BenchConfig,
    labels_test: torch.Tensor | None = None,
    scorer=None,
) -> dict[str, float]:
    """AdamW (decay on every parameter), 100 warm-up steps then cosine to zero, bf16 autocast on CPU; held-out
    figures. Close to, not the same as, the trainer's ``robotok.policy.train_config.lr_at`` (which decays to
    ``lr * min_lr_ratio``) and its optimiser (no decay on norms): the recorded results used this one."""
    with torch.no_grad():
        model(*(x[:2] for x in inputs))  # materialise lazy layers before the optimiser takes the parameters
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.1, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        lr = cfg.lr * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        i = torch.randint(len(labels), (cfg.batch_size,), generator=gen)
        with torch.autocast("cpu", torch.bfloat16, enabled=cfg.dtype == "bf16"):
            loss = F.cross_entropy(model(*(x[i] for x in inputs)).float(), labels[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=cfg.dtype == "bf16"):
        n = len(test["target"])
        logits = torch.cat([model(*(x[j : j + 250] for x in test_inputs)).float() for j in range(0, n, 250)])
    if labels_test is None:
        labels_test = torch.from_numpy(cell_of(test["cups"][np.arange(n), test["target"]]))
    pred = logits.argmax(-1).numpy()
    model.train()
    return {
        **(scorer(pred) if scorer else score(pred, test["cups"], test["target"])),
        "train_loss_last": float(loss.detach()),
        "test_loss": float(F.cross_entropy(logits, labels_test)),
        "seconds": seconds,
    }


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    bad = sorted(set(cfg.models) - {"transformer", "cnn"})
    if cfg.condition not in ("prompt", "color"):
        raise SystemExit(f"pointing.py: error: --condition prompt or color (got {cfg.condition!r})")
    if cfg.attention not in ("fp32", "kernel"):
        raise SystemExit(f"pointing.py: error: --attention fp32 or kernel (got {cfg.attention!r})")
    if cfg.attention == "kernel":
        robotok.policy.layers.attend = F.scaled_dot_product_attention  # the module-level name Attention calls
    if cfg.dtype not in ("bf16", "fp32"):
        raise SystemExit(f"pointing.py: error: --dtype bf16 or fp32 (got {cfg.dtype!r})")
    if bad or not cfg.scenes or min(cfg.scenes) < 1:
        raise SystemExit(f"pointing.py: error: --models from transformer, cnn (got {bad}); --scenes positive ints")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    vt = VideoTokenizer.load(cfg.tokenizer)
    size = tuple(vt.cfg.image_size)
    space = TokenSpace(state_bins=2, video_vocab=vt.vocab_size, action_ranges=[ActionRange("none", 1, 1)])
    vecs = fsq_code_vectors(tuple(vt.cfg.levels))

    def encode(d: dict[str, np.ndarray]) -> np.ndarray:
        f = d["frames"]
        return np.concatenate([vt.encode(f[j : j + 256]) for j in range(0, len(f), 256)])  # [N, h, w]

    t0 = time.perf_counter()
    test = render_scenes(cfg.test_seed_start, cfg.test_scenes, size)
    train_all = render_scenes(cfg.seed_start, max(cfg.scenes), size)
    codes_test, codes_all = encode(test), encode(train_all)
    print(f"rendered and tokenised {cfg.test_scenes} + {max(cfg.scenes)} scenes in {time.perf_counter() - t0:.0f} s")
    seq_test = sequences(space, test["prompts"], codes_test)
    grid_test = vecs[torch.from_numpy(codes_test)].permute(0, 3, 1, 2).contiguous()
    labels_all = torch.from_numpy(cell_of(train_all["cups"][np.arange(len(codes_all)), train_all["target"]]))
    rows = []
    for n in cfg.scenes:
        for name in cfg.models:
            torch.manual_seed(cfg.seed)
            if name == "transformer":
                seq = sequences(space, train_all["prompts"][:n], codes_all[:n])
                length = max(seq.shape[1], seq_test.shape[1])
                seq, seq_t = (F.pad(s, (length - s.shape[1], 0)) for s in (seq, seq_test))  # left, with PAD = 0
                model: nn.Module = Pointer(
                    cfg.preset,
                    space,
                    tuple(vt.cfg.levels),
                    length,
                    vt.grid,
                    cfg.stem,
                    cfg.film,
                    cfg.trunk,
                    cfg.condition,
                    cfg.model_stem,
                    cfg.model_film,
                    cfg.stem_pretrain > 0,
                )
                color = torch.from_numpy(train_all["color"][:n])
                if cfg.stem_pretrain:
                    cells = pixel_cells(train_all["pix"][np.arange(n), train_all["target"][:n]], size, vt.grid)
                    cells_t = pixel_cells(test["pix"][np.arange(len(test["target"])), test["target"]], size, vt.grid)
                    r0 = train_and_score(
                        StemPointer(model.body),
                        (seq, color),
                        torch.from_numpy(cells),
                        (seq_t, torch.from_numpy(test["color"])),
                        test,
                        dataclasses.replace(cfg, steps=cfg.stem_pretrain),
                        torch.from_numpy(cells_t),
                        lambda p: score_image(p, test["pix"], test["target"], size, vt.grid),
                    )
                    rows.append({"model": "stem", "scenes": n, **r0})
                    print(
                        f"stem alone {n:6d} scenes: named cup {r0['named_cup']:.1%} (chance {r0['chance']:.1%}), "
                        f"near a cup {r0['near_a_cup']:.1%}, held-out loss {r0['test_loss']:.2f}, "
                        f"{r0['seconds']:.0f} s",
                        flush=True,
                    )
                r = train_and_score(
                    model, (seq, color), labels_all[:n], (seq_t, torch.from_numpy(test["color"])), test, cfg
                )
            else:
                grid = vecs[torch.from_numpy(codes_all[:n])].permute(0, 3, 1, 2).contiguous()
                color = torch.from_numpy(train_all["color"][:n])
                model = FiLMCNN(vecs.shape[1], len(COLORS))
                r = train_and_score(
                    model, (grid, color), labels_all[:n], (grid_test, torch.from_numpy(test["color"])), test, cfg
                )
            rows.append({"model": name, "scenes": n, **r})
            print(
                f"{name:11s} {n:6d} scenes: named cup {r['named_cup']:.1%} (chance {r['chance']:.1%}), "
                f"near a cup {r['near_a_cup']:.1%}, held-out loss {r['test_loss']:.2f} "
                f"(uniform {math.log(GRID * GRID):.2f}), {r['seconds']:.0f} s",
                flush=True,
            )
    by = {(r["model"], r["scenes"]): r for r in rows}
    for n in cfg.scenes:
        if ("transformer", n) in by and ("cnn", n) in by:
            t, c = by[("transformer", n)]["named_cup"], by[("cnn", n)]["named_cup"]
            print(f"{n} scenes: transformer / cnn named-cup accuracy = {t / max(c, 1e-9):.2f}")
    if cfg.out != Path(""):
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(cfg).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
