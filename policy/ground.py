"""The frame stem's pointing loss (``robotok-train --ground-weight``): scenes in which the prompt names an object,
and the loss of ``Transformer.ground_point``'s read-outs against where that object (and the effector) lies.

The scenes come from ``robotok-record-scenes``; ``robotok-pretokenize --scenes`` tokenises them (``ground_set``)
into the shard directory's ``ground.npz``: per scene the prompt's bytes, the frame's video ids, the named
object's cell and pixel (in cells) and, for PickCup, the grip's; ``GroundScenes`` reads it for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robotok.tokenizers.space import PAD, TokenSpace

SEED_SALT = 104729  # the scenes of a step are drawn from (seed, SEED_SALT, step): not the sequences' stream


def pixel_cells(pixel: np.ndarray, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Cell (row-major) of an image's ``grid`` holding each pixel [..., 2] (row, col) of an image of ``size``;
    -1 for a pixel outside the image or NaN."""
    p = np.nan_to_num(np.asarray(pixel, np.float64), nan=-1.0)
    inside = (p[..., 0] >= 0) & (p[..., 0] < size[0]) & (p[..., 1] >= 0) & (p[..., 1] < size[1])
    r = (p[..., 0] * grid[0] / size[0]).astype(np.int64)
    c = (p[..., 1] * grid[1] / size[1]).astype(np.int64)
    return np.where(inside, r * grid[1] + c, -1)


def ground_set(scenes: list[dict[str, Any]], space: TokenSpace, video_tokenizer: Any) -> dict[str, np.ndarray]:
    """Tokenise ``robotok-record-scenes`` arrays for the pointing loss: ``prompt`` [N, P] (``BOS bytes SEP``,
    PAD after), ``video`` [N, h*w] (the frame's video ids), ``cell`` [N] (the grid cell, row-major, holding the
    prompted object's pixel), ``point`` [N, 2] (that pixel in cells: row, col, the grid's corner at 0), and the
    robot's effector's ``effector_cell`` [N] (-1: out of frame or unknown) and ``effector`` [N, 2] (in cells; NaN
    where its cell is -1). Scenes whose object is out of the frame are left out."""
    grid = tuple(video_tokenizer.grid)
    size = tuple(int(x) for x in video_tokenizer.cfg.image_size)
    prompts, videos, cells, points, eff_cells, effs = [], [], [], [], [], []
    scale = np.float32([grid[0] / size[0], grid[1] / size[1]])
    for sc in scenes:
        frames = sc["frames"]
        if tuple(frames.shape[1:3]) != size:
            raise ValueError(
                f"scene frames are {frames.shape[1]}x{frames.shape[2]}, the video tokenizer's {size[0]}x{size[1]}; "
                "record the scenes at its size (--width, --height)"
            )
        cell = pixel_cells(sc["pixel"], size, grid)
        idx = np.flatnonzero(cell >= 0)
        if not len(idx):
            continue
        codes = np.concatenate([video_tokenizer.encode(frames[idx[j : j + 256]]) for j in range(0, len(idx), 256)])
        videos.append(space.video_ids(codes).reshape(len(idx), -1))
        cells.append(cell[idx])
        points.append(np.asarray(sc["pixel"], np.float32)[idx] * scale)
        eff = np.asarray(sc.get("effector", np.full((len(frames), 2), np.nan)), np.float32)[idx]
        eff_cell = pixel_cells(eff, size, grid)
        eff_cells.append(eff_cell)
        effs.append(np.where((eff_cell >= 0)[:, None], eff * scale, np.nan).astype(np.float32))
        prompts += [space.encode_prompt(str(sc["prompt"][i])) for i in idx]
    if not prompts:
        raise ValueError("no scene shows its prompted object inside the frame; check the scenes' --camera")
    prompt = np.zeros((len(prompts), max(map(len, prompts))), np.int32)
    assert PAD == 0
    for i, ids in enumerate(prompts):
        prompt[i, : len(ids)] = ids
    return {
        "prompt": prompt,
        "video": np.concatenate(videos).astype(np.int32),
        "cell": np.concatenate(cells),
        "point": np.concatenate(points),
        "effector_cell": np.concatenate(eff_cells),
        "effector": np.concatenate(effs),
    }


class GroundScenes:
    """``ground.npz`` on a device, a held-out tenth (at most 256) of its scenes, and the pointing loss on them."""

    def __init__(self, path: Path, device: torch.device, keypoint: bool = False, keypoint_effector: bool = False):
        def tensor(a: np.ndarray, dtype: type) -> torch.Tensor:
            return torch.from_numpy(a.astype(dtype)).to(device)

        with np.load(path) as z:
            self.data = {k: tensor(z[k], np.int64) for k in ("prompt", "video", "cell")}
            if keypoint:
                if "point" not in z:
                    raise ValueError(
                        f"--keypoint fits the pointed place, and {path} has none (made by an older "
                        "robotok-pretokenize); pre-tokenise the scenes again"
                    )
                self.data["point"] = tensor(z["point"], np.float32)
            if keypoint_effector:
                eff = z["effector"] if "effector" in z else np.full((len(z["cell"]), 2), np.nan, np.float32)
                if not np.isfinite(eff).all(-1).any():
                    raise ValueError(
                        f"--keypoint-effector fits the effector's place, and {path} has none; record the scenes "
                        "again with robotok-record-scenes (PickCup records its grip) and pre-tokenise them"
                    )
                self.data["effector"] = tensor(np.nan_to_num(eff, nan=-1.0), np.float32)
                self.data["effector_cell"] = tensor(z["effector_cell"], np.int64)
        self.device = device
        n_val = min(256, len(self.data["cell"]) // 10)
        self.train, self.val = np.arange(n_val, len(self.data["cell"])), np.arange(n_val)

    def step_rows(self, seed: int, step: int, batch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """This rank's slice of step ``step``'s ``batch`` training scenes: (seed, step) decide them, as they decide
        the sequences, so that N processes draw what one would."""
        rows = np.random.default_rng([seed, SEED_SALT, step]).choice(self.train, batch)
        per = batch // world
        return torch.from_numpy(rows[rank * per : (rank + 1) * per]).to(self.device)

    def val_rows(self) -> torch.Tensor:
        return torch.from_numpy(self.val).to(self.device)

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Transformer.ground_point``'s arguments for scenes ``rows``: prompt bytes and video ids."""
        return self.data["prompt"][rows], self.data["video"][rows]

    def loss(
        self, logits: torch.Tensor, places: torch.Tensor | None, rows: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The pointing loss of scenes ``rows`` from ``Transformer.ground_point``'s outputs: cross-entropy of the
        named object's cell, with --keypoint a Huber loss (in cells) of its place against the pixel, and with
        --keypoint-effector the same two for the effector where the scene has it in frame; and the parts."""
        g = self.data
        ce = F.cross_entropy(logits[..., 0], g["cell"][rows])
        parts = {"ce": ce, "acc": (logits[..., 0].argmax(-1) == g["cell"][rows]).float().mean()}
        loss = ce
        if places is not None:  # --keypoint: the soft-argmax place, within the cell, at the object's pixel
            loss = loss + F.smooth_l1_loss(places[:, 0], g["point"][rows], beta=0.5)
            parts["place_err"] = (places[:, 0] - g["point"][rows]).norm(dim=-1).mean()
        if "effector" in g:
            cell = g["effector_cell"][rows]
            seen = (cell >= 0).float()
            n = seen.sum().clamp(min=1.0)
            ce_e = F.cross_entropy(logits[..., 1], cell.clamp(min=0), reduction="none")
            err = F.smooth_l1_loss(places[:, 1], g["effector"][rows], beta=0.5, reduction="none").sum(-1) / 2
            loss = loss + ((ce_e + err) * seen).sum() / n
            parts["effector_err"] = ((places[:, 1] - g["effector"][rows]).norm(dim=-1) * seen).sum() / n
        return loss, parts
