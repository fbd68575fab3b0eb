"""Train the policy transformer on pre-tokenised shards: one CPU process, or torchrun over GPUs and nodes.

    robotok-train --data runs/demo/shards --preset tiny --steps 2000 --out runs/demo/policy
    torchrun --nproc-per-node=8 -m robotok.policy.train --data ... --preset base [--fsdp]

Distributed runs are detected from torchrun's RANK/WORLD_SIZE (NCCL on CUDA, gloo on CPU); ``--fsdp``
shards every ``Block`` with FSDP2 (``fully_shard``), otherwise DDP. ``--batch-size`` is the GLOBAL batch
(sequences per optimizer step over all ranks and accumulation steps); the sequences of a step are a pure
function of (seed, step), and each rank takes its own slice, so N processes give the same updates as one
(up to float summation order), and ``--resume`` continues exactly where an uninterrupted run would be.
The loss is cross-entropy on action tokens (weight 1) plus next-frame video tokens (``--frame-loss-weight``),
normalised by the weight of the whole global batch; ``--ground-weight`` adds the frame stem's pointing loss on
the scenes of the shards' ``ground.npz`` (robotok-pretokenize --scenes). Rank 0 logs (tqdm, ``log.jsonl``,
TensorBoard when installed) and writes the checkpoint directory, the model unwrapped (see ``robotok.policy.model``).
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint.state_dict as dcp_sd
from safetensors.torch import save_file

from robotok import resolve_dtype
from robotok.policy.checkpoint import (
    CKPT_FORMAT,
    atomic_write,
    copy_shard_extras,
    init_weights,
    load_optim_state_by_name,
    optim_state_by_name,
    resume_state,
)
from robotok.policy.ema import WeightAverage
from robotok.policy.ground import GroundScenes
from robotok.policy.model import PRESETS, Transformer, preset, weighted_cross_entropy
from robotok.policy.shards import (
    KIND_ACTION,
    TokenShards,
    global_batch_indices,
    kind_weights,
    split_by_episode,
    trimmed_length,
)
from robotok.policy.train_config import TrainConfig, lr_at


def video_embedding(data: Path, cells: bool = True, stem: int = 0, film: int = 0) -> dict[str, Any]:
    """``video_start`` and ``video_levels`` for ModelConfig from a shard directory ({} when it names no FSQ
    video tokenizer); with ``cells`` also ``video_grid`` (the tokenizer's code grid), ``video_stem`` and
    ``prompt_film``."""
    space_file, vt_file = Path(data) / "token_space.json", Path(data) / "tokenizers" / "video" / "config.json"
    if not (space_file.exists() and vt_file.exists()):  # shards written by other tools: plain embeddings
        return {}
    space = json.loads(space_file.read_text())
    vt = json.loads(vt_file.read_text()).get("config", {})
    levels = vt.get("levels")
    if not levels or "video" not in space.get("ranges", {}):
        return {}
    out: dict[str, Any] = {"video_start": int(space["ranges"]["video"][0]), "video_levels": tuple(map(int, levels))}
    if cells and vt.get("image_size") and vt.get("downsample"):
        out["video_grid"] = tuple(int(s) // int(vt["downsample"]) for s in vt["image_size"])
        out["video_stem"] = int(stem)
        out["prompt_film"] = int(film) if stem else 0
    return out


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if cfg.fsdp and not self.distributed:
            raise SystemExit("robotok-train: error: --fsdp needs a torchrun launch (torchrun --nproc-per-node=N ...)")
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise SystemExit("robotok-train: error: --device cuda but no CUDA device; use --device cpu")
        self.device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        else:  # subnormal floats (a confident softmax's tail, its gradients) run many times slower on x86 CPUs
            torch.set_flush_denormal(True)
        if self.distributed:
            dist.init_process_group("nccl" if use_cuda else "gloo")
        self.amp_dtype = resolve_dtype(cfg.dtype, self.device)

        if not (cfg.data / "meta.json").is_file():
            raise SystemExit(
                f"robotok-train: error: --data {cfg.data} is not a shard directory (no meta.json); "
                "make one with robotok-pretokenize"
            )
        self.shards = TokenShards(cfg.data)
        horizon, steps = int(self.shards.meta.get("horizon", 0)), " ".join(map(str, cfg.n_action_steps))
        policy_json = cfg.data / "policy.json"
        robots = json.loads(policy_json.read_text()).get("embodiments", []) if policy_json.is_file() else []
        if horizon and any(k > horizon for k in cfg.n_action_steps):
            raise SystemExit(
                f"robotok-train: error: --n-action-steps {steps} exceeds the shards' action chunk of "
                f"{horizon} steps: choose 1..{horizon}"
            )
        if len(cfg.n_action_steps) > 1 and len(cfg.n_action_steps) != len(robots):
            raise SystemExit(
                f"robotok-train: error: --n-action-steps {steps}: give one value, or one per robot of the shards "
                f"(their datasets' order: {[e['name'] for e in robots]})"
            )
        per = cfg.batch_size / (self.world * cfg.grad_accum)
        if per != int(per):
            raise SystemExit(
                f"robotok-train: error: --batch-size {cfg.batch_size} must divide into world size "
                f"{self.world} x --grad-accum {cfg.grad_accum}"
            )
        self.micro = int(per)
        self.train_idx, self.val_idx = split_by_episode(self.shards.episodes, cfg.val_fraction, cfg.seed)
        if len(self.train_idx) == 0:
            raise SystemExit(f"robotok-train: error: {cfg.data} holds no training sequences")
        self.val_idx = self.val_idx[: cfg.eval_sequences]
        self.lengths = self.shards.lengths() if cfg.length_buckets > 1 else None
        self.ground = self._load_ground() if cfg.ground_weight else None

        self.start_step, state, ema_init = 0, None, None
        self.model_cfg = preset(
            cfg.preset,
            vocab_size=self.shards.vocab_size,
            max_seq_len=max(PRESETS[cfg.preset].max_seq_len, self.shards.seq_len),
            **(
                video_embedding(cfg.data, cfg.cell_embedding, cfg.video_stem, cfg.prompt_film)
                if cfg.video_code_embedding
                else {}
            ),
            **({"ground_head": True} if cfg.ground_weight else {}),
            **({"keypoint": True} if cfg.keypoint else {}),
            **({"keypoint_effector": True} if cfg.keypoint_effector else {}),
            **({"keypoint_cameras": cfg.keypoint_cameras} if cfg.keypoint_cameras > 1 else {}),
            **({"prompt_context": True} if cfg.prompt_context else {}),
        )
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        model = Transformer(self.model_cfg)
        if cfg.resume:
            model, state, ema_init = self._load_resume(model)
        elif cfg.init is not None:
            self._load_init(model)
        self.n_params = model.num_params()
        model.to(self.device)
        if cfg.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            for block in model.blocks:  # the wrap units
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
        elif self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
        self.model = model
        self.raw = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        self.ema = WeightAverage(self.raw, cfg.ema, ema_init) if cfg.ema else None
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
            fused=use_cuda or None,
        )
        if state is not None:
            if cfg.fsdp:
                dcp_sd.set_optimizer_state_dict(
                    model, self.opt, state["optimizer"], options=dcp_sd.StateDictOptions(full_state_dict=True)
                )
            else:
                load_optim_state_by_name(self.raw, self.opt, state["optimizer"])
            torch.set_rng_state(state["rng"]["torch"])

    def _amp(self):
        """The autocast context of every forward (bf16 or none)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def _load_ground(self) -> GroundScenes:
        """The pointing loss's scenes: ``ground.npz`` of --data."""
        cfg, err = self.cfg, "robotok-train: error:"
        path = cfg.data / "ground.npz"
        if not path.is_file():
            raise SystemExit(
                f"{err} --ground-weight {cfg.ground_weight} but {cfg.data} holds no ground.npz; pre-tokenise with "
                "robotok-pretokenize --scenes FILE (made by robotok-record-scenes), or drop --ground-weight"
            )
        if cfg.fsdp:
            raise SystemExit(f"{err} --ground-weight runs the stem outside the sharded forward: use DDP (no --fsdp)")
        if cfg.ground_batch % self.world:
            raise SystemExit(f"{err} --ground-batch {cfg.ground_batch} must divide into world size {self.world}")
        try:
            return GroundScenes(path, self.device, cfg.keypoint, cfg.keypoint_effector)
        except ValueError as e:
            raise SystemExit(f"{err} {e}") from None

    def _ground_loss(self, step: int) -> torch.Tensor:
        """The pointing loss on this rank's slice of step ``step``'s scenes."""
        rows = self.ground.step_rows(self.cfg.seed, step, self.cfg.ground_batch, self.rank, self.world)
        with self._amp():
            logits, places = self.raw.ground_point(*self.ground.inputs(rows))
        return self.ground.loss(logits.float(), places, rows)[0]

    def _load_resume(self, model: Transformer) -> tuple[Transformer, dict[str, Any], dict[str, torch.Tensor] | None]:
        try:
            weights, state, ema = resume_state(self.cfg.out, self.model_cfg, bool(self.cfg.ema))
        except ValueError as e:
            raise SystemExit(f"robotok-train: error: --resume: {e}") from None
        model.load_state_dict(weights)
        self.start_step = state["step"]
        return model, state, ema

    def _load_init(self, model: Transformer) -> None:
        """--init: the weights of another checkpoint, which must hold this model in this token space."""
        try:
            model.load_state_dict(init_weights(Path(self.cfg.init), self.model_cfg, self.cfg.data))
        except ValueError as e:
            raise SystemExit(f"robotok-train: error: --init {e}") from None

    def _forward_loss(self, tokens: np.ndarray, kinds: np.ndarray, norm: float) -> tuple[torch.Tensor, dict]:
        """Loss of a micro-batch normalised by ``norm`` (weight of the global batch / world), plus raw sums."""
        length = trimmed_length(tokens)  # rows are right-padded: columns that are PAD in every row cost nothing
        tokens, kinds = tokens[:, :length], kinds[:, :length]
        t = torch.from_numpy(tokens).to(self.device)
        w = torch.from_numpy(kind_weights(kinds[:, 1:], self.cfg.frame_loss_weight)).to(self.device)
        sel = w > 0  # the head runs only where a loss is taken: ~40% of a policy sequence's positions
        with self._amp():
            logits, _ = self.model(t[:, :-1], select=sel)
        y, w_sel = t[:, 1:][sel], w[sel]
        total = weighted_cross_entropy(logits[:, None], y[:, None], w_sel[:, None], reduction="sum")
        return total / norm, {"logits": logits, "targets": y, "weights": w_sel, "select": sel, "kinds": kinds}

    def _all_sum(self, values: list[float]) -> list[float]:
        x = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(x)
        return x.tolist()

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + self.rank)  # dropout masks from (seed, step, rank)
        lr = lr_at(step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        rows = global_batch_indices(self.train_idx, cfg.batch_size, cfg.seed, step, self.lengths, cfg.length_buckets)
        w_global = float(kind_weights(np.asarray(self.shards.kinds[rows])[:, 1:], cfg.frame_loss_weight).sum())
        norm = max(w_global, 1e-8) / self.world  # DDP and FSDP average gradients over ranks: undo it
        loss_sum = 0.0
        for m in range(cfg.grad_accum):
            start = (m * self.world + self.rank) * self.micro
            tokens, kinds = self.shards.batch(rows[start : start + self.micro])
            last = m == cfg.grad_accum - 1
            if cfg.fsdp:
                self.model.set_requires_gradient_sync(last)
                sync = nullcontext()
            else:
                sync = self.model.no_sync() if self.distributed and not last else nullcontext()
            with sync:
                loss, _ = self._forward_loss(tokens, kinds, norm)
                if self.ground is not None and last:
                    ground = self._ground_loss(step)
                    loss = loss + cfg.ground_weight * ground
                    loss_sum -= cfg.ground_weight * ground.item()  # train/loss stays the policy's loss
                loss.backward()
            loss_sum += loss.item()
        gnorm = 0.0
        if cfg.grad_clip > 0:
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            gnorm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(step)
        out = {"train/loss_local": loss_sum / self.world, "train/lr": lr, "train/grad_norm": gnorm}
        if self.ground is not None:
            out["train/ground_loss"] = ground.item()  # this rank's scenes
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss and action-token accuracy (argmax == target) over all ranks, of the weights the
        checkpoint holds: the training weights, or their average with --ema."""
        with self.ema.swapped() if self.ema is not None else nullcontext():
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        self.model.eval()
        chunk = self.micro * self.world
        sums = np.zeros(5)  # weighted ce, weight, action ce, action count, action correct
        for b in range(math.ceil(len(self.val_idx) / chunk)):
            rows = self.val_idx[b * chunk + self.rank * self.micro :][: self.micro]
            valid = np.zeros(self.micro, dtype=np.float32)
            valid[: len(rows)] = 1.0  # every rank runs the same number of forwards (FSDP needs it)
            rows = np.concatenate([rows, np.full(self.micro - len(rows), self.val_idx[0])]).astype(np.int64)
            tokens, kinds = self.shards.batch(rows)
            _, o = self._forward_loss(tokens, kinds, 1.0)
            logits, y, sel = o["logits"].float(), o["targets"], o["select"]
            v = torch.from_numpy(valid).to(self.device)[:, None].expand_as(sel)[sel]
            w = o["weights"] * v
            is_act = torch.from_numpy(o["kinds"][:, 1:] == KIND_ACTION).to(self.device)[sel] * v
            ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
            sums += np.array(
                [
                    (ce * w).sum().item(),
                    w.sum().item(),
                    (ce * is_act).sum().item(),
                    is_act.sum().item(),
                    ((logits.argmax(-1) == y) * is_act).sum().item(),
                ]
            )
        s = self._all_sum(sums.tolist())
        out = {
            "val/loss": s[0] / max(s[1], 1e-8),
            "val/action_loss": s[2] / max(s[3], 1e-8),
            "val/action_acc": s[4] / max(s[3], 1e-8),
        }
        if self.ground is not None and len(self.ground.val):
            rows = self.ground.val_rows()  # held-out scenes
            with self._amp():
                logits, places = self.raw.ground_point(*self.ground.inputs(rows))
            _, parts = self.ground.loss(logits.float(), places, rows)
            out["val/ground_loss"], out["val/ground_acc"] = float(parts["ce"]), float(parts["acc"])
            if "place_err" in parts:  # mean distance of the handed place from the object's pixel, in cells
                out["val/ground_place_err"] = float(parts["place_err"])
            if "effector_err" in parts:
                out["val/ground_effector_err"] = float(parts["effector_err"])
        self.model.train()
        return out

    def _full_weights(self) -> dict[str, torch.Tensor]:
        if self.cfg.fsdp:
            opts = dcp_sd.StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0
            weights = dcp_sd.get_model_state_dict(self.model, options=opts)
        else:
            weights = self.raw.state_dict()
        # copies, not views of the parameters: save() swaps the average in between two calls
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()} if self.rank == 0 else {}

    def save(self, step: int) -> None:
        cfg = self.cfg
        weights = training = self._full_weights()
        if self.ema is not None:
            with self.ema.swapped():
                weights = self._full_weights()  # what evaluation and export load: the average
        if cfg.fsdp:
            opts = dcp_sd.StateDictOptions(full_state_dict=True, cpu_offload=True)
            optim = dcp_sd.get_optimizer_state_dict(self.model, self.opt, options=opts)
        else:
            optim = optim_state_by_name(self.raw, self.opt) if self.rank == 0 else None
        if self.rank == 0:
            atomic_write(
                cfg.out / "model.safetensors",
                lambda t: save_file(weights, t, metadata={"step": str(step), "format": CKPT_FORMAT}),
            )
            state = {
                "step": step,
                "optimizer": optim,
                "rng": {"torch": torch.get_rng_state()},
                "sampler": {"seed": cfg.seed, "next_step": step, "global_batch": cfg.batch_size},
                **({"weights": training} if self.ema is not None else {}),
            }
            atomic_write(cfg.out / "train_state.pt", lambda t: torch.save(state, t))
            meta = {k: v for k, v in self.shards.meta.items() if k != "format"}
            config = {
                "format": CKPT_FORMAT,
                "step": step,
                "n_params": self.n_params,
                "preset": cfg.preset,
                "model": asdict(self.model_cfg),
                "train": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                "vocab": {"vocab_size": self.shards.vocab_size, "seq_len": self.shards.seq_len},
                "shards": meta,
            }
            atomic_write(cfg.out / "config.json", lambda t: Path(t).write_text(json.dumps(config, indent=2)))
        if self.distributed:
            dist.barrier()

    def run(self) -> None:
        cfg, rank0 = self.cfg, self.rank == 0
        stop = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
        if rank0:
            cfg.out.mkdir(parents=True, exist_ok=True)
            copy_shard_extras(cfg.data, cfg.out, cfg.n_action_steps)
            log_path = cfg.out / "log.jsonl"
            kept = (
                [r for r in log_path.read_text().splitlines() if json.loads(r)["step"] <= self.start_step]
                if cfg.resume and log_path.is_file()
                else []
            )  # drop records past the checkpoint we resume from
            log = open(log_path, "w")
            log.writelines(r + "\n" for r in kept)
            tb = _tensorboard(cfg.out)
            from tqdm import tqdm

            print(
                f"robotok-train: {cfg.preset} {self.n_params / 1e6:.2f}M params, world {self.world}, "
                f"{'fsdp' if cfg.fsdp else 'ddp' if self.distributed else 'single'}, device {self.device}, "
                f"dtype {self.amp_dtype or torch.float32}, {len(self.train_idx)} train / {len(self.val_idx)} val "
                f"sequences",
                flush=True,
            )
            bar = tqdm(total=stop, initial=self.start_step, desc="robotok-train", dynamic_ncols=True)
        tokens_per_step = cfg.batch_size * (self.shards.seq_len - 1)
        self.model.train()
        busy, done_since = 0.0, 0  # seconds in train_step (not eval or saving) since the last log
        for step in range(self.start_step, stop):
            t0 = time.perf_counter()
            metrics = self.train_step(step)
            busy, done_since = busy + time.perf_counter() - t0, done_since + 1
            n = step + 1
            record: dict[str, float] = {}
            if n % cfg.log_every == 0 or n == stop:
                (loss,) = self._all_sum([metrics.pop("train/loss_local")])
                tps = tokens_per_step * done_since / busy
                record.update({"train/loss": loss, **metrics, "train/tokens_per_s": tps})
                busy, done_since = 0.0, 0
            if len(self.val_idx) and (n % cfg.eval_every == 0 or n == stop):
                record.update(self.evaluate())
            if n % cfg.ckpt_every == 0 or n == stop:
                self.save(n)
            if rank0:
                bar.update(1)
                if record:
                    short = {
                        "train/loss": "loss",
                        "val/loss": "val_loss",
                        "val/action_acc": "val_acc",
                        "val/ground_acc": "ground_acc",
                    }
                    bar.set_postfix({short[k]: f"{v:.4g}" for k, v in record.items() if k in short})
                    log.write(json.dumps({"step": n, **record}) + "\n")
                    log.flush()
                    if tb is not None:
                        for k, v in record.items():
                            tb.add_scalar(k, v, n)
        if rank0:
            bar.close()
            log.close()
            if tb is not None:
                tb.close()
        if self.distributed:
            # All ranks leave together, and the DDP wrapper (its reducer holds the process group) goes first:
            # with gloo, tearing it down after the group was destroyed hung now and then.
            dist.barrier()
            self.model = self.raw
            gc.collect()
            dist.destroy_process_group()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


def train(cfg: TrainConfig) -> Path:
    """Run training as configured; returns the checkpoint directory."""
    Trainer(cfg).run()
    return cfg.out


def main() -> None:
    import tyro

    train(tyro.cli(TrainConfig))


if __name__ == "__main__":
    main()
