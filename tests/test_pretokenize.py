"""Pre-tokenisation: every shard row parses back to its episode, and inference builds the same context."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from robotok.datasets.lerobot_v3 import DatasetGroup, LeRobotDataset, LeRobotDatasetWriter
from robotok.policy.model import ModelConfig, Transformer
from robotok.policy.pretokenize import PretokenizeConfig, action_chunk, main, pretokenize
from robotok.policy.shards import KIND_ACTION, KIND_FRAME, KIND_NONE, TokenShards
from robotok.tokenizers.action import BinningTokenizer, DCTBPETokenizer, load_action_tokenizer
from robotok.tokenizers.space import (
    ACT_CLOSE,
    FRAME_CLOSE,
    PAD,
    STATE_CLOSE,
    STATE_OPEN,
    TokenSpace,
    history_indices,
)
from robotok.tokenizers.video import VideoTokenizer, VideoTokenizerConfig

H, W = 16, 16
HORIZON = 6
ROBOTS = {  # name: state dim, action dim, cameras, tasks
    "pick": (7, 5, ("front", "wrist"), ("pick up the red cup", "pick up the blue cup")),
    "drive": (4, 2, ("front", "top"), ("drive the left route",)),
}


def write_dataset(root: Path, name: str, episodes: int, seed: int) -> Path:
    s_dim, a_dim, cams, tasks = ROBOTS[name]
    rng = np.random.default_rng(seed)
    features = {
        "observation.state": {"dtype": "float32", "shape": [s_dim]},
        "action": {"dtype": "float32", "shape": [a_dim]},
        **{f"observation.images.{c}": {"dtype": "video", "shape": [H, W, 3]} for c in cams},
    }
    with LeRobotDatasetWriter(root / name, fps=20, features=features, robot_type=name) as w:
        for e in range(episodes):
            t = np.arange(int(rng.integers(9, 15)))[:, None]
            state = np.sin(0.3 * t + rng.uniform(0, 6, s_dim)) * rng.uniform(0.5, 3, s_dim)
            action = np.clip(np.sin(0.4 * t + rng.uniform(0, 6, a_dim)), -1, 1)
            if name == "pick":
                action[:, -1] = np.where(t[:, 0] < len(t) // 2, -1.0, 1.0)  # a gripper: two levels
            ep = {"observation.state": state.astype(np.float32), "action": action.astype(np.float32)}
            for c in cams:
                y, x = np.mgrid[:H, :W]
                base = (x[None] * 8 + y[None] * 4 + t[:, :, None] * 10 + 60 * cams.index(c)) % 256
                ep[f"observation.images.{c}"] = np.stack([base, 255 - base, (base * 3) % 256], -1).astype(np.uint8)
            w.add_episode(ep, tasks[e % len(tasks)])
    return root / name


def all_chunks(ds: LeRobotDataset, dim: int | None = None) -> np.ndarray:
    out = []
    for i in range(ds.num_episodes):
        a = ds.episode(i, load_images=False)["action"]
        out += [action_chunk(a, t, HORIZON, dim or a.shape[1]) for t in range(len(a))]
    return np.stack(out)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    pick = LeRobotDataset(write_dataset(root, "pick", 3, 0))
    drive = LeRobotDataset(write_dataset(root, "drive", 2, 1))
    toks = [
        BinningTokenizer(bins=32).fit(all_chunks(pick)),
        DCTBPETokenizer(scale=8.0, bpe_vocab_size=200).fit(all_chunks(drive)),
    ]
    torch.manual_seed(0)
    vt = VideoTokenizer(cfg=VideoTokenizerConfig(image_size=(H, W), downsample=8, levels=(4, 4), channels=(8,)))
    cfg = PretokenizeConfig(
        out=str(root / "shards"),
        cameras=("front", "wrist", "top"),
        horizon=HORIZON,
        n_action_steps=3,
        history=2,
        history_stride=2,
        frame_loss=True,
        state_bins=128,
    )
    out = pretokenize([("pick", pick), ("drive", drive)], toks, vt, cfg, progress=False)
    return {"root": root, "datasets": [pick, drive], "toks": toks, "vt": vt, "cfg": cfg, "out": out}


def test_every_row_parses_back_to_its_episode(world) -> None:
    shards, out = TokenShards(world["out"]), world["out"]
    space = TokenSpace.load(out / "token_space.json")
    policy = json.loads((out / "policy.json").read_text())
    vt, cfg = world["vt"], world["cfg"]
    assert [e["cameras"] for e in policy["embodiments"]] == [["front", "wrist"], ["front", "top"]]
    assert space.action_ranges[0].length == HORIZON * 5 and space.action_ranges[1].length is None
    episodes, n_rows = [], 0
    for d, ds in enumerate(world["datasets"]):
        episodes += [(d, ds, i) for i in range(ds.num_episodes)]
        n_rows += int(ds.episode_lengths.sum())
    assert len(shards) == n_rows and shards.vocab_size == space.vocab_size
    rows = {tuple(e): r for r, e in enumerate(np.asarray(shards.episodes))}
    for e_i, (d, ds, i) in enumerate(episodes):
        ep = ds.episode(i)
        emb, tok = policy["embodiments"][d], world["toks"][d]
        codes = {c: vt.encode(ep[f"observation.images.{c}"]) for c in emb["cameras"]}
        e = space.embodiments[d]
        lo, hi = np.array(e.state_lo), np.array(e.state_hi)
        for t in range(len(ep["action"])):
            row = rows[(e_i, t)]
            tokens, kinds = np.asarray(shards.tokens[row]), np.asarray(shards.kinds[row])
            p = space.parse(tokens)
            assert p["prompt"] == ep["task"]
            hist = history_indices(t, cfg.history, cfg.history_stride)
            assert len(p["steps"]) == cfg.history
            for (video, state), j in zip(p["steps"], hist, strict=True):
                expect = np.concatenate([codes[c][j].ravel() for c in emb["cameras"]])
                np.testing.assert_array_equal(space.video_codes(video), expect)
                x = ep["observation.state"][j]
                inside = (x >= lo) & (x <= hi)
                err = np.abs(space.decode_state(state, d) - x)[inside]
                assert np.all(err <= 0.5 * ((hi - lo) / space.state_bins)[inside] + 1e-5)
            chunk = action_chunk(ep["action"], t, HORIZON, ep["action"].shape[1])
            ids = space.action_tokens(p["actions"], e.action_range)
            assert len(ids) == len(p["actions"]) and ids == tok.encode(chunk)
            back, ok = tok.decode(ids, HORIZON, chunk.shape[1])
            assert ok
            bound = tok.bin_widths().max() / 2 + 1e-5 if d == 0 else 0.15
            assert np.abs(back - chunk).max() <= bound, (d, np.abs(back - chunk).max())
            nxt = min(len(ep["action"]) - 1, t + policy["n_action_steps"])
            np.testing.assert_array_equal(
                space.video_codes(p["next_frame"]), np.concatenate([codes[c][nxt].ravel() for c in emb["cameras"]])
            )
            assert p["next_state"] == space.encode_state(ep["observation.state"][nxt], d)
            # kinds: action ids + ACT_CLOSE, then the next frame's ids + FRAME_CLOSE and the next state's
            # bins + STATE_CLOSE (STATE_OPEN between them is forced: no loss); PAD after the end
            n = int((tokens != PAD).sum())
            assert (tokens[n:] == PAD).all() and (kinds[n:] == KIND_NONE).all()
            act = np.flatnonzero(kinds == KIND_ACTION)
            assert tokens[act].tolist() == [*p["actions"], ACT_CLOSE]
            frame = np.flatnonzero(kinds == KIND_FRAME)
            assert tokens[frame].tolist() == [*p["next_frame"], FRAME_CLOSE, *p["next_state"], STATE_CLOSE]
            assert frame[-1] == n - 1 and tokens[frame[len(p["next_frame"])] + 1] == STATE_OPEN


def test_shard_dir_carries_what_a_checkpoint_needs(world) -> None:
    out = world["out"]
    space = TokenSpace.load(out / "token_space.json")
    policy = json.loads((out / "policy.json").read_text())
    assert policy["horizon"] == HORIZON and policy["n_action_steps"] == 3 and policy["history"] == 2
    assert policy["frame_loss"] and policy["next_state"]  # what robotok-imagine reads to predict the state
    assert policy["tasks"] == sorted({*ROBOTS["pick"][3], *ROBOTS["drive"][3]})
    assert [(e["state_dim"], e["action_dim"], e["hold"]) for e in policy["embodiments"]] == [
        (7, 5, [0.0] * 5),
        (4, 2, [0.0] * 2),
    ]
    (a0, a1), (b0, b1) = space.ranges()["action/pick"], space.ranges()["action/drive"]
    assert a1 <= b0 and a1 - a0 == world["toks"][0].vocab_size and b1 - b0 == world["toks"][1].vocab_size
    chunk = all_chunks(world["datasets"][1])[:4]
    back = load_action_tokenizer(out / "tokenizers/action/drive")
    assert back.encode_batch(chunk) == world["toks"][1].encode_batch(chunk)
    frames = world["datasets"][0].episode_frames(0, "observation.images.front")
    np.testing.assert_array_equal(
        VideoTokenizer.load(out / "tokenizers/video").encode(frames), world["vt"].encode(frames)
    )


def test_one_shared_tokenizer_pads_actions_to_its_dimension(world, tmp_path) -> None:
    pick, drive = world["datasets"]
    tok = BinningTokenizer(bins=16).fit(np.concatenate([all_chunks(pick), all_chunks(drive, dim=5)]))
    cfg = PretokenizeConfig(out=str(tmp_path / "shards"), horizon=HORIZON, history=1)
    out = pretokenize([("pick", pick), ("drive", drive)], [tok], world["vt"], cfg, progress=False)
    space, shards = TokenSpace.load(out), TokenShards(out)
    assert [r.name for r in space.action_ranges] == ["shared"]
    assert [e.action_range for e in space.embodiments] == [0, 0]
    row = int(np.flatnonzero(np.asarray(shards.episodes)[:, 0] == pick.num_episodes)[0])  # first drive row
    ids = space.action_tokens(space.parse(shards.tokens[row])["actions"], 0)
    back, ok = tok.decode(ids, HORIZON, 5)
    assert ok and len(ids) == HORIZON * 5 and np.abs(back[:, 2:]).max() <= tok.bin_widths().max() / 2


@pytest.mark.parametrize("stride", [[3], [3, 1]])
def test_stride_keeps_exactly_the_rows_of_every_stride_th_step(world, tmp_path, stride) -> None:
    """--stride 3 encodes only the frames its rows show; each row equals the stride-1 row of that step. With one
    stride per dataset (3 1) the first dataset's rows are strided and the second's all kept."""
    from dataclasses import replace

    cfg = replace(world["cfg"], out=str(tmp_path / "strided"), stride=stride)
    strided = TokenShards(
        pretokenize(
            list(zip(("pick", "drive"), world["datasets"], strict=True)),
            world["toks"],
            world["vt"],
            cfg,
            progress=False,
        )
    )
    full = TokenShards(world["out"])
    rows = {tuple(e): r for r, e in enumerate(np.asarray(full.episodes))}
    got = [tuple(e) for e in np.asarray(strided.episodes)]
    n_first = world["datasets"][0].num_episodes  # episode ids count the first dataset's episodes first
    assert got == [e for e in rows if e[1] % (stride[0] if e[0] < n_first else stride[-1]) == 0]
    assert len(stride) == 1 or any(e[0] >= n_first and e[1] % 3 for e in got)
    for r, e in enumerate(got):
        n = int((np.asarray(strided.tokens[r]) != PAD).sum())
        np.testing.assert_array_equal(strided.tokens[r][:n], full.tokens[rows[e]][:n])
        np.testing.assert_array_equal(strided.kinds[r][:n], full.kinds[rows[e]][:n])


def test_frame_keep_writes_the_next_frame_as_a_change_to_the_current_one(world, tmp_path) -> None:
    """--frame-keep: every row's next frame resolves, against the row's current frame, to the recorded codes;
    the KEEP id stands exactly where a cell is unchanged, and everything else equals the plain rows."""
    from dataclasses import replace

    class BlockMeans(VideoTokenizer):  # codes that follow the sliding pattern (the fixture's net gives one code)
        def encode(self, frames: np.ndarray) -> np.ndarray:
            blocks = frames[..., 0].reshape(len(frames), H // 8, 8, W // 8, 8).mean(axis=(2, 4))
            return (blocks // 64).astype(np.int64) * 3 + 1

    vt = BlockMeans(cfg=world["vt"].cfg, model=world["vt"].model)
    datasets = list(zip(("pick", "drive"), world["datasets"], strict=True))
    cfg = replace(world["cfg"], out=str(tmp_path / "keep"), frame_keep=True)
    out = pretokenize(datasets, world["toks"], vt, cfg, progress=False)
    base = pretokenize(
        datasets, world["toks"], vt, replace(cfg, out=str(tmp_path / "plain"), frame_keep=False), progress=False
    )
    kept, full = TokenShards(out), TokenShards(base)
    space, plain = TokenSpace.load(out / "token_space.json"), TokenSpace.load(base / "token_space.json")
    assert space.keep_id is not None and json.loads((out / "policy.json").read_text())["frame_keep"]
    n_keep = n_cells = 0
    for r in range(len(kept)):
        p, q = space.parse(kept.tokens[r]), plain.parse(full.tokens[r])
        current = np.asarray(q["steps"][-1][0]) - plain.video_start
        want = np.asarray(q["next_frame"]) - plain.video_start
        ids = np.asarray(p["next_frame"])
        np.testing.assert_array_equal(ids == space.keep_id, want == current)
        np.testing.assert_array_equal(space.resolve_frame(ids, [current]).ravel(), want)
        np.testing.assert_array_equal(kept.kinds[r], full.kinds[r])
        assert p["prompt"] == q["prompt"] and p["next_state"] == q["next_state"]
        n_keep, n_cells = n_keep + int((ids == space.keep_id).sum()), n_cells + ids.size
    assert 0 < n_keep < n_cells  # the data has both kinds of cell: the test can see a mix-up
    with pytest.raises(ValueError, match="needs --frame-loss"):
        replace(world["cfg"], frame_loss=False, frame_keep=True)


def test_inference_builds_the_same_context_as_the_shards(world, tmp_path) -> None:
    """Replaying an episode through Policy gives, at every step, the context of that step's shard row."""
    from robotok.policy.inference import Policy

    out, ckpt = world["out"], tmp_path / "ckpt"
    shutil.copytree(out, ckpt)
    shards = TokenShards(out)
    cfg = ModelConfig(vocab_size=shards.vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=shards.seq_len + 64)
    save_file(Transformer(cfg).state_dict(), ckpt / "model.safetensors")
    (ckpt / "config.json").write_text(json.dumps({"model": asdict(cfg)}))
    policy = Policy.from_checkpoint(ckpt)
    rows = {tuple(e): r for r, e in enumerate(np.asarray(shards.episodes))}
    for d, i in [(0, 0), (0, 1), (1, 0)]:
        ds = world["datasets"][d]
        e_i = i if d == 0 else world["datasets"][0].num_episodes + i
        ep = ds.episode(i)
        policy.reset()
        cams = policy.embodiments[d]["cameras"]
        for t in range(len(ep["action"])):
            obs = {
                "pixels": {c: ep[f"observation.images.{c}"][t] for c in ROBOTS[ds.info["robot_type"]][2]},
                "agent_pos": ep["observation.state"][t],
                "task": ep["task"],
            }
            policy._observe(obs)
            ctx = policy._context(obs["task"])
            assert policy._embodiment == d and cams
            assert ctx == np.asarray(shards.tokens[rows[(e_i, t)]])[: len(ctx)].tolist(), (d, i, t)
    chunk = policy.predict_chunk(obs)
    assert chunk.shape == (HORIZON, 2) and chunk.dtype == np.float32 and np.isfinite(chunk).all()


def test_cli_writes_shards_and_reports_bad_input(world, tmp_path, monkeypatch, capsys) -> None:
    root = world["root"]
    world["toks"][0].save(tmp_path / "tok_pick")
    world["vt"].save(tmp_path / "video")
    args = [
        "robotok-pretokenize",
        "--dataset",
        str(root / "pick"),
        "--action-tokenizer",
        str(tmp_path / "tok_pick"),
        "--video-tokenizer",
        str(tmp_path / "video"),
        "--out",
        str(tmp_path / "shards"),
        "--horizon",
        "6",
    ]
    monkeypatch.setattr(sys, "argv", args)
    main()
    assert len(TokenShards(tmp_path / "shards")) == int(world["datasets"][0].episode_lengths.sum())
    assert "sequences" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", args[:3] + ["--action-tokenizer", str(tmp_path / "nope")] + args[5:])
    with pytest.raises(SystemExit, match="robotok-pretokenize: error: .*nope is not a directory"):
        main()
    monkeypatch.setattr(sys, "argv", args + ["--cameras", "top"])
    with pytest.raises(SystemExit, match="none of --cameras"):
        main()


def test_a_group_of_datasets_is_one_robot_normalised_by_its_first(world, tmp_path, monkeypatch, capsys) -> None:
    """``--dataset A+B``: B's episodes join A's robot (one embodiment, one action range), and the token space
    stays A's, so a checkpoint trained on A's shards can go on training on the group's (robotok-train --init)."""
    root = world["root"]
    more = LeRobotDataset(write_dataset(tmp_path / "more", "pick", 2, 7))  # other episodes of the same robot
    world["toks"][0].save(tmp_path / "tok_pick")
    world["vt"].save(tmp_path / "video")
    common = ["--action-tokenizer", str(tmp_path / "tok_pick"), "--video-tokenizer", str(tmp_path / "video"),
              "--horizon", "6", "--cameras", "front", "wrist"]  # fmt: skip
    for name, data in (("alone", str(root / "pick")), ("group", f"{root / 'pick'}+{more.root}")):
        argv = ["robotok-pretokenize", "--dataset", data, "--out", str(tmp_path / name), *common]
        monkeypatch.setattr(sys, "argv", argv)
        main()
    alone, group = TokenShards(tmp_path / "alone"), TokenShards(tmp_path / "group")
    assert len(group) == len(alone) + int(more.episode_lengths.sum())
    assert (tmp_path / "alone/token_space.json").read_text() == (tmp_path / "group/token_space.json").read_text()
    meta = json.loads((tmp_path / "group/meta.json").read_text())
    assert meta["datasets"] == [{"name": "pick", "episodes": 5}]
    np.testing.assert_array_equal(group.tokens[: len(alone)], alone.tokens)  # A's rows first, unchanged
    space = TokenSpace.load(tmp_path / "group/token_space.json")
    first_b = int(np.flatnonzero(np.asarray(group.episodes)[:, 0] == 3)[0])  # B's first episode, first step
    row, ep = space.parse(group.tokens[first_b]), more.episode(0, load_images=False)
    assert row["prompt"] == ep["task"]
    ids = space.action_tokens(row["actions"], 0)
    assert ids == list(world["toks"][0].encode(action_chunk(ep["action"], 0, 6, ep["action"].shape[1])))
    monkeypatch.setattr(sys, "argv", ["robotok-pretokenize", "--dataset", f"{root / 'pick'}+{root / 'drive'}",
                                      "--out", str(tmp_path / "bad"), *common])  # fmt: skip
    with pytest.raises(SystemExit, match="cannot join .*a group is one robot"):
        main()
    assert not (tmp_path / "bad").exists()


def test_a_code_cache_encodes_each_episode_once_and_changes_no_row(world, tmp_path, monkeypatch) -> None:
    """``--code-cache``: a second run (a round of corrections: the same datasets plus a new one) encodes only
    the new dataset's episodes and writes the same rows as a run without the cache; a re-recorded directory
    or another video tokenizer misses the cache instead of reading stale codes."""
    root, vt, tok = world["root"], world["vt"], world["toks"][0]
    encoded: list[int] = []
    encode = vt.encode
    monkeypatch.setattr(vt, "encode", lambda frames: encoded.append(len(frames)) or encode(frames))
    base = {"cameras": ("front", "wrist"), "horizon": HORIZON, "n_action_steps": 3, "history": 2,
            "history_stride": 2, "frame_loss": True, "state_bins": 128}  # fmt: skip
    more = write_dataset(tmp_path / "more", "pick", 2, 7)

    def run(name: str, parts: list[Path], cache: str = "") -> TokenShards:
        ds = LeRobotDataset(parts[0]) if len(parts) == 1 else DatasetGroup([LeRobotDataset(p) for p in parts])
        cfg = PretokenizeConfig(out=str(tmp_path / name), code_cache=cache, **base)
        return TokenShards(pretokenize([("pick", ds)], [tok], vt, cfg, progress=False))

    cache = str(tmp_path / "codes")
    plain = run("plain", [root / "pick", more])
    encoded.clear()
    first = run("first", [root / "pick"], cache)
    assert len(encoded) == 2 * 3  # 3 episodes x 2 cameras, encoded once each
    encoded.clear()
    second = run("second", [root / "pick", more], cache)
    assert len(encoded) == 2 * 2  # only the new directory's 2 episodes x 2 cameras
    np.testing.assert_array_equal(second.tokens, plain.tokens)
    np.testing.assert_array_equal(second.kinds, plain.kinds)
    np.testing.assert_array_equal(second.tokens[: len(first)], first.tokens)
    assert len(list(Path(cache).rglob("*.npz"))) == 4  # (pick, more) x (front, wrist)
    encoded.clear()
    write_dataset(tmp_path / "again", "pick", 2, 8)  # other episodes where `more` was: a new key
    shutil.rmtree(more)
    shutil.move(tmp_path / "again" / "pick", more)
    run("rerecorded", [root / "pick", more], cache)
    assert len(encoded) == 2 * 2
    encoded.clear()
    with torch.no_grad():
        next(vt.model.parameters()).add_(0.5)  # another tokenizer: every episode is encoded again
    try:
        run("retrained", [root / "pick"], cache)
    finally:
        with torch.no_grad():
            next(vt.model.parameters()).sub_(0.5)
    assert len(encoded) == 2 * 3


def test_a_stride_per_dataset_must_name_every_dataset(world, tmp_path) -> None:
    from dataclasses import replace

    cfg = replace(world["cfg"], out=str(tmp_path / "bad"), stride=[3, 1, 1])
    with pytest.raises(ValueError, match="one per dataset"):
        pretokenize(list(zip(("pick", "drive"), world["datasets"], strict=True)), world["toks"], world["vt"], cfg)
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def ground(world, tmp_path_factory):
    """Shards with a pointing set: robotok-record-scenes at the fixture's image size, then pretokenize --scenes."""
    from dataclasses import replace

    from robotok.sim_envs.scenes import ScenesConfig, load_scenes, record_scenes

    root = tmp_path_factory.mktemp("ground")
    path = root / "scenes.npz"
    record_scenes(ScenesConfig(scenes=12, out=path, width=W, height=H), progress=False)
    cfg = replace(world["cfg"], out=str(root / "shards"), scenes=(str(path),))
    out = pretokenize(list(zip(("pick", "drive"), world["datasets"], strict=True)), world["toks"], world["vt"], cfg)
    return {"scenes": load_scenes(path), "out": out}


def ground_train_config(data: Path, out: Path, **kw):
    from robotok.policy.train import TrainConfig

    base = dict(data=data, out=out, preset="micro", steps=4, batch_size=4, dtype="fp32", eval_every=4, lr=1e-3)
    return TrainConfig(**{**base, "prompt_film": 8, "ground_weight": 1.0, "ground_batch": 8, **kw})


def test_scenes_become_the_pointing_set_that_training_reads(world, ground, tmp_path) -> None:
    """robotok-record-scenes -> pretokenize --scenes -> ground.npz: each scene's frame as video ids, its prompt as
    ``BOS bytes SEP`` and the cell holding the prompted cup's pixel; robotok-train's pointing loss reads it."""
    from dataclasses import replace

    from robotok.policy.train import train

    scenes, out = ground["scenes"], ground["out"]
    space = TokenSpace.load(out / "token_space.json")
    with np.load(out / "ground.npz") as z:
        g = {k: z[k] for k in z}
    inside = (scenes["pixel"] >= 0).all(1) & (scenes["pixel"] < H).all(1)
    assert len(g["cell"]) == inside.sum() == json.loads((out / "meta.json").read_text())["ground_scenes"] > 0
    grid = world["vt"].grid
    for i, k in enumerate(np.flatnonzero(inside)):
        r, c = (scenes["pixel"][k] * np.array(grid) / np.array([H, W])).astype(int)
        assert g["cell"][i] == r * grid[1] + c
        np.testing.assert_allclose(g["point"][i], scenes["pixel"][k] * np.array(grid) / np.array([H, W]), rtol=1e-6)
        er, ec = scenes["effector"][k]
        if 0 <= er < H and 0 <= ec < W:  # the grip in frame: its cell and place, as the cup's
            assert g["effector_cell"][i] == int(er * grid[0] / H) * grid[1] + int(ec * grid[1] / W)
            np.testing.assert_allclose(g["effector"][i], [er * grid[0] / H, ec * grid[1] / W], rtol=1e-6)
        else:
            assert g["effector_cell"][i] == -1 and np.isnan(g["effector"][i]).all()
        ids = g["prompt"][i][g["prompt"][i] != PAD]
        assert list(ids) == space.encode_prompt(str(scenes["prompt"][k]))
        expect = space.video_ids(world["vt"].encode(scenes["frames"][k : k + 1])).ravel()
        np.testing.assert_array_equal(g["video"][i], expect)
    tc = ground_train_config(out, tmp_path / "policy")
    train(tc)
    log = [json.loads(x) for x in (tmp_path / "policy" / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[-1]["train/ground_loss"]) and 0.0 <= log[-1]["val/ground_acc"] <= 1.0
    with pytest.raises(SystemExit, match="no ground.npz"):
        train(replace(tc, data=world["out"]))
    # the pointed places (the cup's, the grip's) handed to the policy
    train(replace(tc, out=tmp_path / "keypoint", keypoint=True, keypoint_effector=True))
    log = [json.loads(x) for x in (tmp_path / "keypoint" / "log.jsonl").read_text().splitlines()]
    assert 0.0 <= log[-1]["val/ground_place_err"] < max(grid) and np.isfinite(log[-1]["train/ground_loss"])
    assert 0.0 <= log[-1]["val/ground_effector_err"] < max(grid)
    assert (g["effector_cell"] >= 0).any()
    with pytest.raises(ValueError, match="set --ground-weight"):
        replace(tc, ground_weight=0.0, keypoint=True)


@pytest.mark.slow
def test_the_pointing_loss_under_torchrun_matches_one_process(ground, tmp_path) -> None:
    """2 DDP ranks (gloo) split each step's scenes as they split its sequences: the same weights as one process."""
    import os
    import subprocess

    from robotok.policy.train import train

    train(ground_train_config(ground["out"], tmp_path / "one"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = ["--data", str(ground["out"]), "--out", str(tmp_path / "ddp"), "--preset", "micro", "--steps", "4"]
    args += ["--batch-size", "4", "--dtype", "fp32", "--eval-every", "4", "--lr", "1e-3", "--prompt-film", "8"]
    args += ["--ground-weight", "1.0", "--ground-batch", "8"]
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        + ["-m", "robotok.policy.train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    one, ddp = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    assert max(float((one[k] - ddp[k]).abs().max()) for k in one) < 1e-5
