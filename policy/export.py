"""robotok-export: a checkpoint directory -> an ONNX bundle that a robot runs with numpy and onnxruntime alone.

    robotok-export runs/demo/policy --out runs/demo/bundle [--int8]

Bundle layout (everything a robot needs; ``robotok.policy.runtime.RobotPolicy`` reads it)::

    manifest.json         format + version, robotok/torch/onnx/onnxruntime versions, opset, model shape,
                          graph file names, a sha256 per file, and the export's own numeric check
    video_encoder.onnx    frames [B, 3, H, W] float in [0, 1] -> codes [B, h, w] int64 (the video tokenizer's encoder)
    prefill.onnx          idx [1, T], pos [], k_cache, v_cache [n_layer, 1, n_head, L, head_dim]
                          -> logits [1, V] (last position), k_out, v_out   (T and L dynamic)
    decode.onnx           the same graph for a single step (T = 1): one generated id per call
    token_space.json      the joint vocabulary, with each embodiment's state normalisation (q01/q99)
    policy.json           observation conventions: cameras, image size, horizon, history, hold action, ...
    action/<range>.json   each action tokenizer's fitted state (normalisation, bins / DCT+BPE strings / splines)
    robotok_runtime.py    a copy of robotok/policy/runtime.py: ``sys.path.insert(0, BUNDLE)`` and
                          ``from robotok_runtime import RobotPolicy``

Both transformer graphs trace ``Transformer.forward_kv``, the model's pure incremental step (caches in, new caches
out, attention over the whole cache under a position mask), so decoding stays incremental: the prompt prefix
is computed once, each chunk prefills its frame and state ids, and each action id costs one single-step call.
With ``--int8`` the two transformer graphs get onnxruntime's dynamic quantisation (int8 weights of the MatMuls
and the embedding; activations quantised on the fly); the video encoder stays fp32.

The bundle is staged in a temporary folder next to ``--out`` and renamed into place: a reader never sees half
a bundle. The graphs are written with torch's TorchScript-based exporter: it exports the tiny preset in about a
second into one self-contained file per graph (the dynamo exporter takes ~20x longer and splits the weights
into a side file).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tyro.conf import Positional

from robotok.policy import runtime
from robotok.tokenizers.space import ACT_OPEN, STATE_CLOSE, STATE_OPEN

OPSET = 17
GRAPHS = {"video_encoder": "video_encoder.onnx", "prefill": "prefill.onnx", "decode": "decode.onnx"}
PROG = "robotok-export"


class LastLogits(torch.nn.Module):
    """``Transformer.forward_kv`` returning only the last position's logits (all that decoding reads); a model
    that conditions its frame stem on the prompt (``prompt_film``) takes and returns the prompt's encoding too."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, idx: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *cond: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        logits, k, v, c = self.model.forward_kv(idx, pos, k_cache, v_cache, cond[0] if cond else None)
        return (logits[:, -1], k, v) if c is None else (logits[:, -1], k, v, c)


def _onnx_export(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
    opset: int,
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic; checked numerically after export
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_video_encoder(video_tokenizer: Any, path: Path, opset: int = OPSET) -> None:
    h, w = video_tokenizer.cfg.image_size
    _onnx_export(
        video_tokenizer.encoder_module().cpu(),
        (torch.rand(2, 3, h, w),),
        path,
        ["frames"],
        ["codes"],
        {"frames": {0: "B"}, "codes": {0: "B"}},
        opset,
    )


def export_transformer(model: torch.nn.Module, out_dir: Path, opset: int = OPSET) -> None:
    """Write prefill.onnx (T dynamic) and decode.onnx (T = 1); both with a dynamic cache length L."""
    cfg, wrapped = model.cfg, LastLogits(model.cpu().eval())
    shape = (cfg.n_layer, 1, cfg.n_head, min(cfg.max_seq_len, 64), cfg.head_dim)
    k = v = torch.zeros(shape)
    names, outs = ["idx", "pos", "k_cache", "v_cache"], ["logits", "k_out", "v_out"]
    cond = (torch.zeros(1, cfg.prompt_film),) if cfg.prompt_film else ()
    if cond:  # the prompt's encoding travels with the caches (see robotok.policy.layers.KVCache)
        names, outs = [*names, "cond"], [*outs, "cond_out"]
    cache_axes = {name: {3: "L"} for name in ("k_cache", "v_cache", "k_out", "v_out")}
    for name, t, axes in (("prefill", 3, {"idx": {1: "T"}}), ("decode", 1, {})):
        _onnx_export(
            wrapped,
            (torch.zeros(1, t, dtype=torch.long), torch.tensor(0), k, v, *cond),
            out_dir / GRAPHS[name],
            names,
            outs,
            {**axes, **cache_axes},
            opset,
        )


def quantize_int8(path: Path) -> None:
    """Dynamic int8 quantisation of one graph, in place (onnxruntime.quantization.quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name(path.stem + ".int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic pre-processing advice on the root logger
    try:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    os.replace(tmp, path)


def action_tokenizer_json(tok_dir: Path) -> dict[str, Any]:
    """The fitted state of a saved action tokenizer as one JSON object; DCT+BPE gets its id -> string table."""
    cfg = json.loads((tok_dir / "config.json").read_text())
    if cfg.get("kind") not in runtime.DECODERS:
        raise ValueError(
            f"{tok_dir}: action tokenizer kind {cfg.get('kind')!r} has no runtime decoder ({sorted(runtime.DECODERS)})"
        )
    if cfg["kind"] == "dct_bpe":
        from tokenizers import Tokenizer  # HuggingFace's, as the DCT+BPE tokenizer itself uses

        bpe = Tokenizer.from_file(str(tok_dir / cfg.get("bpe_file", "bpe.json")))
        cfg["token_strings"] = [bpe.id_to_token(i) for i in range(bpe.get_vocab_size())]
        if any(s is None for s in cfg["token_strings"]):
            raise ValueError(f"{tok_dir}: the BPE vocabulary has gaps; re-fit the tokenizer")
    return cfg


def check_ids(space: Any, cameras: int, grid: tuple[int, int], seed: int = 0) -> tuple[list[int], ...]:
    """A grammar-shaped sample in three calls, as the runtime makes them: the prompt prefix, one observed step
    with ACT_OPEN, one action id (random codes, state bins and action id)."""
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, space.video_vocab, grid) for _ in range(cameras)]
    emb = space.embodiments[0] if space.embodiments else None
    dim = emb.state_dim if emb is not None else 1
    state = [space.state_start + int(b) for b in rng.integers(0, space.state_bins, dim)]
    step = [*space.frame(codes), STATE_OPEN, *state, STATE_CLOSE, ACT_OPEN]
    r = space.action_ranges[emb.action_range if emb is not None else 0]
    return space.encode_prompt("pick up the red cup"), step, [r.start + int(rng.integers(0, r.size))]


def check_graphs(
    model: torch.nn.Module, out_dir: Path, context_len: int, seed: int = 0, chunks: tuple[list[int], ...] = ()
) -> dict[str, float]:
    """Largest |logit| difference between torch and the exported prefill/decode graphs, fed ``chunks`` one call
    each (the last one must be a single id, for the decode graph), or else ``context_len`` random ids and one more."""
    import onnxruntime as ort

    cfg = model.cfg
    if not chunks:
        rng = np.random.default_rng(seed)
        n = max(2, min(context_len, cfg.max_seq_len - 2))
        ids = rng.integers(0, cfg.vocab_size, n + 1)
        chunks = (ids[:n].tolist(), ids[n:].tolist())
    if len(chunks[-1]) != 1:
        raise ValueError("the last chunk goes through the decode graph: one id")
    ids = np.asarray([i for c in chunks for i in c], np.int64)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)[None])[0][0].numpy()  # [n, V]
    k = v = np.zeros((cfg.n_layer, 1, cfg.n_head, len(ids), cfg.head_dim), np.float32)
    cond = np.zeros((1, cfg.prompt_film), np.float32)
    run = {
        g: ort.InferenceSession(str(out_dir / GRAPHS[g]), providers=["CPUExecutionProvider"]).run
        for g in ("prefill", "decode")
    }
    pos, diffs = 0, {"prefill": 0.0, "decode": 0.0}
    for i, chunk in enumerate(chunks):
        graph = "decode" if i == len(chunks) - 1 else "prefill"
        feed = {"idx": np.asarray([chunk], np.int64), "pos": np.array(pos, np.int64), "k_cache": k, "v_cache": v}
        if cfg.prompt_film:
            feed["cond"] = cond
        logits, k, v, *rest = run[graph](None, feed)
        cond = rest[0] if rest else cond
        pos += len(chunk)
        diffs[graph] = max(diffs[graph], float(np.abs(logits[0] - ref[pos - 1]).max()))
    return {
        "prefill_max_abs_logit_diff": diffs["prefill"],
        "decode_max_abs_logit_diff": diffs["decode"],
        "logit_scale": float(np.abs(ref).max()),
        "tokens": len(ids),
    }


def _replace_dir(stage: Path, out: Path) -> None:
    """Rename the staged bundle to ``out``; an existing bundle there is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    checkpoint: str | Path, out: str | Path, int8: bool = False, opset: int = OPSET, check: bool = True
) -> Path:
    """Export ``checkpoint`` (a robotok-train directory) into the bundle folder ``out``; returns ``out``."""
    import onnx
    import onnxruntime

    from robotok.policy.checkpoint import load_checkpoint
    from robotok.tokenizers.space import TokenSpace
    from robotok.tokenizers.video import VideoTokenizer

    ckpt, out = Path(checkpoint), Path(out)
    for name in ("config.json", "model.safetensors", "token_space.json", "policy.json", "tokenizers/video"):
        if not (ckpt / name).exists():
            raise FileNotFoundError(f"{ckpt} lacks {name}; export a checkpoint directory written by robotok-train")
    if out.exists() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not a bundle; choose a new or empty folder")
    model, config = load_checkpoint(ckpt)
    space = TokenSpace.load(ckpt / "token_space.json")
    policy = json.loads((ckpt / "policy.json").read_text())
    video = VideoTokenizer.load(ckpt / "tokenizers" / "video")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        export_video_encoder(video, stage / GRAPHS["video_encoder"], opset)
        export_transformer(model, stage, opset)
        chunks = check_ids(space, len(policy.get("cameras", [])), video.grid) if model.cfg.video_grid else ()
        checks = check_graphs(model, stage, int(policy.get("seq_len", 64)), chunks=chunks) if check else {}
        if checks and checks["prefill_max_abs_logit_diff"] + checks["decode_max_abs_logit_diff"] > 1e-3:
            raise RuntimeError(f"exported graphs disagree with torch: {checks}")
        if int8:
            for g in ("prefill", "decode"):
                quantize_int8(stage / GRAPHS[g])
            if check:
                checks.update(
                    {
                        f"int8_{k}": v
                        for k, v in check_graphs(model, stage, checks["tokens"] - 1, chunks=chunks).items()
                        if k.endswith("diff")
                    }
                )
        for g in GRAPHS.values():
            onnx.checker.check_model(str(stage / g), full_check=True)
        shutil.copy2(ckpt / "token_space.json", stage / "token_space.json")
        shutil.copy2(ckpt / "policy.json", stage / "policy.json")
        (stage / "action").mkdir()
        action_files = {}
        for r in space.action_ranges:
            action_files[r.name] = f"action/{r.name}.json"
            tok = action_tokenizer_json(ckpt / "tokenizers" / "action" / r.name)
            (stage / action_files[r.name]).write_text(json.dumps(tok))
        shutil.copy2(Path(runtime.__file__), stage / "robotok_runtime.py")
        files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        mc = model.cfg
        manifest = {
            "format": runtime.BUNDLE_FORMAT,
            "format_version": runtime.BUNDLE_VERSION,
            "robotok_version": _robotok_version(),
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "opset": opset,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "int8": int8,
            "checkpoint": {"path": str(ckpt.resolve()), "step": config.get("step"), "preset": config.get("preset")},
            "model": {
                "vocab_size": mc.vocab_size,
                "n_layer": mc.n_layer,
                "n_head": mc.n_head,
                "head_dim": mc.head_dim,
                "d_model": mc.d_model,
                "max_seq_len": mc.max_seq_len,
                "prompt_cond": mc.prompt_film,
            },
            "video": {
                "image_size": list(video.cfg.image_size),
                "grid": list(video.grid),
                "vocab_size": video.vocab_size,
            },
            "graphs": GRAPHS,
            "action_tokenizers": action_files,
            "check": checks,
            "files": {f: runtime.sha256_file(stage / f) for f in files},
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _robotok_version() -> str:
    import robotok

    return getattr(robotok, "__version__", "unknown")


@dataclass
class ExportConfig:
    """robotok-export: a checkpoint -> an ONNX bundle for the torch-free robot runtime."""

    checkpoint: Positional[Path] = Path("runs/demo/policy")
    """Checkpoint directory written by robotok-train."""
    out: Path = Path("runs/demo/bundle")
    """Bundle folder to write (replaced atomically if it holds a bundle)."""
    int8: bool = False
    """Quantise the transformer graphs to int8 weights (onnxruntime dynamic quantisation)."""
    opset: int = OPSET
    """ONNX opset of the graphs."""
    check: bool = True
    """Compare the exported graphs' logits with torch on random ids (fails above 1e-3 for fp32)."""

    def __post_init__(self) -> None:
        if not 14 <= self.opset <= 21:
            raise ValueError(f"opset {self.opset} must lie in [14, 21] (scaled_dot_product_attention needs 14)")


def main() -> None:
    import tyro

    try:
        cfg = tyro.cli(ExportConfig)
    except ValueError as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    try:
        out = export_bundle(cfg.checkpoint, cfg.out, int8=cfg.int8, opset=cfg.opset, check=cfg.check)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    manifest = json.loads((out / "manifest.json").read_text())
    size = sum((out / f).stat().st_size for f in manifest["files"]) / 1e6
    print(
        f"{PROG}: wrote {out} ({size:.1f} MB, {'int8' if cfg.int8 else 'fp32'}); check {manifest['check']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
