"""Which video codec keeps 64x64 sim frames faithful: PSNR, size and speed per codec/pix_fmt/crf.

Frames come from the real PickCup env (scripted expert) when it imports, else from a small MuJoCo
scene of the same kind (table, two small cups, a moving gripper). The baseline is LeRobot's default
(AV1, yuv420p, crf 30). Run: ``python benchmarks/video_codec.py [--episodes 3]``.

Last, the read speed of the datasets' own format (H.264 yuv444p crf 0): ``decode_episode`` against a
baseline that converts each frame with ``frame.to_ndarray(format="rgb24")`` (a colour converter set up per
frame, how frames were read before), the same pixels required of both.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import av
import numpy as np

import robotok  # noqa: F401  (MUJOCO_GL)
from robotok.datasets.video import VideoStreamWriter, decode_episode

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only, not its configuration banner

SCENE = """
<mujoco>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1=".55 .5 .45" rgb2=".45 .42 .4" width="64" height="64"/>
    <material name="grid" texture="grid" texrepeat="4 4"/>
  </asset>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1"/>
    <geom type="plane" size="1 1 .1" material="grid"/>
    <geom type="box" pos="0 0 .2" size=".4 .3 .02" rgba=".6 .4 .25 1"/>
    <geom name="red" type="cylinder" pos=".1 .05 .25" size=".025 .03" rgba=".85 .1 .1 1"/>
    <geom name="blue" type="cylinder" pos="-.12 -.05 .25" size=".025 .03" rgba=".1 .2 .85 1"/>
    <body name="grip" mocap="true" pos="0 0 .5"><geom type="box" size=".03 .02 .04" rgba=".7 .7 .75 1"/></body>
    <camera name="front" pos="0 -.9 .75" xyaxes="1 0 0 0 .6 .8"/>
  </worldbody>
</mujoco>
"""


def scene_frames(episodes: int, steps: int = 100) -> list[np.ndarray]:
    """Fallback frames: a gripper sweeping over two small cups, [steps, 64, 64, 3] per episode."""
    import mujoco

    model = mujoco.MjModel.from_xml_string(SCENE)
    data = mujoco.MjData(model)
    renderer = mujoco.Renderer(model, 64, 64)
    out = []
    for e in range(episodes):
        rng = np.random.default_rng(e)
        a, b = rng.uniform(-0.2, 0.2, 2), rng.uniform(-0.2, 0.2, 2)
        frames = []
        for t in range(steps):
            s = t / (steps - 1)
            data.mocap_pos[0] = [*(a + (b - a) * s), 0.45 - 0.15 * np.sin(np.pi * s)]
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera="front")
            frames.append(renderer.render())
        out.append(np.stack(frames))
    return out


def env_frames(episodes: int) -> list[np.ndarray] | None:
    """Frames of the front camera of PickCup expert episodes, or None when the env is not there yet."""
    try:
        import gymnasium as gym

        from robotok.sim_envs import make_expert

        env = gym.make("robotok/PickCup-v0")
    except Exception as exc:  # the env is optional for this benchmark
        print(f"PickCup env unavailable ({type(exc).__name__}: {exc}); using the fallback MuJoCo scene")
        return None
    out = []
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        expert = make_expert(env)
        frames = [obs["pixels"]["front"]]
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(expert(obs))
            frames.append(obs["pixels"]["front"])
            done = term or trunc
        out.append(np.stack(frames))
    env.close()
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def measure(episodes: list[np.ndarray], codec: str, pix_fmt: str, crf: int, fps: int = 20) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "v.mp4")
        t0 = time.perf_counter()
        writer = VideoStreamWriter(path, fps, 64, 64, codec=codec, pix_fmt=pix_fmt, crf=crf)
        spans = [writer.add_episode(ep) for ep in episodes]
        writer.close()
        t_enc = time.perf_counter() - t0
        size = os.path.getsize(path)
        t0 = time.perf_counter()
        decoded = [decode_episode(path, a, b, fps, len(ep)) for (a, b), ep in zip(spans, episodes, strict=True)]
        t_dec = time.perf_counter() - t0
    ref, got = np.concatenate(episodes), np.concatenate(decoded)
    err = np.abs(ref.astype(np.int16) - got.astype(np.int16))
    n = len(ref)
    return {
        "psnr": psnr(ref, got),
        "p99": float(np.percentile(err, 99)),
        "max": int(err.max()),
        "bytes_per_frame": size / n,
        "enc_fps": n / t_enc,
        "dec_fps": n / t_dec,
    }


def decode_per_frame(path: str, from_ts: float, to_ts: float, fps: int) -> np.ndarray:
    """The baseline reader: every frame converted to RGB on its own (a converter set up per frame)."""
    first, stop, out = round(from_ts * fps), round(to_ts * fps), []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if first > 0:
            container.seek(int(from_ts / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            idx = round(float(frame.pts * stream.time_base) * fps)
            if first <= idx < stop:
                out.append(frame.to_ndarray(format="rgb24"))
            elif idx >= stop:
                break
    return np.stack(out)


def read_speed(episodes: list[np.ndarray], repeats: int = 3, fps: int = 20) -> None:
    """Frames per second of ``decode_episode`` and of the per-frame baseline (best of ``repeats``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "v.mp4")
        writer = VideoStreamWriter(path, fps, 64, 64, codec="h264", pix_fmt="yuv444p", crf=0)
        spans = [writer.add_episode(ep) for ep in episodes]
        writer.close()
        n = sum(len(ep) for ep in episodes)
        best = {}
        for name, read in [("per-frame converter (baseline)", decode_per_frame), ("decode_episode", decode_episode)]:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                frames = [read(path, a, b, fps) for a, b in spans]
                times.append(time.perf_counter() - t0)
            best[name] = (min(times), frames)
    (t_base, ref), (t_new, got) = best.values()
    assert all((a == b).all() for a, b in zip(ref, got, strict=True)), "decode_episode read other pixels"
    print(f"\nread speed, h264 yuv444p crf 0, {n} frames in {len(episodes)} episodes (best of {repeats}):")
    for name, (t, _) in best.items():
        print(f"  {name:32} {n / t:8.0f} frames/s  {t / n * 1e3:6.3f} ms/frame")
    print(f"  decode_episode vs baseline: {t_base / t_new:.1f}x, identical pixels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3)
    args = parser.parse_args()
    episodes = env_frames(args.episodes) or scene_frames(args.episodes)
    print(f"{sum(len(e) for e in episodes)} frames of 64x64 in {len(episodes)} episodes")
    configs = [
        ("av1", "yuv420p", 30),
        ("av1", "yuv420p", 20),
        ("h264", "yuv420p", 23),
        ("h264", "yuv420p", 18),
        *[("h264", "yuv444p", crf) for crf in (23, 18, 12, 10, 4, 0)],
    ]
    base = None
    print(
        f"{'codec':6} {'pix_fmt':8} {'crf':>3} {'PSNR dB':>8} {'p99 err':>7} {'max err':>7} {'B/frame':>8} "
        f"{'enc fps':>8} {'dec fps':>8} {'size vs base':>12}"
    )
    for codec, pix_fmt, crf in configs:
        r = measure(episodes, codec, pix_fmt, crf)
        base = base or r
        print(
            f"{codec:6} {pix_fmt:8} {crf:>3} {r['psnr']:8.2f} {r['p99']:7.0f} {r['max']:7d} "
            f"{r['bytes_per_frame']:8.0f} {r['enc_fps']:8.0f} {r['dec_fps']:8.0f} "
            f"{r['bytes_per_frame'] / base['bytes_per_frame']:11.2f}x"
        )
    read_speed(episodes)


if __name__ == "__main__":
    main()
