"""robotok-export and the torch-free runtime: bundle integrity, parity with the torch Policy, errors, int8.

The checkpoint is made by the real code paths: expert episodes of the real envs written as LeRobot datasets,
fitted action tokenizers, a randomly initialised video tokenizer, ``pretokenize`` and two steps of
``robotok.policy.train``. The model is random, which is all parity needs: greedy decoding of a random model is
still a deterministic sequence of ids.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

import robotok.sim_envs  # noqa: F401  (registers the env ids)
from robotok.datasets.lerobot_v3 import LeRobotDataset, LeRobotDatasetWriter
from robotok.policy import runtime
from robotok.policy.export import GRAPHS, export_bundle, main
from robotok.policy.inference import Policy
from robotok.policy.pretokenize import PretokenizeConfig, action_chunk, pretokenize
from robotok.policy.runtime import RobotPolicy
from robotok.policy.train import TrainConfig, train
from robotok.sim_envs import make_expert
from robotok.tokenizers.action import BinningTokenizer, BSplineTokenizer, DCTBPETokenizer
from robotok.tokenizers.video import VideoTokenizer, VideoTokenizerConfig

HORIZON = 4
ENVS = {"pick_cup": "robotok/PickCup-v0", "drive": "robotok/Drive-v0"}
REPO = Path(__file__).resolve().parents[1]


def rollout(env_id: str, seed: int, steps: int) -> list[tuple[dict, np.ndarray]]:
    """(observation with "task", expert action) per step of one expert episode."""
    env = gym.make(env_id)
    obs, info = env.reset(seed=seed)
    expert, out = make_expert(env), []
    for _ in range(steps):
        action = np.asarray(expert(obs), dtype=np.float32)
        out.append(({**obs, "task": info["prompt"]}, action))
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            break
    env.close()
    return out


def write_dataset(root: Path, episodes: list[list[tuple[dict, np.ndarray]]]) -> LeRobotDataset:
    first = episodes[0][0][0]
    cams = sorted(first["pixels"])
    features = {
        "observation.state": {"dtype": "float32", "shape": list(first["agent_pos"].shape)},
        "action": {"dtype": "float32", "shape": list(episodes[0][0][1].shape)},
        **{f"observation.images.{c}": {"dtype": "video", "shape": [64, 64, 3]} for c in cams},
    }
    with LeRobotDatasetWriter(root, fps=20, features=features, robot_type=root.name) as w:
        for ep in episodes:
            frames = {
                "observation.state": np.stack([o["agent_pos"] for o, _ in ep]),
                "action": np.stack([a for _, a in ep]),
                **{f"observation.images.{c}": np.stack([o["pixels"][c] for o, _ in ep]) for c in cams},
            }
            w.add_episode(frames, ep[0][0]["task"])
    return LeRobotDataset(root)


def chunks_of(ds: LeRobotDataset) -> np.ndarray:
    acts = [ds.episode(i, load_images=False)["action"] for i in range(ds.num_episodes)]
    return np.stack([action_chunk(a, t, HORIZON, a.shape[1]) for a in acts for t in range(len(a))])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A two-robot checkpoint (binning for the arm, DCT+BPE for the car), its fp32 bundle, and unseen episodes."""
    root = tmp_path_factory.mktemp("export")
    datasets, toks = [], []
    for name, env_id in ENVS.items():
        ds = write_dataset(root / name, [rollout(env_id, seed, 24) for seed in (0, 1)])
        chunks = chunks_of(ds)
        tok = BinningTokenizer(bins=32) if name == "pick_cup" else DCTBPETokenizer(scale=4.0, bpe_vocab_size=48)
        datasets.append((name, ds))
        toks.append(tok.fit(chunks))
    torch.manual_seed(0)
    video = VideoTokenizer(cfg=VideoTokenizerConfig(image_size=(64, 64), downsample=16, levels=(4, 4), channels=(8,)))
    with torch.no_grad():  # wide random weights: frames then spread over the whole codebook
        for p in video.model.parameters():
            p.normal_(0.0, 0.3)
    shards = pretokenize(
        datasets,
        toks,
        video,
        PretokenizeConfig(
            out=str(root / "shards"),
            cameras=("front", "wrist", "top"),
            horizon=HORIZON,
            n_action_steps=2,
            history=2,
            state_bins=32,
        ),
        progress=False,
    )
    ckpt = train(
        TrainConfig(
            data=shards,
            out=root / "ckpt",
            preset="micro",
            prompt_film=16,  # the prompt's encoding then travels through the graphs and the runtime
            prompt_context=True,  # and reaches every position's input there
            n_action_steps=(3, 2),  # each robot executes its own count (the arm 3, the car the shards' 2)
            steps=2,
            batch_size=4,
            warmup_steps=1,
            dtype="fp32",
            device="cpu",
            val_fraction=0.0,
            eval_every=100,
            log_every=1,
            ckpt_every=100,
        )
    )
    # Widen the random weights (as if initialised at a larger scale) so that greedy ids vary with the context.
    weights = load_file(ckpt / "model.safetensors")
    save_file(
        {k: v + 0.3 * torch.randn(v.shape) if v.dim() == 2 else v for k, v in weights.items()},
        ckpt / "model.safetensors",
    )
    bundle = export_bundle(ckpt, root / "bundle")
    episodes = [rollout(ENVS[name], seed, 16) for name in ENVS for seed in (100, 101)]  # unseen seeds
    return {"root": root, "ckpt": ckpt, "bundle": bundle, "episodes": episodes}


def test_bundle_is_complete_checked_and_checksummed(world) -> None:
    bundle = world["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (manifest["format"], manifest["format_version"]) == (runtime.BUNDLE_FORMAT, runtime.BUNDLE_VERSION)
    assert {"robotok_version", "onnx_version", "onnxruntime_version", "torch_version", "opset"} <= manifest.keys()
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert {
        *GRAPHS.values(),
        "token_space.json",
        "policy.json",
        "robotok_runtime.py",
        "action/pick_cup.json",
        "action/drive.json",
    } <= on_disk
    for name, digest in manifest["files"].items():
        assert runtime.sha256_file(bundle / name) == digest
    for g in GRAPHS.values():
        onnx.checker.check_model(str(bundle / g), full_check=True)
        model = onnx.load(str(bundle / g))
        assert model.opset_import[0].version == manifest["opset"]
    decode = onnx.load(str(bundle / GRAPHS["decode"]))
    assert decode.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1  # the single-step graph
    assert (bundle / "robotok_runtime.py").read_bytes() == Path(runtime.__file__).read_bytes()
    # the export's own check: prefill and decode logits against torch on random ids
    assert manifest["check"]["prefill_max_abs_logit_diff"] < 1e-4
    assert manifest["check"]["decode_max_abs_logit_diff"] < 1e-4
    assert not list(bundle.parent.glob(".bundle.tmp-*"))


def test_bundle_reproduces_the_torch_policy(world) -> None:
    """Greedy token ids identical and actions equal on >= 50 env observations of both robots."""
    torch_policy = Policy.from_checkpoint(world["ckpt"])
    robot = RobotPolicy(world["bundle"])
    n, lengths, distinct = 0, set(), set()
    for episode in world["episodes"]:
        torch_policy.reset()
        robot.reset()
        for obs, _ in episode:
            expected = torch_policy.predict_chunk(obs)
            got = robot.infer(obs)
            assert got["action_ids"] == torch_policy.last_action_ids, n
            np.testing.assert_allclose(got["actions"], expected, atol=1e-6, rtol=0)
            lengths.add(len(got["action_ids"]))
            distinct.update(got["action_ids"])
            n += 1
    assert n >= 50 and robot.decode_failures == torch_policy.decode_failures
    assert {20} < lengths  # both robots: fixed 20 ids (arm), variable DCT+BPE (car)
    assert len(distinct) >= 20 and 0 < robot.decode_failures < n  # varied ids (30 here); holds and decoded chunks
    assert len(robot.chunk_latencies_ms) == n and robot.last_latency_ms > 0
    # select_action: the same queue of n_action_steps per chunk
    episode = world["episodes"][0]
    torch_policy.reset()
    robot.reset()
    for obs, _ in episode:
        np.testing.assert_allclose(robot.select_action(obs), torch_policy.select_action(obs), atol=1e-6, rtol=0)
    assert robot.executed == torch_policy.executed == [3, 2]
    assert len(robot.chunk_latencies_ms) == n + -(-len(episode) // robot.executed[robot.embodiment_of(episode[0][0])])


@pytest.mark.parametrize("via", ["bundle copy", "robotok.policy.runtime"])
def test_runtime_runs_without_torch(world, tmp_path, via: str) -> None:
    obs = [o for o, _ in world["episodes"][0][:3]]
    np.savez(
        tmp_path / "obs.npz",
        **{f"{i}_{c}": o["pixels"][c] for i, o in enumerate(obs) for c in o["pixels"]},
        **{f"{i}_state": o["agent_pos"] for i, o in enumerate(obs)},
    )
    bundle = world["bundle"]
    if via == "bundle copy":  # the robot's view: the bundle folder alone; importing torch would fail
        shutil.copytree(bundle, tmp_path / "robot_bundle")
        bundle = tmp_path / "robot_bundle"
        head = (
            "class NoTorch:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ImportError('torch is not on the robot')\n"
            f"sys.meta_path.insert(0, NoTorch()); sys.path.insert(0, {str(bundle)!r})\n"
            "from robotok_runtime import RobotPolicy\n"
        )
    else:
        head = "from robotok.policy.runtime import RobotPolicy\n"
    script = (
        "import json, sys\nimport numpy as np\n" + head + f"data = np.load({str(tmp_path / 'obs.npz')!r})\n"
        f"policy = RobotPolicy({str(bundle)!r})\nout = []\n"
        f"for i in range({len(obs)}):\n"
        f"    o = {{'pixels': {{c: data[f'{{i}}_{{c}}'] for c in {sorted(obs[0]['pixels'])!r}}},\n"
        f"         'agent_pos': data[f'{{i}}_state'], 'task': {obs[0]['task']!r}}}\n"
        "    out.append(policy.infer(o)['actions'].tolist())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    torch_policy = Policy.from_checkpoint(world["ckpt"])
    expected = [torch_policy.predict_chunk(o) for o in obs]
    np.testing.assert_allclose(np.asarray(json.loads(res.stdout.splitlines()[-1])), np.stack(expected), atol=1e-6)


def smooth_chunks(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(8)[None, :, None]
    x = np.sin(0.5 * t + rng.uniform(0, 6, (n, 1, dim))) * rng.uniform(0.2, 1, (n, 1, dim))
    x[..., -1] = np.where(x[..., -1] > 0, 1.0, -1.0)  # a two-level gripper dimension
    return x


@pytest.mark.parametrize("kind", ["binning", "bspline", "dct_bpe"])
def test_action_decoders_match_the_tokenizers(tmp_path, kind: str) -> None:
    """Any id sequence (well-formed, short, long, out of range) decodes to the same chunk and flag."""
    from robotok.policy.export import action_tokenizer_json

    chunks = smooth_chunks(300, 3, 0)
    tok = {
        "binning": lambda: BinningTokenizer(bins=16, strategy="quantile"),
        "bspline": lambda: BSplineTokenizer(num_control_points=5, bins=32),
        "dct_bpe": lambda: DCTBPETokenizer(scale=5.0, bpe_vocab_size=120),
    }[kind]().fit(chunks)
    tok.save(tmp_path / kind)
    (tmp_path / "t.json").write_text(json.dumps(action_tokenizer_json(tmp_path / kind)))
    dec = runtime.load_action_decoder(tmp_path / "t.json")
    rng = np.random.default_rng(1)
    cases = [tok.encode(c) for c in smooth_chunks(20, 3, 2)]
    cases += [rng.integers(-2, tok.vocab_size + 2, int(rng.integers(0, 40))).tolist() for _ in range(60)]
    flags = set()
    for ids in cases:
        for horizon in (8, 5):
            want, ok = tok.decode(ids, horizon, 3)
            got, got_ok = dec.decode(ids, horizon, 3)
            assert got_ok == ok, ids
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
            flags.add(ok)
    assert flags == {True, False}


def bad(obs: dict, **change) -> dict:
    out = {**obs, "pixels": dict(obs["pixels"])}
    for k, v in change.items():
        if k in out["pixels"]:
            out["pixels"][k] = v
        else:
            out[k] = v
    return out


def test_clear_errors_for_bad_observations_and_bundles(world, tmp_path) -> None:
    robot = RobotPolicy(world["bundle"])
    obs = world["episodes"][0][0][0]
    no_wrist = {**obs, "pixels": {"front": obs["pixels"]["front"]}}
    no_task = {k: v for k, v in obs.items() if k != "task"}
    nan_state = bad(obs, agent_pos=np.full_like(obs["agent_pos"], np.nan))
    small = bad(obs, wrist=obs["pixels"]["wrist"][:32])
    floats = bad(obs, wrist=obs["pixels"]["wrist"].astype(np.float32))
    for o, match in [
        (no_wrist, "lacks camera 'wrist'"),
        (no_task, "no 'task'"),
        (nan_state, "NaN"),
        (small, r"\(32, 64, 3\).*uint8 \(64, 64, 3\)"),
        (floats, "float32.*uint8"),
    ]:
        robot.reset()
        robot._embodiment = 0 if o is no_wrist else None
        with pytest.raises(ValueError, match=match):
            robot.infer(o)
    robot.reset()
    with pytest.raises(ValueError, match="matches 0 of the embodiments"):
        robot.infer(bad(obs, agent_pos=np.zeros(3, np.float32)))

    copy = tmp_path / "b"
    shutil.copytree(world["bundle"], copy)
    with open(copy / "policy.json", "a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match="checksum mismatch for policy.json"):
        RobotPolicy(copy)
    RobotPolicy(copy, verify=False)  # an explicit opt-out still loads
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="version 99.*re-export"):
        RobotPolicy(copy, verify=False)
    with pytest.raises(ValueError, match="no manifest.json"):
        RobotPolicy(tmp_path)


def test_int8_bundle_via_cli_gives_valid_actions(world, tmp_path) -> None:
    out = tmp_path / "int8"
    res = subprocess.run(
        [sys.executable, "-m", "robotok.policy.export", str(world["ckpt"]), "--out", str(out), "--int8"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["int8"]
        and manifest["check"]["int8_decode_max_abs_logit_diff"] < 0.5 * manifest["check"]["logit_scale"]
    )
    ops = {n.op_type for n in onnx.load(str(out / GRAPHS["decode"])).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops
    fp32_size = (world["bundle"] / GRAPHS["decode"]).stat().st_size
    assert (out / GRAPHS["decode"]).stat().st_size < 0.6 * fp32_size
    robot = RobotPolicy(out)
    n = 0
    for episode in world["episodes"]:
        robot.reset()
        for obs, action in episode[:6]:
            chunk = robot.infer(obs)["actions"]
            assert chunk.shape == (HORIZON, action.shape[0]) and chunk.dtype == np.float32
            assert np.isfinite(chunk).all() and np.abs(chunk).max() <= 1.0
            assert all(robot.action_ranges[robot._embodiment]["start"] <= i for i in robot.last_action_ids)
            n += 1
    assert n == 24


def test_export_is_atomic_and_refuses_a_foreign_folder(world, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(world["bundle"], out)
    before = (out / "manifest.json").read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("robotok.policy.export.quantize_int8", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(world["ckpt"], out, int8=True)
    assert (out / "manifest.json").read_text() == before  # the old bundle is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # and no staging folder is left
    monkeypatch.undo()
    export_bundle(world["ckpt"], out, check=False)  # replacing a bundle works
    assert json.loads((out / "manifest.json").read_text())["check"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    for argv, msg in [
        ([str(world["ckpt"]), "--out", str(foreign)], "not a bundle"),
        ([str(tmp_path / "nope"), "--out", str(tmp_path / "x")], "lacks config.json"),
    ]:
        monkeypatch.setattr(sys, "argv", ["robotok-export", *argv])
        with pytest.raises(SystemExit, match=f"robotok-export: error: .*{msg}"):
            main()
    assert (foreign / "todo.txt").read_text() == "keep me"


def test_goal_policy_predicts_the_same_goal_and_actions_in_the_bundle(world, tmp_path) -> None:
    """A policy trained with goals (policy.json "goal") generates one state id per state dimension before each
    chunk; the torch-free runtime generates the same goal ids and the same action ids."""
    import json
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(world["ckpt"], ckpt)
    config = json.loads((ckpt / "policy.json").read_text())
    (ckpt / "policy.json").write_text(json.dumps({**config, "goal": True}))
    torch_policy = Policy.from_checkpoint(ckpt)
    robot = RobotPolicy(export_bundle(ckpt, tmp_path / "bundle"))
    fed, run = [0], robot._run

    def counting(ids, pos, cache):
        fed[0] += len(ids)
        return run(ids, pos, cache)

    robot._run = counting
    lo, hi = torch_policy.space.ranges()["state"]
    n = 0
    for episode in world["episodes"][::2]:
        torch_policy.reset()
        robot.reset()
        for obs, _ in episode[:6]:
            expected = torch_policy.predict_chunk(obs)
            fed[0] = 0
            got = robot.infer(obs)
            goal = torch_policy.last_goal_ids
            assert len(goal) == len(obs["agent_pos"]) and all(lo <= g < hi for g in goal)
            assert robot.last_goal_ids == goal and got["action_ids"] == torch_policy.last_action_ids
            np.testing.assert_allclose(got["actions"], expected, atol=1e-6, rtol=0)
            # the actions go on in the cache the goal was generated in: no id of the context is fed twice
            n_context = len(torch_policy._context(obs["task"])) + len(goal) + 2
            assert fed[0] <= n_context + len(got["action_ids"]), (fed[0], n_context)
            n += 1
    assert n >= 10
