"""robotok: camera video, robot state, text prompts and robot motions as one stream of discrete tokens.

The import package is assembled from the repository's top-level folders (see DESIGN.md):
``robotok.datasets`` (``datasets/``), ``robotok.tokenizers`` (``tokenizers/``), ``robotok.sim_envs``,
``robotok.policy`` and ``robotok.evaluate``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"

# In an editable install (`pip install -e .`, what `make setup` does) setuptools resolves the namespace
# folders datasets/, tokenizers/ and evaluate/ through a path-hook entry on sys.path; nested under this
# regular package they are only found if that entry is on our __path__ too. A wheel install has no such
# entry and nothing changes.
__path__ += [p for p in sys.path if p.startswith("__editable__.robotok") and p.endswith(".__path_hook__")]

# MuJoCo tries GLFW when MUJOCO_GL is unset, which fails on a headless machine. EGL works on Mesa and
# on NVIDIA drivers; users who set MUJOCO_GL themselves (osmesa, glfw) keep their choice.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] == "egl":
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def assets_dir() -> Path:
    """The folder of MJCF models and small fixtures shipped with the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "assets", here / "assets"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"robotok assets folder not found next to {here}; reinstall robotok")


def cpu_has_bf16_matmul(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively: AMX-BF16 tiles (Intel, ~1.9x fp32 training throughput) or
    AVX512-BF16 dot products (AMD Zen 4 and later, 1.49x measured); ``benchmarks/policy_speed.py`` measures
    the ratio. Without either (an AVX2-only CPU), bf16 autocast runs reference kernels and is many times
    slower than fp32, so every trainer's ``--dtype auto`` asks this. ``cpuinfo``: the text of /proc/cpuinfo
    (read when None)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return bool(set(cpuinfo.split()) & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--dtype`` (auto, fp32, bf16) on ``device``, or None for plain fp32: auto is bf16
    on CUDA where supported and on CPUs that multiply bf16 natively. Both trainers ask this (torch is imported
    here, not at the package's import: recording must not need it)."""
    import torch

    if choice == "fp32":
        return None
    if choice == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16_matmul() else None
