"""robotok-train's configuration (``TrainConfig``, its checks and its learning-rate schedule): what a run is
asked to do, apart from the trainer that does it (``robotok.policy.train``). The compute precision is chosen by
``robotok.resolve_dtype``, shared with the video tokenizer's trainer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class TrainConfig:
    """robotok-train: fit the policy transformer to a shard directory."""

    data: Path = Path("runs/demo/shards")
    """Shard directory written by robotok-pretokenize."""
    out: Path = Path("runs/demo/policy")
    """Checkpoint directory (created; overwritten unless --resume)."""
    preset: Literal["micro", "tiny", "small", "base", "large"] = "tiny"
    """Model size (robotok.policy.model.PRESETS): micro for smoke tests, tiny for a CPU, the others for GPUs."""
    steps: int = 2000
    """Optimizer steps of the whole run (the cosine schedule ends here)."""
    batch_size: int = 32
    """Global batch: sequences per optimizer step, over all ranks and accumulation steps."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (each rank processes batch_size / (world * grad_accum) at once)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio."""
    warmup_steps: int = 100
    """Linear warm-up steps (capped at steps // 10 for short runs)."""
    weight_decay: float = 0.1
    """AdamW weight decay, on matrices and embeddings only (not norms)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    ema: float = 0.0
    """Keep an exponential moving average of the weights with this decay (0: off; warmed up as
    min(ema, (1 + step) / (10 + step))). The checkpoint's model.safetensors, which robotok-eval and the exporters
    load, and the validation figures are then the average's; the training weights stay in train_state.pt."""
    frame_loss_weight: float = 0.0
    """Loss weight of next-frame video tokens (the world-model loss); action tokens weigh 1."""
    video_code_embedding: bool = True
    """Embed video ids with a projection of their FSQ code vectors as well (ModelConfig.video_levels)."""
    cell_embedding: bool = True
    """Add a learned embedding of each video id's cell in its frame (ModelConfig.video_grid)."""
    video_stem: int = 64
    """Channels of the convolution stem over each observed frame's code vectors (ModelConfig.video_stem; 0: none).
    Needs the code embedding and the cell embedding."""
    prompt_film: int = 0
    """Width of the prompt encoder that scales and shifts that stem (ModelConfig.prompt_film; 0: none)."""
    ground_weight: float = 0.0
    """Weight of the pointing loss (0: off): on the scenes of ``ground.npz`` in --data (robotok-pretokenize
    --scenes), the prompt-conditioned frame stem marks the cell of the object the prompt names (cross-entropy
    over the frame's cells, ``Transformer.ground_logits``). Training only; needs --prompt-film."""
    ground_batch: int = 64
    """Scenes per optimizer step of the pointing loss (global, like --batch-size)."""
    keypoint: bool = False
    """Hand the policy the pointed place (ModelConfig.keypoint: the soft-argmax of the pointing read-out, added
    to each observed frame's FRAME_CLOSE); the pointing loss then also fits that place to the object's pixel
    (a Huber loss in cells). Needs --ground-weight."""
    keypoint_effector: bool = False
    """With --keypoint: also point at the robot's effector (ModelConfig.keypoint_effector), trained on the
    scenes' effector pixel (robotok-record-scenes records it for PickCup's grip)."""
    keypoint_cameras: int = 1
    """With --keypoint: hand over the places read in this many cameras of each observed frame, from the first
    (ModelConfig.keypoint_cameras; 2: the wrist camera's too). The pointing loss teaches the read-outs on the
    scenes of each camera (robotok-record-scenes --camera wrist, passed to robotok-pretokenize --scenes)."""
    prompt_context: bool = False
    """Add the prompt encoder's output to every input embedding (ModelConfig.prompt_context), so the positions
    that choose a route at the intersection read the prompt directly. Needs --prompt-film."""
    n_action_steps: tuple[int, ...] = ()
    """Actions the trained policy executes per chunk before it predicts the next (policy.json): one value for every
    robot, or one per dataset of the shards in their order, e.g. ``2 5``: PickCup corrects its reach every 2
    steps, Drive keeps 5 (empty: the shards' own, also the offset of the world-model frame, which this leaves
    as it is). Training is the same either way: this is how the checkpoint acts."""
    length_buckets: int = 1
    """Group this many batches and sort them by sequence length, so each batch trims its padding (1: off, the
    default: a bucket then holds one robot's sequences, and batches alternate between tasks)."""
    val_fraction: float = 0.1
    """Fraction of EPISODES held out for validation (0: none)."""
    eval_every: int = 200
    """Validate every this many steps (and at the end)."""
    eval_sequences: int = 256
    """Validation sequences per evaluation (a fixed subset, so evaluations compare)."""
    ckpt_every: int = 500
    """Write the checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    """Log training metrics every this many steps."""
    seed: int = 0
    """Seed of the initialisation, the data order and the validation split."""
    resume: bool = False
    """Continue from the checkpoint in --out (same flags), giving the same result as an unbroken run."""
    init: Path | None = None
    """Start from the weights of this checkpoint (its model.safetensors) instead of a fresh initialisation, with a
    new optimizer and schedule: e.g. to go on training a policy on its demonstrations plus the corrections that
    robotok-record-corrections --policy recorded of it. The shards must be in the checkpoint's token space."""
    stop_at: int = 0
    """Stop (with a checkpoint) after this step, e.g. to split a run over time-limited jobs (0: run to --steps)."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state with FSDP2 (needs a torchrun launch)."""
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision: auto is bf16 autocast on CUDA and on CPUs with AMX-BF16 or AVX512-BF16, else fp32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks CUDA when available."""

    def __post_init__(self) -> None:
        if any(k < 1 for k in self.n_action_steps):
            raise ValueError(f"n_action_steps {self.n_action_steps}: each >= 1 (none given: the shards' own)")
        if min(self.steps, self.batch_size, self.grad_accum, self.length_buckets) < 1:
            raise ValueError(
                f"steps {self.steps}, batch_size {self.batch_size}, grad_accum {self.grad_accum}, "
                f"length_buckets {self.length_buckets}: >= 1"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction {self.val_fraction} must be in [0, 1)")
        if self.ground_weight < 0 or self.ground_batch < 1:
            raise ValueError(
                f"ground_weight {self.ground_weight} must be >= 0 and ground_batch {self.ground_batch} >= 1"
            )
        if self.init is not None and self.resume:
            raise ValueError("--init starts a new run from a checkpoint's weights, --resume continues one: pick one")
        if self.ground_weight and not self.prompt_film:
            raise ValueError("--ground-weight trains the prompt-conditioned stem to point: set --prompt-film too")
        if self.keypoint and not self.ground_weight:
            raise ValueError("--keypoint hands the policy what the pointing loss trains: set --ground-weight too")
        if self.keypoint_effector and not self.keypoint:
            raise ValueError("--keypoint-effector adds a second keypoint: set --keypoint too")
        if self.prompt_context and not self.prompt_film:
            raise ValueError("--prompt-context adds the prompt encoder's output: it needs --prompt-film (e.g. 64)")
        if self.keypoint_cameras < 1 or (self.keypoint_cameras > 1 and not self.keypoint):
            raise ValueError(f"--keypoint-cameras {self.keypoint_cameras}: >= 1, and > 1 needs --keypoint")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema {self.ema}: the decay must be in [0, 1) (0: off; 0.99-0.999 are usual)")
        if self.lr <= 0 or self.frame_loss_weight < 0 or self.grad_clip < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"lr {self.lr}, frame_loss_weight {self.frame_loss_weight}, grad_clip {self.grad_clip},"
                f" min_lr_ratio {self.min_lr_ratio} out of range"
            )
        if min(self.eval_every, self.ckpt_every, self.log_every) < 1 or self.stop_at < 0:
            raise ValueError(
                f"eval_every {self.eval_every}, ckpt_every {self.ckpt_every}, log_every {self.log_every}"
                f" must be >= 1 and stop_at {self.stop_at} >= 0"
            )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at cfg.steps."""
    warm = min(cfg.warmup_steps, cfg.steps // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
