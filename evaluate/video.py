"""Annotated episode videos: every camera side by side, upscaled, with the prompt and the outcome drawn on.

The cameras are 64x64; they are upscaled with nearest-neighbour so that the video shows exactly the
pixels the policy saw. A banner above them carries the prompt, the policy, the seed and step, and the
outcome (known once the episode ends, so frames are annotated after the rollout). Written with PyAV
(H.264 in mp4); text with Pillow's built-in font, so no font file is needed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

BANNER_PX = 48
GREEN, RED, WHITE, GREY = (60, 200, 90), (230, 70, 60), (240, 240, 240), (170, 170, 170)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """Cut ``text`` with an ellipsis so that it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def tile_cameras(pixels: dict[str, np.ndarray], size: int = 256, label: bool = True) -> np.ndarray:
    """Cameras (each uint8 [H, W, 3]) upscaled to ``size`` px high and placed side by side -> [size, n*W', 3].

    With ``label`` each camera's name is written in its bottom-left corner.
    """
    tiles = []
    for name in sorted(pixels):  # sorted: a fixed camera order in every frame
        img = np.asarray(pixels[name])
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, (
            f"camera {name!r}: expected uint8 [H, W, 3], got {img.dtype} {img.shape}"
        )
        w = int(round(img.shape[1] * size / img.shape[0]))
        tile = Image.fromarray(img).resize((w, size), Image.Resampling.NEAREST)
        if label:
            draw = ImageDraw.Draw(tile)
            font = _font(12)
            draw.rectangle((0, size - 18, int(draw.textlength(name, font=font)) + 8, size), fill=(20, 20, 24))
            draw.text((4, size - 16), name, font=font, fill=GREY)
        tiles.append(np.asarray(tile))
    return np.concatenate(tiles, axis=1)


def annotate(frame: np.ndarray, prompt: str, status: str, outcome: str | None, ok: bool | None) -> np.ndarray:
    """Put a banner above ``frame`` (uint8 [H, W, 3]): the prompt, a status line, and the outcome badge."""
    h, w, _ = frame.shape
    canvas = Image.new("RGB", (w, h + BANNER_PX), (20, 20, 24))
    canvas.paste(Image.fromarray(frame), (0, BANNER_PX))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(16), _font(13)
    badge_w = 0
    if outcome:
        badge_w = int(draw.textlength(outcome, font=big)) + 16
        color = GREEN if ok else RED
        draw.rectangle((w - badge_w - 4, 4, w - 4, 26), fill=color)
        draw.text((w - badge_w + 4, 6), outcome, font=big, fill=(0, 0, 0))
    draw.text((6, 6), _fit(draw, f'"{prompt}"', big, w - badge_w - 16), font=big, fill=WHITE)
    draw.text((6, 29), _fit(draw, status, small, w - 12), font=small, fill=GREY)
    return np.asarray(canvas)


def render_episode(
    frames: Sequence[dict[str, np.ndarray]],
    prompt: str,
    header: str,
    success: bool,
    outcome: str | None = None,
    size: int = 256,
) -> list[np.ndarray]:
    """Annotated frames of one episode; ``frames[t]`` is the observation's camera dict at step t."""
    if not frames:
        raise ValueError("render_episode needs at least one frame, got none")
    outcome = outcome or ("SUCCESS" if success else "FAIL")
    n = len(frames)
    return [
        annotate(tile_cameras(f, size), prompt, f"{header} · step {t}/{n - 1}", outcome, success)
        for t, f in enumerate(frames)
    ]


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: int = 20, hold_last_s: float = 1.0) -> Path:
    """Encode uint8 [H, W, 3] frames to an H.264 mp4 at ``path`` (atomically); the last frame is held a while."""
    if not frames:
        raise ValueError(f"write_mp4 needs at least one frame for {path}, got none")
    h, w, _ = frames[0].shape
    pad_h, pad_w = h + h % 2, w + w % 2  # yuv420p needs even sizes
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = pad_w, pad_h, "yuv420p"
            stream.options = {"crf": "20"} if stream.codec_context.name == "libx264" else {}
            held = list(frames) + [frames[-1]] * int(hold_last_s * fps)
            for img in held:
                assert img.shape == (h, w, 3), f"frame shape changed within a video: {img.shape} vs {(h, w, 3)}"
                if (pad_h, pad_w) != (h, w):
                    img = np.pad(img, ((0, pad_h - h), (0, pad_w - w), (0, 0)))
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_png(path: Path, frame: np.ndarray) -> Path:
    """Save one uint8 [H, W, 3] frame as PNG (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(frame).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_mp4(path: Path) -> list[np.ndarray]:
    """Decode an mp4 back to uint8 [H, W, 3] frames (for checks and for picking a still)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
