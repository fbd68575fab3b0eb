"""robotok-train: fitting, exact resume, checkpoints that describe themselves, data order, and distributed parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robotok import cpu_has_bf16_matmul, resolve_dtype
from robotok.policy.checkpoint import load_checkpoint
from robotok.policy.model import Transformer, config_from_dict, weighted_cross_entropy
from robotok.policy.shards import (
    KIND_ACTION,
    KIND_FRAME,
    TokenShards,
    global_batch_indices,
    kind_weights,
    split_by_episode,
    trimmed_length,
    write_shards,
)
from robotok.policy.train import train
from robotok.policy.train_config import TrainConfig, lr_at

V = 40


def make_shards(root: Path, n: int = 32, length: int = 32, extras: bool = False) -> Path:
    """Sequences of random context whose action segment copies an earlier span; 2 sequences per episode."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, V, size=(n, length))
    tokens[:, 0] = 1
    tokens[:, 20:] = tokens[:, 4 : 4 + length - 20]
    kinds = np.zeros((n, length), np.uint8)
    kinds[:, 8:16] = KIND_FRAME
    kinds[:, 20:] = KIND_ACTION
    episodes = np.stack([np.arange(n) // 2, np.arange(n) % 2], 1)
    extra = {}
    if extras:
        (root / "src" / "action").mkdir(parents=True)
        (root / "src" / "action" / "tok.json").write_text('{"kind": "binning"}')
        (root / "space.json").write_text('{"vocab_size": 40}')
        extra = {
            "tokenizers": root / "src",
            "token_space.json": root / "space.json",
            "policy.json": root / "space.json",
        }
    return write_shards(root / "shards", tokens, kinds, episodes, {"vocab_size": V}, extra_files=extra)


def cfg_for(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=data,
        out=out,
        preset="micro",
        steps=6,
        batch_size=8,
        lr=5e-4,
        warmup_steps=2,
        dtype="fp32",
        eval_every=3,
        log_every=1,
        ckpt_every=100,
    )
    return TrainConfig(**{**base, **kw})


def weights_of(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_tiny_model_fits_a_small_corpus_and_reports_val_accuracy(tmp_path):
    data = make_shards(tmp_path)
    out = train(
        cfg_for(
            data,
            tmp_path / "ck",
            steps=200,
            batch_size=16,
            lr=3e-3,
            warmup_steps=10,
            val_fraction=0.25,
            eval_every=200,
            log_every=10,
            frame_loss_weight=0.0,
        )
    )
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["train/loss"] > 2.0 and log[-1]["train/loss"] < 0.05, [r["train/loss"] for r in log]
    # val/action_acc equals argmax accuracy at action positions of the held-out episodes, recomputed here
    model, config = load_checkpoint(out)
    shards = TokenShards(data)
    _, val = split_by_episode(shards.episodes, 0.25, seed=0)
    tokens, kinds = shards.batch(val)
    t = torch.from_numpy(tokens)
    with torch.no_grad():
        logits, _ = model(t[:, :-1])
    act = torch.from_numpy(kinds[:, 1:] == KIND_ACTION)
    acc = ((logits.argmax(-1) == t[:, 1:]) & act).sum().item() / act.sum().item()
    assert log[-1]["val/action_acc"] == pytest.approx(acc, abs=1e-9)
    w = torch.from_numpy(kind_weights(kinds[:, 1:], 0.0))
    assert log[-1]["val/loss"] == pytest.approx(weighted_cross_entropy(logits, t[:, 1:], w).item(), rel=1e-5)
    assert config["step"] == 200 and config["model"]["vocab_size"] == V


def test_resume_continues_exactly(tmp_path):
    data = make_shards(tmp_path)
    full = train(cfg_for(data, tmp_path / "full", grad_accum=2))
    part = train(cfg_for(data, tmp_path / "part", grad_accum=2, stop_at=3))
    assert json.loads((part / "config.json").read_text())["step"] == 3
    assert max_diff(weights_of(full), weights_of(part)) > 1e-4  # not there yet
    train(cfg_for(data, tmp_path / "part", grad_accum=2, resume=True))
    assert max_diff(weights_of(full), weights_of(part)) == 0.0
    steps = [json.loads(line)["step"] for line in (part / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_init_starts_a_new_run_from_a_checkpoints_weights(tmp_path):
    """--init loads another checkpoint's weights (a new optimizer and schedule): at a negligible lr they come out
    as they went in, where a fresh initialisation does not; another token space or model is refused."""
    import shutil

    data = make_shards(tmp_path, extras=True)
    first = train(cfg_for(data, tmp_path / "first"))
    again = train(cfg_for(data, tmp_path / "again", init=first, lr=1e-9))
    assert max_diff(weights_of(first), weights_of(again)) < 1e-6
    fresh = train(cfg_for(data, tmp_path / "fresh", lr=1e-9))
    assert max_diff(weights_of(first), weights_of(fresh)) > 1e-3
    more = train(cfg_for(data, tmp_path / "more", init=first))
    assert json.loads((more / "config.json").read_text())["train"]["init"] == str(first)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "token_space.json").write_text('{"vocab_size": 41}')
    with pytest.raises(SystemExit, match="another token space"):
        train(cfg_for(other, tmp_path / "x", init=first))
    with pytest.raises(SystemExit, match="holds a different model"):
        train(cfg_for(data, tmp_path / "y", init=first, preset="tiny"))
    with pytest.raises(ValueError, match="pick one"):
        cfg_for(data, tmp_path / "z", init=first, resume=True)


def test_ema_checkpoint_holds_the_average_and_resumes_exactly(tmp_path):
    """--ema leaves training as it is (train_state.pt keeps the training weights), writes the average that the
    recursion over the per-step weights gives, and resumes to the same average as an unbroken run."""
    data = make_shards(tmp_path)
    ema = train(cfg_for(data, tmp_path / "ema", ema=0.8))
    state = torch.load(ema / "train_state.pt", weights_only=True)
    per_step = [weights_of(train(cfg_for(data, tmp_path / f"s{k}", stop_at=k))) for k in range(1, 6)]
    per_step.append(weights_of(train(cfg_for(data, tmp_path / "s6"))))
    assert max_diff(state["weights"], per_step[-1]) == 0.0  # the average does not touch training
    config = json.loads((ema / "config.json").read_text())
    torch.manual_seed(0)
    avg = {k: v.detach().clone() for k, v in Transformer(config_from_dict(config["model"])).state_dict().items()}
    names = {n for n, _ in Transformer(config_from_dict(config["model"])).named_parameters()}
    for step, w in enumerate(per_step):
        d = min(0.8, (1 + step) / (10 + step))
        avg = {k: avg[k] * d + w[k] * (1 - d) if k in names else w[k] for k in avg}
    got = weights_of(ema)
    diffs = {k: (got[k] - avg[k]).abs().max().item() for k in got}
    assert max(diffs.values()) < 1e-6, sorted(diffs.items(), key=lambda kv: -kv[1])[:4]
    assert max_diff(got, per_step[-1]) > 2e-5  # and it is not the last weights (the match above is 50x closer)
    val_ema = [json.loads(r) for r in (ema / "log.jsonl").read_text().splitlines() if "val/loss" in r]
    val_raw = [json.loads(r) for r in (tmp_path / "s6" / "log.jsonl").read_text().splitlines() if "val/loss" in r]
    assert val_ema[-1]["val/loss"] != val_raw[-1]["val/loss"]  # validated on the average it writes

    part = train(cfg_for(data, tmp_path / "part", ema=0.8, stop_at=3))
    train(cfg_for(data, tmp_path / "part", ema=0.8, resume=True))
    assert max_diff(weights_of(part), got) == 0.0
    with pytest.raises(SystemExit, match="trained with --ema"):
        train(cfg_for(data, tmp_path / "part", resume=True))
    with pytest.raises(SystemExit, match="trained without --ema"):
        train(cfg_for(data, tmp_path / "s6", ema=0.8, resume=True))


def test_checkpoint_describes_itself(tmp_path):
    data = make_shards(tmp_path, extras=True)
    out = train(cfg_for(data, tmp_path / "ck", steps=2, frame_loss_weight=0.5))
    assert (out / "tokenizers" / "action" / "tok.json").read_text() == '{"kind": "binning"}'
    assert json.loads((out / "token_space.json").read_text()) == {"vocab_size": 40}
    assert (out / "policy.json").is_file() and (out / "train_state.pt").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["frame_loss_weight"] == 0.5 and config["vocab"] == {"vocab_size": V, "seq_len": 32}
    model, _ = load_checkpoint(out)
    torch.testing.assert_close(model.state_dict(), weights_of(out))


def test_split_is_by_episode_and_sampler_walks_epochs():
    episodes = np.stack([np.repeat(np.arange(10), 3), np.tile(np.arange(3), 10)], 1)
    train_idx, val_idx = split_by_episode(episodes, 0.2, seed=1)
    assert len(val_idx) == 6 and len(train_idx) == 24
    assert not set(episodes[train_idx, 0]) & set(episodes[val_idx, 0])
    first_epoch = np.concatenate([global_batch_indices(train_idx, 8, 0, s) for s in range(3)])
    assert sorted(first_epoch) == sorted(train_idx)  # 3 steps x 8 = one pass over 24 sequences
    np.testing.assert_array_equal(global_batch_indices(train_idx, 8, 0, 5), global_batch_indices(train_idx, 8, 0, 5))
    assert not np.array_equal(global_batch_indices(train_idx, 8, 0, 3), global_batch_indices(train_idx, 8, 0, 0))


def test_length_buckets_keep_the_epoch_and_group_lengths():
    """Bucketed batches still see every sequence once per epoch, and hold one length where they can."""
    train_idx = np.arange(100, 164)
    lengths = np.zeros(200, dtype=np.int64)
    lengths[train_idx] = np.where(np.random.default_rng(0).random(64) < 0.5, 197, 329)
    batches = [global_batch_indices(train_idx, 4, 0, s, lengths, bucket=4) for s in range(16)]
    assert sorted(np.concatenate(batches)) == sorted(train_idx)  # 16 steps x 4 = one epoch
    mixed = sum(len(set(lengths[b])) > 1 for b in batches)
    assert mixed <= 4  # at most one batch per group of 4 straddles the two lengths
    plain = [global_batch_indices(train_idx, 4, 0, s) for s in range(16)]
    assert sum(len(set(lengths[b])) > 1 for b in plain) > mixed
    np.testing.assert_array_equal(batches[5], global_batch_indices(train_idx, 4, 0, 5, lengths, bucket=4))


def test_schedule_and_weights():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-4) and lr_at(55, cfg) == pytest.approx(5.5e-4)
    kinds = np.array([[0, 1, 2, 1]], np.uint8)
    np.testing.assert_array_equal(kind_weights(kinds, 0.25), [[0, 1, 0.25, 1]])
    tokens = np.array([[5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 9, 0]])  # right-padded with PAD (0)
    assert trimmed_length(tokens) == 5 and trimmed_length(tokens[:1]) == 3 and trimmed_length(tokens[:, :0]) == 2


def run_cli(args: list[str], nproc: int = 0) -> subprocess.CompletedProcess:
    # Loopback only: gloo otherwise binds to the interface the hostname resolves to, which may be none.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run(
        [*launcher, "-m", "robotok.policy.train", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_checkpoint_executes_the_count_it_is_given(tmp_path):
    """--n-action-steps sets policy.json's executed counts (one for all, or one per robot) and keeps the shards'
    offset of the world-model frame as frame_steps."""
    data = make_shards(tmp_path, extras=True)
    shards_policy = {"horizon": 10, "n_action_steps": 5, "embodiments": [{"name": "arm"}, {"name": "car"}]}
    (data / "policy.json").write_text(json.dumps(shards_policy))

    def policy(name: str, **kw) -> dict:
        return json.loads((train(cfg_for(data, tmp_path / name, steps=1, **kw)) / "policy.json").read_text())

    assert policy("own") == shards_policy
    assert policy("all", n_action_steps=(2,)) == {
        "horizon": 10,
        "n_action_steps": 2,
        "frame_steps": 5,
        "embodiments": [{"name": "arm", "n_action_steps": 2}, {"name": "car", "n_action_steps": 2}],
    }
    each = policy("each", n_action_steps=(2, 5))
    assert (each["n_action_steps"], each["frame_steps"]) == (5, 5)
    assert [e["n_action_steps"] for e in each["embodiments"]] == [2, 5]
    assert json.loads((data / "policy.json").read_text()) == shards_policy  # the shards are left as they are
    with pytest.raises(SystemExit, match="one per robot"):
        train(cfg_for(data, tmp_path / "three", steps=1, n_action_steps=(2, 3, 4)))
    with pytest.raises(ValueError, match="n_action_steps"):
        TrainConfig(n_action_steps=(0,))


def test_bad_args_give_one_line_errors(tmp_path):
    r = run_cli(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "ck")])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("robotok-train: error: --data"), r.stderr
    data = make_shards(tmp_path)
    r = run_cli(["--data", str(data), "--out", str(tmp_path / "ck"), "--resume"])
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--resume" in r.stderr.strip().splitlines()[-1]
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="--prompt-film"):  # the pointing loss needs the prompt-conditioned stem
        TrainConfig(ground_weight=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(tmp_path, mode):
    """2 ranks x 4 sequences = 1 process x 8: the same parameters (Adam amplifies summation-order noise a little).

    The 2-process run is also interrupted at step 3 and resumed, which must not change anything either. The
    FSDP run keeps a weight average (--ema), sharded like the parameters, which must match one process's too.
    """
    data = make_shards(tmp_path)
    ema = 0.8 if mode == "fsdp" else 0.0
    one = train(cfg_for(data, tmp_path / "one", ema=ema))
    same_split = train(cfg_for(data, tmp_path / "accum", grad_accum=2, ema=ema))  # the same per-rank split
    args = [
        "--data",
        str(data),
        "--out",
        str(tmp_path / mode),
        "--preset",
        "micro",
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--lr",
        "5e-4",
        "--warmup-steps",
        "2",
        "--dtype",
        "fp32",
        "--eval-every",
        "3",
        "--log-every",
        "1",
    ]
    args += ["--fsdp", "--ema", str(ema)] if mode == "fsdp" else []
    for extra in (["--stop-at", "3"], ["--resume"]):
        r = run_cli(args + extra, nproc=2)
        assert r.returncode == 0, r.stderr[-3000:]
    dist_w = weights_of(tmp_path / mode)
    assert max_diff(weights_of(one), dist_w) < 1e-5
    assert max_diff(weights_of(same_split), dist_w) < 1e-6
    log = lambda d: [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert log(tmp_path / mode)[-1]["val/loss"] == pytest.approx(log(one)[-1]["val/loss"], rel=1e-5)


def test_auto_dtype_takes_bf16_where_the_cpu_multiplies_bf16() -> None:
    """AMX-BF16 (Intel) and AVX512-BF16 (AMD Zen 4) both make bf16 autocast pay on CPU; without either it does not."""
    assert cpu_has_bf16_matmul("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile")
    assert cpu_has_bf16_matmul("flags\t\t: fpu avx2 avx512f avx512_bf16")
    assert not cpu_has_bf16_matmul("flags\t\t: fpu avx2 avx512f avx512_vnni")
    want = torch.bfloat16 if cpu_has_bf16_matmul() else None
    assert resolve_dtype("auto", torch.device("cpu")) == want
    assert resolve_dtype("fp32", torch.device("cpu")) is None
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
