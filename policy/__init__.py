"""The transformer, pre-tokenised shards, training, prompted generation, export and the robot runtime.

Kept light on purpose: ``robotok.policy.runtime`` must import numpy and onnxruntime only, and importing
it runs this file first. ``Policy`` is loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Policy"]


def __getattr__(name: str) -> Any:
    if name == "Policy":
        from robotok.policy.inference import Policy

        return Policy
    raise AttributeError(f"module 'robotok.policy' has no attribute {name!r}")
