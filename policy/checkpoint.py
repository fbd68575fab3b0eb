"""Checkpoint directories: what a trained policy is on disk, and how any consumer opens it by path alone.

A checkpoint directory holds ``config.json`` (model config, train config, vocabulary), ``model.safetensors``
(the unwrapped model), ``train_state.pt`` (optimizer/scheduler/RNG, for ``--resume``), and, copied from
the shard directory it was trained on, ``token_space.json``, ``policy.json`` and ``tokenizers/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from robotok.policy.model import ModelConfig, Transformer, config_from_dict

CKPT_FORMAT = "robotok-checkpoint-v1"
COPIED_FROM_SHARDS = ("token_space.json", "policy.json", "tokenizers")


# ---- optimizer state keyed by parameter name (the same layout FSDP's full optimizer state dict uses)


def optim_state_by_name(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    names = [n for n, _ in model.named_parameters()]
    sd = opt.state_dict()
    return {
        "state": {names[i]: s for i, s in sd["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]],
    }


def load_optim_state_by_name(model: torch.nn.Module, opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    ids = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    opt.load_state_dict(
        {
            "state": {ids[n]: s for n, s in sd["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in sd["param_groups"]],
        }
    )


def atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_shard_extras(data: Path, out: Path, n_action_steps: tuple[int, ...] = ()) -> None:
    """Copy the token space, observation conventions and tokenizers next to the weights. ``n_action_steps`` sets
    the actions the policy executes per chunk (policy.json): one value for every embodiment, or one per embodiment
    in policy.json's order; the world-model frame's offset is kept as ``frame_steps``."""
    for name in COPIED_FROM_SHARDS:
        src, dst = data / name, out / name
        if src.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
            shutil.copytree(src, tmp, dirs_exist_ok=True)
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
        elif src.is_file():
            atomic_write(dst, lambda t, s=src: shutil.copy2(s, t))
    if n_action_steps:
        policy = json.loads((out / "policy.json").read_text())
        policy.setdefault("frame_steps", policy["n_action_steps"])  # shards written before frame_steps existed
        embodiments = policy.get("embodiments", [])
        if len(n_action_steps) == 1:  # the default too, for whoever reads policy.json's top level
            policy["n_action_steps"] = n_action_steps[0]
            n_action_steps = n_action_steps * len(embodiments)
        for e, k in zip(embodiments, n_action_steps, strict=True):
            e["n_action_steps"] = k
        atomic_write(out / "policy.json", lambda t: Path(t).write_text(json.dumps(policy, indent=2)))


def load_checkpoint(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, dict[str, Any]]:
    """The trained model (eval mode, fp32) and the checkpoint's config.json as a dict."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "config.json").is_file() or not (ckpt_dir / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{ckpt_dir} is not a checkpoint (needs config.json and model.safetensors); make one with robotok-train"
        )
    config = json.loads((ckpt_dir / "config.json").read_text())
    model = Transformer(config_from_dict(config["model"]))
    model.load_state_dict(load_file(ckpt_dir / "model.safetensors"))
    return model.to(device).eval(), config


# ---- what robotok-train goes on from (ValueError names the problem; the CLI adds its prefix)


def resume_state(
    out: Path, model_cfg: ModelConfig, ema: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor] | None]:
    """--resume: the training weights, ``train_state.pt`` and the weight average (with ``ema``) of the
    interrupted run in ``out``, which must hold ``model_cfg`` and have been trained with the same ``ema``."""
    if not (out / "train_state.pt").is_file():
        raise ValueError(f"{out} has no train_state.pt; drop --resume to start afresh")
    state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
    config = json.loads((out / "config.json").read_text())
    if config_from_dict(config["model"]) != model_cfg:
        raise ValueError(f"{out} holds a different model ({config['model']}); use the same --preset and --data")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        if int(f.metadata()["step"]) != state["step"]:
            raise ValueError(f"{out}: weights and train_state.pt disagree on the step")
    saved = load_file(out / "model.safetensors")
    if ema:  # model.safetensors holds the average; the training weights are in train_state.pt
        if "weights" not in state:
            raise ValueError(f"{out} was trained without --ema; resume with the flags it was started with")
        return state["weights"], state, saved
    if "weights" in state:
        raise ValueError(f"{out} was trained with --ema; resume with the flags it was started with")
    return saved, state, None


def init_weights(src: Path, model_cfg: ModelConfig, data: Path) -> dict[str, torch.Tensor]:
    """--init: the weights of checkpoint ``src``, which must hold ``model_cfg`` in the token space of the shard
    directory ``data``."""
    if not (src / "model.safetensors").is_file() or not (src / "config.json").is_file():
        raise ValueError(f"{src} is not a checkpoint directory (config.json + model.safetensors)")
    config = json.loads((src / "config.json").read_text())
    if config_from_dict(config["model"]) != model_cfg:
        raise ValueError(
            f"{src} holds a different model ({config['model']}, here {model_cfg}); use its --preset and model flags"
        )
    mine, theirs = data / "token_space.json", src / "token_space.json"
    if theirs.is_file() and json.loads(mine.read_text()) != json.loads(theirs.read_text()):
        raise ValueError(
            f"{src} was trained in another token space than {data}'s (tokenizers, state normalisation); "
            "pre-tokenise with its tokenizers, and with A+B datasets to add data to a robot"
        )
    return load_file(src / "model.safetensors")
