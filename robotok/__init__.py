"""robotok: camera video, robot state, text prompts and robot motions as one stream of discrete tokens.

The import package is assembled from the repository's top-level folders (see DESIGN.md):
``robotok.datasets`` (``datasets/``), ``robotok.tokenizers`` (``tokenizers/``), ``robotok.sim_envs``,
``robotok.policy`` and ``robotok.evaluate``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
