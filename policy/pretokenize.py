"""Pre-tokenise LeRobot datasets into token shards: tokenise once, train many times.

``robotok-pretokenize --dataset DIR [DIR...] --action-tokenizer DIR [DIR...] --video-tokenizer DIR --out SHARDS``

Each episode's frames are decoded once and encoded by the video tokenizer in batches; states are binned
and action chunks tokenised; then one sequence per step (or every ``--stride`` steps) is built with
:meth:`robotok.tokenizers.space.TokenSpace.sequence`, the same grammar the policy builds its context with
at inference (see that module for the layout).

Several datasets, one model: each dataset is one *embodiment* with its own state normalisation, and each
gets its OWN action tokenizer (pass one ``--action-tokenizer`` per dataset) whose ids form a disjoint range
of the one token space. Why not pad every action to the widest robot and share one tokenizer? Padding
makes a 2-D car spend as many action tokens as a 5-D arm (binning: H*5 instead of H*2 ids per chunk,
longer sequences for nothing), mixes the two robots' ranges into one normalisation, and lets the model
emit an arm token for the car. With disjoint ranges the decoding mask admits only the ids of the robot
being driven. At inference the embodiment is told apart by its state size and camera names (and by the
prompt if those tie). A single ``--action-tokenizer`` shared by all datasets still works: actions are
then zero-padded to the tokenizer's dimension and all embodiments share one range.

Edge of an episode: history steps before the first frame repeat the first frame; an action chunk running
past the last step repeats the last action (LeRobot's convention); the world-model frame is clamped to
the last frame.

Memory: two passes. The first (no video decoding) tokenises actions and sizes every sequence, so the
shard's length is known; it keeps the states and action ids of all episodes (tens of MB for 100k steps).
The second decodes and encodes one episode's frames at a time and streams token rows into memory-mapped
temporary files next to ``--out`` (the token corpus is never held in RAM), which ``write_shards`` then
writes out. The sequence building runs at ~17k sequences/s on one core; video encoding dominates.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robotok.policy.code_cache import CodeCache, episode_codes
from robotok.policy.ground import ground_set
from robotok.policy.shards import KIND_ACTION, KIND_FRAME, KIND_GOAL, write_shards
from robotok.tokenizers.space import PAD, ActionRange, Embodiment, TokenSpace, history_indices

POLICY_FORMAT = "robotok-policy-v1"
FIXED_LENGTH_KINDS = ("BinningTokenizer", "BSplineTokenizer")  # for tokenizers that do not say


@dataclass
class PretokenizeConfig:
    """robotok-pretokenize: LeRobot datasets + fitted tokenizers -> token shards for robotok-train."""

    dataset: tuple[str, ...] = ()
    """LeRobot v3 dataset directories (one per task/robot), e.g. runs/demo/data/pick_cup runs/demo/data/drive.
    ``A+B`` reads several directories of one robot as one dataset (demonstrations + corrections from
    robotok-record-corrections --policy): the first one's states set the normalisation."""
    action_tokenizer: tuple[str, ...] = ()
    """Fitted action tokenizer directories: one per dataset (disjoint id ranges), or one shared by all."""
    video_tokenizer: str = "runs/demo/tokenizers/video"
    """Trained video tokenizer directory."""
    out: str = "runs/demo/shards"
    """Shard directory to write (replaced atomically)."""
    cameras: tuple[str, ...] = ("front",)
    """Cameras to tokenise, in order; each dataset uses those it has (at least one)."""
    horizon: int = 0
    """Action chunk length H; 0 takes the horizon the action tokenizer was fitted with."""
    n_action_steps: int = 0
    """Actions executed per predicted chunk, and how many steps ahead the world-model frame is (policy.json
    ``frame_steps``); 0 means H // 2. robotok-train --n-action-steps may set a different executed count."""
    history: int = 1
    """Observed steps (frame + state) in the context, the current one last."""
    history_stride: int = 1
    """Steps between two history steps (1: consecutive frames)."""
    stride: list[int] = field(default_factory=lambda: [1])
    """Emit one sequence every this many steps of an episode: one value for all datasets, or one per dataset
    (e.g. ``4 1``: many short PickCup episodes for the variety of their scenes, as many sequences as before)."""
    frame_loss: bool = False
    """Append the frame n_action_steps ahead and the state at that step as world-model targets (KIND_FRAME)."""
    frame_keep: bool = False
    """With --frame-loss: write that frame as a change to the current one, a KEEP id where a cell's code is
    unchanged (see robotok.tokenizers.space); the world model then predicts which cells change."""
    goal: bool = False
    """Insert the episode's final state as a goal the model predicts before each action chunk (KIND_GOAL)."""
    state_bins: int = 256
    """Bins per state dimension (ids shared by all dimensions)."""
    max_episodes: int = 0
    """Use at most this many episodes per dataset (0: all); for quick runs."""
    scenes: tuple[str, ...] = ()
    """Files of robotok-record-scenes (first frames of fresh scenes, the prompted object's pixel): tokenised into
    ``ground.npz`` for robotok-train's pointing loss (``--ground-weight``)."""
    code_cache: str = ""
    """Directory that keeps the video codes of every dataset directory encoded here, for the next run with the
    same video tokenizer (see robotok.policy.code_cache): a round of corrections then encodes only its own
    episodes. Empty: no cache."""

    def stride_of(self, d: int) -> int:
        """The --stride of dataset ``d``."""
        return self.stride[d if len(self.stride) > 1 else 0]

    def __post_init__(self) -> None:
        if min(self.history, self.history_stride, *self.stride) < 1 or self.horizon < 0 or self.n_action_steps < 0:
            raise ValueError(
                f"history {self.history}, history_stride {self.history_stride}, stride {self.stride} "
                f"must be >= 1; horizon {self.horizon}, n_action_steps {self.n_action_steps} >= 0"
            )
        if self.state_bins < 2 or self.max_episodes < 0 or not self.cameras:
            raise ValueError(
                f"state_bins {self.state_bins} (>= 2), max_episodes {self.max_episodes} (>= 0), "
                f"cameras {self.cameras} (at least one)"
            )
        if self.frame_keep and not self.frame_loss:
            raise ValueError("--frame-keep writes the next frame as a change: it needs --frame-loss")
        if self.horizon and self.n_action_steps > self.horizon:
            raise ValueError(f"n_action_steps {self.n_action_steps} > horizon {self.horizon}")


def action_chunk(actions: np.ndarray, t: int, horizon: int, dim: int) -> np.ndarray:
    """actions[T, A] -> chunk[horizon, dim] from step t, the last action repeated past the end, zero-padded."""
    idx = np.minimum(np.arange(t, t + horizon), len(actions) - 1)
    chunk = np.zeros((horizon, dim), dtype=np.float32)
    chunk[:, : actions.shape[1]] = actions[idx]
    return chunk


def tokenizer_dim(tok: Any, default: int) -> int:
    """The action dimension an action tokenizer was fitted on (its ``dim``), else ``default``."""
    dim = getattr(tok, "dim", None)
    return int(dim) if isinstance(dim, (int, np.integer)) else default


def _encode_chunks(tok: Any, chunks: np.ndarray) -> list[list[int]]:
    if hasattr(tok, "encode_batch"):
        return [[int(i) for i in ids] for ids in tok.encode_batch(chunks)]
    return [[int(i) for i in tok.encode(c)] for c in chunks]


def pretokenize(
    datasets: list[tuple[str, Any]],
    action_tokenizers: list[Any],
    video_tokenizer: Any,
    cfg: PretokenizeConfig,
    progress: bool = True,
) -> Path:
    """Tokenise ``(name, LeRobotDataset)`` pairs with tokenizer objects into the shard dir ``cfg.out``."""
    if len(action_tokenizers) not in (1, len(datasets)):
        raise ValueError(
            f"{len(action_tokenizers)} action tokenizers for {len(datasets)} datasets: give one per "
            "dataset, or one shared by all"
        )
    if len(cfg.stride) not in (1, len(datasets)):
        raise ValueError(f"--stride: one value, or one per dataset ({len(datasets)}); got {cfg.stride}")
    shared = len(action_tokenizers) == 1 and len(datasets) > 1
    horizon = cfg.horizon or int(getattr(action_tokenizers[0], "horizon", 0) or 0)
    if horizon < 1:
        raise ValueError("the action tokenizer does not record its horizon; pass --horizon H")
    for tok in action_tokenizers:
        fitted = getattr(tok, "horizon", None)
        if isinstance(fitted, (int, np.integer)) and fitted != horizon:
            raise ValueError(f"--horizon {horizon} but an action tokenizer was fitted with horizon {fitted}")
    n_act = cfg.n_action_steps or max(1, horizon // 2)
    if n_act > horizon:
        raise ValueError(f"n_action_steps {n_act} > horizon {horizon}")
    max_adim = max(int(ds.episode(0, load_images=False)["action"].shape[1]) for _, ds in datasets)

    # ---- pass 1: states, action tokens, lengths (no video) ----------------------------------------
    embs, eps = [], []  # per dataset: description; per episode: (dataset index, task, states, action token lists)
    for d, (name, ds) in enumerate(datasets):
        cams = [c for c in cfg.cameras if f"observation.images.{c}" in ds.camera_keys]
        if not cams:
            raise ValueError(f"dataset {name} has cameras {ds.camera_keys}, none of --cameras {list(cfg.cameras)}")
        tok = action_tokenizers[0 if len(action_tokenizers) == 1 else d]
        n_eps = ds.num_episodes if not cfg.max_episodes else min(cfg.max_episodes, ds.num_episodes)
        states, lengths, tasks, adim = [], [], [], None
        for i in tqdm(range(n_eps), desc=f"actions {name}", disable=not progress, leave=False):
            ep = ds.episode(i, load_images=False)
            s, a = np.asarray(ep["observation.state"], np.float32), np.asarray(ep["action"], np.float32)
            assert s.ndim == a.ndim == 2 and len(s) == len(a) > 0, f"episode {i}: state {s.shape}, action {a.shape}"
            adim = a.shape[1]
            tdim = tokenizer_dim(tok, max_adim if shared else adim)
            if tdim < adim:
                raise ValueError(f"dataset {name} has {adim}-D actions, its action tokenizer {tdim}-D")
            steps = range(0, len(a), cfg.stride_of(d))
            acts = _encode_chunks(tok, np.stack([action_chunk(a, t, horizon, tdim) for t in steps]))
            eps.append((d, ep["task"], s, acts))
            states.append(s)
            lengths += [len(x) for x in acts]
            tasks.append(ep["task"])
        s_all = np.concatenate(states[: getattr(ds, "anchor_episodes", len(states))])  # a group: its first part
        q01, q99 = np.quantile(s_all, 0.01, axis=0), np.quantile(s_all, 0.99, axis=0)
        embs.append(
            {
                "name": name,
                "cameras": cams,
                "image_size": [int(x) for x in video_tokenizer.cfg.image_size],  # its encoder checks the frames
                "state_dim": int(s_all.shape[1]),
                "action_dim": int(adim),
                "tokenizer_dim": tdim,
                "tasks": sorted(set(tasks)),
                "fps": float(ds.fps),
                "lo": q01.tolist(),
                "hi": q99.tolist(),
                "lengths": lengths,
                "episodes": n_eps,
            }
        )

    ranges = []
    for k, tok in enumerate(action_tokenizers):
        lens = [n for j, e in enumerate(embs) if shared or j == k for n in e["lengths"]]
        tdim = embs[k]["tokenizer_dim"]
        if hasattr(tok, "tokens_per_chunk"):  # the tokenizer's own word on its length and its bound
            length, max_len = tok.tokens_per_chunk(horizon, tdim), tok.max_tokens_per_chunk(horizon, tdim)
        else:
            fixed = type(tok).__name__ in FIXED_LENGTH_KINDS and min(lens) == max(lens)
            length, max_len = (max(lens) if fixed else None), int(np.ceil(max(lens) * 1.25)) + 1
        if max(lens) > max_len or (length is not None and min(lens) != length):
            raise ValueError(
                f"action tokenizer {k} gave chunks of {min(lens)}..{max(lens)} ids, "
                f"it declares length {length}, at most {max_len}"
            )
        ranges.append(
            ActionRange(
                "shared" if shared else embs[k]["name"],
                size=int(tok.vocab_size),
                length=length,
                max_length=int(max_len),
            )
        )
    space = TokenSpace(
        cfg.state_bins,
        int(video_tokenizer.vocab_size),
        ranges,
        [Embodiment(e["name"], e["lo"], e["hi"], action_range=0 if shared else d) for d, e in enumerate(embs)],
        video_keep=cfg.frame_keep,
    )

    # sizes through the grammar itself, with dummy codes: no second copy of the layout to drift
    grid = tuple(video_tokenizer.grid) if hasattr(video_tokenizer, "grid") else (1, video_tokenizer.tokens_per_frame)
    zero_codes = np.zeros(grid, np.int64)
    rows = []  # (episode number, step, length)
    for e_i, (d, task, s, acts) in enumerate(eps):
        e = embs[d]
        steps = [([zero_codes] * len(e["cameras"]), s[0])] * cfg.history
        base = len(
            space.sequence(
                task,
                steps,
                [],
                d,
                [zero_codes] * len(e["cameras"]) if cfg.frame_loss else None,
                s[-1] if cfg.goal else None,
                s[0] if cfg.frame_loss else None,
            ).tokens
        )
        rows += [(e_i, t, base + len(a)) for t, a in zip(range(0, len(s), cfg.stride_of(d)), acts, strict=True)]
    seq_len = max(r[2] for r in rows)
    n = len(rows)

    # ---- pass 2: video codes, token rows into memory maps ---------------------------------------
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        assert PAD == 0, "memory maps start zero-filled: PAD must be id 0"
        tokens = np.memmap(work / "tokens.bin", dtype=np.int32, mode="w+", shape=(n, seq_len))
        kinds = np.memmap(work / "kinds.bin", dtype=np.uint8, mode="w+", shape=(n, seq_len))
        episodes = np.zeros((n, 2), np.int32)
        row, ep_of_ds = 0, [0] * len(datasets)
        cache = CodeCache(cfg.code_cache, video_tokenizer) if cfg.code_cache else None
        bar = tqdm(total=n, desc="pretokenize", unit="seq", disable=not progress)
        for e_i, (d, task, s, acts) in enumerate(eps):
            name, ds = datasets[d]
            e = embs[d]
            starts = range(0, len(s), cfg.stride_of(d))
            # the frames some sequence shows (with --stride > 1 a third or more are never used)
            used = {j for t in starts for j in history_indices(t, cfg.history, cfg.history_stride)}
            if cfg.frame_loss:
                used |= {min(len(s) - 1, t + n_act) for t in starts}
            keys = [f"observation.images.{c}" for c in e["cameras"]]
            codes, at = episode_codes(ds, ep_of_ds[d], keys, len(s), sorted(used), video_tokenizer, cache)
            for t, a in zip(starts, acts, strict=True):
                hist = history_indices(t, cfg.history, cfg.history_stride)
                steps = [([c[at[j]] for c in codes], s[j]) for j in hist]
                nxt = min(len(s) - 1, t + n_act)
                seq = space.sequence(
                    task,
                    steps,
                    a,
                    d,
                    [c[at[nxt]] for c in codes] if cfg.frame_loss else None,
                    s[-1] if cfg.goal else None,
                    s[nxt] if cfg.frame_loss else None,
                )
                assert len(seq.tokens) == rows[row][2], f"row {row}: {len(seq.tokens)} tokens, sized {rows[row][2]}"
                tokens[row, : len(seq.tokens)] = seq.tokens
                kinds[row, seq.action[0] : seq.action[1]] = KIND_ACTION
                if seq.frame is not None:
                    kinds[row, seq.frame[0] : seq.frame[1]] = KIND_FRAME
                if seq.next_state is not None:
                    kinds[row, seq.next_state[0] : seq.next_state[1]] = KIND_FRAME
                if seq.goal is not None:
                    kinds[row, seq.goal[0] : seq.goal[1]] = KIND_GOAL
                episodes[row] = (e_i, t)
                row += 1
            bar.update(len(acts))
            ep_of_ds[d] += 1
        bar.close()
        tokens.flush()
        kinds.flush()

        stage = work / "stage"
        stage.mkdir()
        space.save(stage / "token_space.json")
        for k, tok in enumerate(action_tokenizers):
            tok.save(stage / "tokenizers" / "action" / ranges[k].name)
        video_tokenizer.save(stage / "tokenizers" / "video")
        policy = {
            "format": POLICY_FORMAT,
            "horizon": horizon,
            "n_action_steps": n_act,  # executed per chunk (robotok-train --n-action-steps may change it)
            "frame_steps": n_act,  # the world-model frame follows the context frame by this many steps
            "history": cfg.history,
            "history_stride": cfg.history_stride,
            "frame_loss": cfg.frame_loss,
            "next_state": cfg.frame_loss,  # the state after the next frame is a target too
            "frame_keep": cfg.frame_keep,
            "goal": cfg.goal,
            "seq_len": seq_len,
            "cameras": sorted({c for e in embs for c in e["cameras"]}, key=list(cfg.cameras).index),
            "image_size": embs[0]["image_size"],
            "fps": embs[0]["fps"],
            "state_dim": max(e["state_dim"] for e in embs),
            "action_dim": max(e["action_dim"] for e in embs),
            "tasks": sorted({t for e in embs for t in e["tasks"]}),
            "video_tokenizer": "tokenizers/video",
            "embodiments": [
                {
                    "name": e["name"],
                    "tasks": e["tasks"],
                    "cameras": e["cameras"],
                    "state_dim": e["state_dim"],
                    "action_dim": e["action_dim"],
                    "tokenizer_dim": e["tokenizer_dim"],
                    "image_size": e["image_size"],
                    "fps": e["fps"],
                    "action_range": 0 if shared else d,
                    "action_tokenizer": f"tokenizers/action/{ranges[0 if shared else d].name}",
                    # what a chunk that fails to decode is replaced by: zero velocities / steering / throttle
                    "hold": [0.0] * e["action_dim"],
                }
                for d, e in enumerate(embs)
            ],
        }
        (stage / "policy.json").write_text(json.dumps(policy, indent=2))
        meta = {
            "vocab_size": space.vocab_size,
            "tasks": policy["tasks"],
            "history": cfg.history,
            "horizon": horizon,
            "frame_loss": cfg.frame_loss,
            "frame_keep": cfg.frame_keep,
            "goal": cfg.goal,
            "datasets": [{"name": e["name"], "episodes": e["episodes"]} for e in embs],
            "num_episodes": len(eps),
            "num_tokens": int(sum(r[2] for r in rows)),
        }
        if cfg.scenes:
            from robotok.sim_envs.scenes import load_scenes

            ground = ground_set([load_scenes(p) for p in cfg.scenes], space, video_tokenizer)
            np.savez(stage / "ground.npz", **ground)
            meta["ground_scenes"] = len(ground["cell"])
        extra = {p.name: p for p in stage.iterdir()}
        written = write_shards(out, tokens, kinds, episodes, meta, extra_files=extra)
        if cache is not None:
            cache.flush()
            if progress:
                print(f"video codes: {cache.hits} episode cameras from {cfg.code_cache}, {cache.misses} encoded")
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unique_names(paths: list[Path]) -> list[str]:
    names = []
    for p in paths:
        base, k = p.name or "dataset", 2
        name = base
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def main() -> None:
    import tyro

    cfg = tyro.cli(PretokenizeConfig)
    err = "robotok-pretokenize: error:"
    if not cfg.dataset or not cfg.action_tokenizer:
        raise SystemExit(
            f"{err} give --dataset DIR [DIR...] and --action-tokenizer DIR [DIR...] "
            "(record with robotok-record, fit with robotok-fit-tokenizers)"
        )
    for p in cfg.scenes:
        if not Path(p).is_file():
            raise SystemExit(f"{err} --scenes {p} is not a file; make it with robotok-record-scenes")
    for p in [*(q for d in cfg.dataset for q in d.split("+")), *cfg.action_tokenizer, cfg.video_tokenizer]:
        if not Path(p).is_dir():
            raise SystemExit(
                f"{err} {p} is not a directory; make it first (see README: robotok-record, "
                "robotok-fit-tokenizers, robotok-train-video-tokenizer)"
            )
    from robotok.datasets.lerobot_v3 import DatasetGroup, LeRobotDataset
    from robotok.tokenizers.action import load_action_tokenizer
    from robotok.tokenizers.video import VideoTokenizer

    groups = [[Path(p) for p in d.split("+")] for d in cfg.dataset]
    try:
        datasets = list(
            zip(
                _unique_names([g[0] for g in groups]),
                [LeRobotDataset(g[0]) if len(g) == 1 else DatasetGroup([LeRobotDataset(p) for p in g]) for g in groups],
                strict=True,
            )
        )
        out = pretokenize(
            datasets,
            [load_action_tokenizer(p) for p in cfg.action_tokenizer],
            VideoTokenizer.load(cfg.video_tokenizer),
            cfg,
        )
    except ValueError as e:
        raise SystemExit(f"{err} {e}") from None
    meta = json.loads((out / "meta.json").read_text())
    print(
        f"wrote {out}: {meta['num_sequences']} sequences x {meta['seq_len']} tokens, vocab {meta['vocab_size']}, "
        f"{meta['num_episodes']} episodes"
    )


if __name__ == "__main__":
    main()
