"""Video tokenizer: FSQ index maths, shapes and input checks, save/load, ONNX parity, training and resume."""

from __future__ import annotations

import itertools
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import robotok
from robotok.tokenizers import train_video
from robotok.tokenizers.train_video import FrameSet, TrainVideoConfig, psnr, split_episodes
from robotok.tokenizers.video import FSQ, VideoAutoencoder, VideoTokenizer, VideoTokenizerConfig

TINY = dict(channels=(16, 32, 32), res_blocks=1)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: small convs gain nothing from two, and spinning threads stall on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def scenes(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Coloured discs ("cups") and a grey bar ("gripper") on a striped, noisy table: uint8 [n, size, size, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = (0.55 + 0.06 * np.sin(x * 0.5))[..., None] * np.array([0.85, 0.65, 0.45])
        img = img + rng.normal(0, 0.01, img.shape)
        for _ in range(3):
            cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(3, 6)]
            img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0.1, 1.0, 3)
        gx = rng.uniform(8, size - 8)
        img[(np.abs(x - gx) < 3) & (y < rng.uniform(10, 30))] = 0.3
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def randomise(model: torch.nn.Module) -> None:
    """Non-trivial weights and batch-norm statistics (zero-initialised convs would hide mistakes)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, 0.0, 1.5 / (m.weight[0].numel() ** 0.5))
            torch.nn.init.normal_(m.bias, 0.0, 0.1)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (7, 5, 3), (2, 2), (8, 8, 8, 6, 5)])
def test_fsq_ids_codes_round_trip_is_exact_for_every_id(levels: tuple[int, ...]) -> None:
    fsq = FSQ(levels)
    n = int(np.prod(levels))
    assert fsq.codebook_size == n
    ids = torch.arange(n).view(1, n, 1)  # [B, h, w] with every id once
    codes = fsq.indices_to_codes(ids)
    assert codes.shape == (1, len(levels), n, 1)
    assert torch.equal(fsq.codes_to_indices(codes), ids)
    # Every id maps to a distinct code, i.e. the map is a bijection onto the grid.
    assert len({tuple(c) for c in codes[0, :, :, 0].T.tolist()}) == n


def test_fsq_output_lies_on_the_grid_and_reaches_every_level() -> None:
    levels = (8, 5, 3)
    fsq = FSQ(levels)
    z = (torch.randn(64, 3, 8, 8) * 4).requires_grad_()
    q = fsq(z)
    half = torch.tensor([lv // 2 for lv in levels]).view(1, -1, 1, 1).float()
    digits = q * half + half
    assert torch.allclose(digits, digits.round(), atol=1e-5), "codes off the FSQ grid"
    for c, lv in enumerate(levels):
        assert sorted(digits[:, c].round().long().unique().tolist()) == list(range(lv))
    # The straight-through estimator lets gradients reach the encoder.
    q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # Quantised codes map to ids and back unchanged.
    assert torch.equal(fsq.indices_to_codes(fsq.codes_to_indices(q.detach())), q.detach())


@pytest.mark.parametrize("downsample,grid", [(8, (8, 8)), (16, (4, 4))])
def test_encode_decode_shapes_and_dtypes(downsample: int, grid: tuple[int, int]) -> None:
    tok = VideoTokenizer(VideoTokenizerConfig(downsample=downsample, **TINY), batch_size=3)
    frames = scenes(5)
    ids = tok.encode(frames)  # 5 frames in batches of 3
    assert ids.dtype == np.int64 and ids.shape == (5, *grid)
    assert tok.grid == grid and tok.tokens_per_frame == grid[0] * grid[1] and tok.vocab_size == 1000
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    rec = tok.decode(ids)
    assert rec.dtype == np.uint8 and rec.shape == frames.shape
    assert tok.encode(frames[:0]).shape == (0, *grid) and tok.decode(ids[:0]).shape == (0, 64, 64, 3)
    # Batching inside encode does not change the ids.
    assert np.array_equal(np.concatenate([tok.encode(frames[i : i + 1]) for i in range(5)]), ids)


def test_bad_inputs_raise_value_errors_naming_the_problem() -> None:
    tok = VideoTokenizer(VideoTokenizerConfig(**TINY))
    frames = scenes(2)
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(frames.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        tok.encode(frames[0])
    with pytest.raises(ValueError, match="shape"):
        tok.encode(frames[:, :32])
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        tok.decode(np.full((1, 8, 8), 1000))
    with pytest.raises(ValueError, match="integer array"):
        tok.decode(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="downsample"):
        VideoTokenizerConfig(downsample=6)
    with pytest.raises(ValueError, match="image_size"):
        VideoTokenizerConfig(image_size=(60, 64))
    with pytest.raises(ValueError, match="levels"):
        VideoTokenizerConfig(levels=(8, 1))


def test_save_load_gives_identical_ids_and_decodes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = VideoTokenizer(VideoTokenizerConfig(levels=(7, 5, 5), **TINY))
    randomise(tok.model)
    frames = scenes(4)
    ids = tok.encode(frames)
    assert len(np.unique(ids)) > 10
    tok.save(tmp_path / "vt")
    tok2 = VideoTokenizer.load(tmp_path / "vt")
    assert tok2.cfg == tok.cfg and tok2.vocab_size == 175
    assert np.array_equal(tok2.encode(frames), ids)
    assert np.array_equal(tok2.decode(ids), tok.decode(ids))
    with pytest.raises(FileNotFoundError, match="no video tokenizer"):
        VideoTokenizer.load(tmp_path / "missing")


def test_onnx_encoder_matches_torch_ids(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    tok = VideoTokenizer(VideoTokenizerConfig(**TINY))
    randomise(tok.model)
    enc = tok.encoder_module()
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(
        enc,
        (torch.rand(2, 3, 64, 64),),
        str(path),
        input_names=["frames"],
        output_names=["ids"],
        dynamic_axes={"frames": {0: "batch"}, "ids": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = scenes(5, seed=3)
    x = frames.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    got = sess.run(None, {"frames": x})[0]
    assert got.dtype == np.int64 and got.shape == (5, 8, 8)
    assert np.array_equal(got, tok.encode(frames))
    assert len(np.unique(got)) > 10


def test_dtype_auto_takes_bf16_only_where_the_cpu_multiplies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an AVX2-only CPU bf16 autocast runs reference kernels (a 2,000-step run went from minutes to hours):
    auto must then train in fp32, and explicit choices are obeyed."""
    cpu = torch.device("cpu")
    real = robotok.cpu_has_bf16_matmul
    for flags, want in (("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 fma", False)):
        monkeypatch.setattr(robotok, "cpu_has_bf16_matmul", lambda text=flags: real(text))
        assert (train_video.resolve_dtype("auto", cpu) is not None) is want
        assert train_video.resolve_dtype("fp32", cpu) is None and train_video.resolve_dtype("bf16", cpu) is not None


def test_tiny_model_overfits_a_handful_of_frames(tmp_path: Path) -> None:
    torch.manual_seed(0)
    frames = scenes(4, seed=1, size=32)  # 32x32 at 4x down-sampling: 8x8 tokens, a few seconds of CPU
    cfg = TrainVideoConfig(out=tmp_path, steps=300, batch_size=4, warmup=10, lr=1e-2, downsample=4, **TINY)
    tok = VideoTokenizer(cfg.model_config((32, 32)))
    before = psnr(frames, tok.decode(tok.encode(frames))).mean()
    opt = torch.optim.AdamW(tok.model.parameters(), lr=cfg.lr)
    train_video.train_steps(tok.model, opt, torch.from_numpy(frames.transpose(0, 3, 1, 2).copy()), cfg, progress=False)
    after = psnr(frames, tok.decode(tok.encode(frames))).mean()
    assert after > 25.0 and after > before + 10, (before, after)


def test_object_weights_lift_small_objects_over_the_dominant_colour() -> None:
    x = torch.full((2, 3, 16, 16), 0.6)  # a table colour
    x[0, :, 4:7, 9:12] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # a 3x3 red cup in frame 0
    w = train_video.object_weights(x, gain=4.0)
    assert w.shape == (2, 1, 16, 16)
    assert torch.allclose(w[1], torch.ones_like(w[1]))  # no object: every pixel weighs 1
    assert torch.allclose(w[0, 0, 4:7, 9:12], torch.full((3, 3), 5.0))
    assert float(w[0].sum()) == pytest.approx(256 - 9 + 9 * 5.0)
    # The same error costs more on the cup than on the table, and the mean weight stays at one.
    cfg = TrainVideoConfig(object_weight=4.0, edge_weight=0.0)
    on_cup, on_table = x.clone(), x.clone()
    on_cup[0, :, 5, 10] += 0.2
    on_table[0, :, 12, 2] += 0.2
    assert train_video.reconstruction_loss(on_cup, x, cfg) > 2 * train_video.reconstruction_loss(on_table, x, cfg)
    flat = TrainVideoConfig(object_weight=0.0, edge_weight=0.0)
    assert torch.isclose(
        train_video.reconstruction_loss(on_cup, x, flat), train_video.reconstruction_loss(on_table, x, flat)
    )


def _fake_dataset_module(episodes: dict[str, list[np.ndarray]]) -> types.ModuleType:
    """A stand-in for robotok.datasets.lerobot_v3 exposing only what the trainer reads."""

    class LeRobotDataset:
        def __init__(self, root: Path) -> None:
            self.eps = episodes[Path(root).name]
            self.camera_keys = ["observation.images.front", "observation.images.wrist"]
            self.num_episodes = len(self.eps)

        def episode(self, i: int, load_images: bool = True) -> dict:
            return {"frame_index": np.arange(len(self.eps[i]))}

        def episode_frames(self, i: int, key: str) -> np.ndarray:
            return self.eps[i] if key.endswith("front") else 255 - self.eps[i]

    mod = types.ModuleType("robotok.datasets.lerobot_v3")
    mod.LeRobotDataset = LeRobotDataset
    return mod


def test_frame_loading_splits_by_episode_and_caps_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eps = {"a": [scenes(10, seed=s) for s in range(10)], "b": [scenes(6, seed=20 + s) for s in range(3)]}
    for name in eps:
        (tmp_path / name).mkdir()
    monkeypatch.setitem(sys.modules, "robotok.datasets.lerobot_v3", _fake_dataset_module(eps))
    cfg = TrainVideoConfig(dataset=(tmp_path / "a", tmp_path / "b"), max_frames=100, holdout=0.2)
    fs = train_video.load_frames(cfg)
    # (8 x 10 + 2 x 6 train frames) x 2 cameras = 184 > 100, so stride 2 -> 92 frames.
    assert len(fs.train) == 92 and fs.train.dtype == np.uint8
    tr_a, ho_a = split_episodes(10, 0.2, 0)
    assert len(ho_a) == 2 and not set(tr_a) & set(ho_a)
    assert set(fs.held_out) == {"a", "b"} and len(fs.held_out["a"]) == 2 * 10 * 2
    # No held-out frame appears in the training set.
    train_set = {f.tobytes() for f in fs.train}
    assert not any(f.tobytes() in train_set for f in fs.held_out["a"])
    with pytest.raises(SystemExit, match="no camera"):
        train_video.load_frames(TrainVideoConfig(dataset=(tmp_path / "a",), cameras=("top",)))
    with pytest.raises(SystemExit, match="not a directory"):
        train_video.load_frames(TrainVideoConfig(dataset=(tmp_path / "zzz",)))


def test_resume_after_interruption_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = FrameSet(train=scenes(8, seed=5), held_out={"x": scenes(3, seed=6)})
    common = dict(steps=6, batch_size=4, warmup=2, checkpoint_every=3, threads=1, **TINY)
    full = train_video.train(TrainVideoConfig(out=tmp_path / "full", **common), frames)

    save = train_video._save_checkpoint

    def save_then_stop(out, tok, opt, gen, step, cfg):
        save(out, tok, opt, gen, step, cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_video, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_video.train(TrainVideoConfig(out=tmp_path / "cut", **common), frames)
    monkeypatch.setattr(train_video, "_save_checkpoint", save)
    resumed = train_video.train(TrainVideoConfig(out=tmp_path / "cut", resume=True, **common), frames)
    a, b = VideoTokenizer.load(tmp_path / "full"), VideoTokenizer.load(tmp_path / "cut")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.allclose(va, vb, atol=1e-6), ka
    assert resumed["eval"]["x"]["psnr_db"] == pytest.approx(full["eval"]["x"]["psnr_db"], abs=1e-3)
    assert (tmp_path / "cut" / "eval.json").is_file()
    with pytest.raises(SystemExit, match="--resume"):
        train_video.train(TrainVideoConfig(out=tmp_path / "cut", resume=True, **{**common, "downsample": 16}), frames)


def test_gradients_reach_the_encoder_through_fsq_for_every_stage_count() -> None:
    for d, lv in itertools.product((2, 4, 16), ((8, 5, 5, 5), (5, 3))):
        m = VideoAutoencoder(VideoTokenizerConfig(downsample=d, levels=lv, **TINY))
        x = torch.rand(2, 3, 64, 64)
        y = m(x)
        assert y.shape == x.shape
        assert m.encode_ids(x).shape == (2, 64 // d, 64 // d)
        (y - x).square().mean().backward()
        first = m.encoder.net[0].weight.grad
        assert first is not None and first.abs().sum() > 0, (d, lv)
