"""robotok-pipeline end to end on the smoke preset: every stage's output exists, reads back and is valid."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest

from robotok.evaluate.pipeline import PipelineConfig, run, stage_state
from robotok.evaluate.pipeline_commands import STAGES, commands, done_files
from robotok.evaluate.presets import PRESETS


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    log = run(PipelineConfig(out=out, preset="smoke"))
    return out, log


@pytest.mark.slow
def test_every_stage_ran_and_left_its_outputs(smoke_run):
    out, log = smoke_run
    for stage in STAGES:
        assert not log["stages"][stage].get("skipped"), stage
        assert log["stages"][stage]["wall_s"] >= 0.0
        for f in done_files(stage, out, PRESETS["smoke"]):
            assert f.is_file(), f"{stage}: {f} missing"
    assert json.loads((out / "pipeline.json").read_text())["preset"] == "smoke"


@pytest.mark.slow
def test_datasets_read_back(smoke_run):
    from robotok.datasets.lerobot_v3 import LeRobotDataset

    out, _ = smoke_run
    p = PRESETS["smoke"]
    for task, adim, sdim in (("pickcup", 5, 6), ("drive", 2, 9)):
        ds = LeRobotDataset(out / "data" / task)
        assert ds.num_episodes == p.episodes[task]
        ep = ds.episode(0)
        t = len(ep["action"])
        assert ep["action"].shape == (t, adim) and ep["observation.state"].shape == (t, sdim)
        assert ep["observation.images.front"].shape == (t, p.image_size, p.image_size, 3)
        assert isinstance(ep["task"], str) and ep["task"]


@pytest.mark.slow
def test_tokenizers_load_and_round_trip(smoke_run):
    from robotok.datasets.lerobot_v3 import LeRobotDataset
    from robotok.tokenizers.action import load_action_tokenizer
    from robotok.tokenizers.video import VideoTokenizer

    out, _ = smoke_run
    p = PRESETS["smoke"]
    for task in ("pickcup", "drive"):
        tok = load_action_tokenizer(out / "tokenizers" / "action" / task / p.action_kind)
        actions = LeRobotDataset(out / "data" / task).episode(0, load_images=False)["action"]
        chunk = actions[: p.horizon]
        rec, ok = tok.decode(tok.encode(chunk), p.horizon, chunk.shape[1])
        assert ok and rec.shape == chunk.shape
        # within the bound of a 4-point cubic spline on a gripper step: a loose but real check
        assert np.abs(rec - chunk).mean() < 0.5
    vt = VideoTokenizer.load(out / "tokenizers" / "video")
    frames = LeRobotDataset(out / "data" / "pickcup").episode_frames(0, "observation.images.front")[:2]
    ids = vt.encode(frames)
    side = p.image_size // p.video_downsample
    assert ids.shape == (2, side, side) and ids.min() >= 0 and ids.max() < vt.vocab_size


@pytest.mark.slow
def test_shards_and_checkpoint_drive_both_envs(smoke_run):
    import robotok.sim_envs  # noqa: F401
    from robotok.policy import Policy
    from robotok.policy.shards import KIND_ACTION, TokenShards

    out, _ = smoke_run
    shards = TokenShards(out / "shards")
    assert len(shards) > 0 and (np.asarray(shards.kinds) == KIND_ACTION).any()
    cfg = json.loads((out / "policy" / "config.json").read_text())
    assert cfg["step"] == PRESETS["smoke"].correction_steps  # the final checkpoint: the correct stage's
    policy = Policy.from_checkpoint(out / "policy")
    for env_id, adim in (("robotok/PickCup-v0", 5), ("robotok/Drive-v0", 2)):
        env = gym.make(env_id)
        obs, info = env.reset(seed=123)
        policy.reset()
        chunk = policy.predict_chunk({**obs, "task": info["prompt"]})
        assert chunk.shape == (PRESETS["smoke"].horizon, adim) and np.isfinite(chunk).all()
        env.close()


@pytest.mark.slow
def test_eval_reports_have_the_keys(smoke_run):
    from robotok.evaluate.metrics import METRIC_KEYS

    out, _ = smoke_run
    rep = json.loads((out / "eval" / "report.json").read_text())
    assert rep["schema"] == "robotok.eval/1" and rep["policies"] == ["policy", "expert", "random"]
    for env in ("robotok/PickCup-v0", "robotok/Drive-v0"):
        for label in rep["policies"]:
            overall = rep["results"][env][label]["overall"]
            assert set(METRIC_KEYS) <= set(overall)
        # the scripted expert solves its own task: the eval wiring sees success when it happens
        assert rep["results"][env]["expert"]["overall"]["eval/success_rate"] == 1.0
    sweep = json.loads((out / "eval" / "sweep" / "report.json").read_text())
    assert sweep["config"]["prompt_sweep"]
    assert len(sweep["results"]["robotok/PickCup-v0"]["policy"]["per_target"]) >= 2  # every cup of the scene
    assert len(sweep["results"]["robotok/Drive-v0"]["policy"]["per_target"]) == 4  # every route
    expert = json.loads((out / "eval" / "expert" / "report.json").read_text())
    for env in ("robotok/PickCup-v0", "robotok/Drive-v0"):
        videos = expert["results"][env]["expert"]["videos"]
        assert videos and all((out / "eval" / "expert" / v).is_file() for v in videos), videos
    md = (out / "report.md").read_text()
    for heading in (
        "## Stages",
        "## Demonstrations",
        "## Tokenizers",
        "## Policy training",
        "## Evaluation on unseen seeds",
        "### Prompt grounding",
    ):
        assert heading in md
    assert (out / "plots" / "train_loss.png").is_file()


@pytest.mark.slow
def test_the_correct_stage_goes_on_from_the_policy_with_its_corrections(smoke_run):
    """The smoke run's correct stage, two rounds: robotok-record-corrections recorded the last policy's own states
    with the expert's labels, the demonstrations + corrections so far were pre-tokenised in the first shards'
    token space, and each policy was trained from the one before (its first loss is the trained model's, not
    chance)."""
    import robotok.sim_envs
    from robotok.datasets.lerobot_v3 import LeRobotDataset
    from robotok.evaluate.pipeline_commands import correction_rounds, train_dir
    from robotok.evaluate.presets import TASKS
    from robotok.policy.shards import TokenShards
    from robotok.sim_envs.record import handover_step

    out, log = smoke_run
    p = PRESETS["smoke"]
    first = train_dir(out, p)
    rounds = correction_rounds(out, p)
    assert first == out / "policy_demos" and not log["stages"]["correct"]["skipped"]
    assert len(rounds) == p.correction_rounds == 2 and rounds[-1].policy == out / "policy"
    before, steps = TokenShards(out / "shards"), 0
    for rnd in rounds:
        for t, corr in rnd.data.items():
            rec = json.loads((corr / "meta/recording.json").read_text())
            assert rec["policy"] == str(rnd.init) and len(rec["episodes"]) == p.corrections[t]
            assert rec["episodes"][0]["seed"] >= rnd.seed_start
            ep = LeRobotDataset(corr).episode(0, load_images=False)
            assert handover_step(rec["episodes"][0]["seed"], p.handover[t]) >= 1
            env = gym.make(TASKS[t], width=p.image_size, height=p.image_size)
            obs, _ = env.reset(seed=rec["episodes"][0]["seed"])
            want, noisy = robotok.sim_envs.make_expert(env, noise=p.noise).act(obs)
            np.testing.assert_array_equal(ep["action"][0], want)  # the expert labelled the first step ...
            assert np.abs(ep["action.executed"][0] - noisy).max() > 1e-3  # ... which it did not drive: the policy did
            env.close()
            steps += sum(-(-int(n) // p.stride[t]) for n in LeRobotDataset(corr).episode_lengths)
        after = TokenShards(rnd.shards)
        assert len(after) == len(before) + steps  # the demonstrations and every round's corrections so far
        assert (out / "shards/token_space.json").read_text() == (rnd.shards / "token_space.json").read_text()
        cfg = json.loads((rnd.policy / "config.json").read_text())
        assert cfg["step"] == p.correction_steps and cfg["train"]["init"] == str(rnd.init)
        logs = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (rnd.init, rnd.policy)]
        chance, end, again = np.log(cfg["model"]["vocab_size"]), logs[0][-1]["train/loss"], logs[1][0]["train/loss"]
        assert again < chance - 0.8 and abs(again - end) < 0.5, (chance, end, again)  # where the last run ended


@pytest.mark.slow
def test_second_run_skips_finished_stages(smoke_run):
    out, _ = smoke_run
    p = PRESETS["smoke"]
    assert all(stage_state(s, out, p) == "done" for s in STAGES if s != "report")
    log = run(PipelineConfig(out=out, preset="smoke", stages=("record", "fit", "video", "pretokenize", "train")))
    assert all(log["stages"][s]["skipped"] for s in ("record", "fit", "video", "pretokenize", "train"))


def test_commands_are_what_a_user_types(tmp_path):
    p = PRESETS["cpu"]
    rec = commands("record", tmp_path, p)
    assert [c[0] for c in rec] == ["robotok-record", "robotok-record", "robotok-record-scenes", "robotok-record-scenes"]
    assert str(tmp_path / "data" / "pickcup") in rec[0] and str(tmp_path / "data" / "drive") in rec[1]
    assert str(tmp_path / "scenes" / "pickcup.npz") in rec[2] and "robotok/PickCup-v0" in rec[2]
    scenes = str(tmp_path / "scenes" / "pickcup.npz")
    assert scenes in commands("pretokenize", tmp_path, p)[0]
    weight = lambda q: (c := commands("train", tmp_path, q)[0])[c.index("--ground-weight") + 1]  # noqa: E731
    off = dataclasses.replace(p, ground_weight=0.0)  # the loss off: no scenes recorded, none passed on
    assert weight(p) == "1.0" and weight(off) == "0.0"
    assert len(commands("record", tmp_path, off)) == 2 and scenes not in commands("pretokenize", tmp_path, off)[0]
    train = lambda q: commands("train", tmp_path, q)[0]  # noqa: E731
    bucketed = train(dataclasses.replace(p, length_buckets=4))
    assert bucketed[bucketed.index("--length-buckets") + 1] == "4"
    assert "--length-buckets" not in train(dataclasses.replace(p, length_buckets=1))
    replans = train(dataclasses.replace(p, execute_steps={"pickcup": 2, "drive": 5}))  # in the datasets' order
    assert replans[replans.index("--n-action-steps") :][:3] == ["--n-action-steps", "2", "5"]
    assert "--n-action-steps" not in train(dataclasses.replace(p, execute_steps={}))
    wrist = dataclasses.replace(p, cameras=("front", "wrist"), scene_cameras=("front", "wrist"))
    rec = commands("record", tmp_path, wrist)
    wrist_scenes = str(tmp_path / "scenes" / "pickcup_wrist.npz")
    assert rec[2][rec[2].index("--out") + 1] == scenes and "--camera" not in rec[2]
    assert rec[3][rec[3].index("--out") + 1] == wrist_scenes and rec[3][rec[3].index("--camera") + 1] == "wrist"
    pre = commands("pretokenize", tmp_path, wrist)[0]
    assert pre[pre.index("--scenes") + 1 : pre.index("--scenes") + 3] == [scenes, wrist_scenes]
    kp = train(wrist)
    assert kp[kp.index("--keypoint-cameras") + 1] == "2"
    assert "--keypoint-cameras" not in train(dataclasses.replace(p, scene_cameras=("front",)))
    assert "--prompt-context" in train(dataclasses.replace(p, prompt_context=True))
    assert "--prompt-context" not in train(dataclasses.replace(p, prompt_context=False))
    with pytest.raises(ValueError, match="prompt_film"):  # refused before any run, not dropped in silence
        train(dataclasses.replace(p, prompt_context=True, prompt_film=0))
    with pytest.raises(ValueError, match="must be the first of cameras"):
        commands("record", tmp_path, dataclasses.replace(wrist, scene_cameras=("wrist",)))
    with pytest.raises(ValueError, match="must be the first of cameras"):  # an override is refused before any run
        PipelineConfig(overrides=("cameras=front",))
    ev = commands("eval", tmp_path, p)
    assert "--prompt-sweep" in ev[1] and "expert,random" in ev[0]
    with pytest.raises(ValueError):
        PipelineConfig(stages=("nope",))


def test_the_correct_stage_goes_on_from_the_train_stages_policy(tmp_path):
    """With corrections the train stage writes policy_demos/; each round of the correct stage records the last
    policy's corrections in scenes of its own, pre-tokenises the demonstrations plus every round's corrections so
    far and trains from the last policy, the last round into policy/; without, policy/ is the train stage's and
    the correct stage has nothing to do."""
    from robotok.evaluate.pipeline_commands import CORRECTION_SEED_START, correction_rounds, train_dir

    p = PRESETS["cpu"]
    assert p.corrections and p.correction_rounds == 3 and train_dir(tmp_path, p) == tmp_path / "policy_demos"
    first, final = str(tmp_path / "policy_demos"), str(tmp_path / "policy")
    ends = ("", "2", "3")
    chain = [first, *(str(tmp_path / f"policy_corrections{e}") for e in ends[:-1]), final]  # each round's init, out
    train = commands("train", tmp_path, p)[0]
    assert train[train.index("--out") + 1] == first and train[train.index("--steps") + 1] == str(p.train_steps)
    corr = commands("correct", tmp_path, p)
    one_round = [*["robotok-record-corrections"] * 2, "robotok-pretokenize", "robotok-train"]
    assert [c[0] for c in corr] == one_round * 3
    plain = commands("pretokenize", tmp_path, p)[0]
    for r, (init, out, end) in enumerate(zip(chain[:-1], chain[1:], ends, strict=True)):
        rec, pre, tr = corr[4 * r : 4 * r + 2], corr[4 * r + 2], corr[4 * r + 3]
        for c, t in zip(rec, ("pickcup", "drive"), strict=True):
            assert c[c.index("--policy") + 1] == init and c[c.index("--handover") + 1] == str(p.handover[t])
            assert c[c.index("--out") + 1] == str(tmp_path / "data" / f"{t}_corrections{end}")
            assert c[c.index("--episodes") + 1] == str(p.corrections[t])
            assert c[c.index("--seed-start") + 1] == str(CORRECTION_SEED_START + 10_000 * r)  # scenes of its own
        data = pre[pre.index("--dataset") + 1 : pre.index("--action-tokenizer")]
        rounds = [f"{tmp_path / 'data' / t}_corrections{e}" for t in ("pickcup", "drive") for e in ends[: r + 1]]
        assert data == [
            "+".join([str(tmp_path / "data" / t), *(x for x in rounds if f"/{t}_" in x)]) for t in ("pickcup", "drive")
        ]
        assert pre[pre.index("--action-tokenizer") :] == [
            str(tmp_path / f"shards_corrections{end}") if x == str(tmp_path / "shards") else x
            for x in plain[plain.index("--action-tokenizer") :]
        ]  # the same tokenizers and settings: the same token space
        assert pre[pre.index("--code-cache") + 1] == str(tmp_path / "cache/video_codes")  # old episodes not re-encoded
        assert tr[tr.index("--init") + 1] == init and tr[tr.index("--out") + 1] == out
        assert tr[tr.index("--steps") + 1] == str(p.correction_steps)
        assert tr[tr.index("--lr") + 1] == str(p.correction_lr)
        assert tr[tr.index("--data") + 1] == str(tmp_path / f"shards_corrections{end}")
        assert "--keypoint" in tr and "--prompt-context" in tr and len(tr) == len(train) + 2  # the same flags, + --init
    assert done_files("correct", tmp_path, p)[-1] == tmp_path / "policy" / "config.json"
    assert [str(r.policy) for r in correction_rounds(tmp_path, p)] == chain[1:]
    one = dataclasses.replace(p, correction_rounds=1)
    assert [c[0] for c in commands("correct", tmp_path, one)] == one_round
    tr = commands("correct", tmp_path, one)[3]
    assert tr[tr.index("--init") + 1] == first and tr[tr.index("--out") + 1] == final
    off = dataclasses.replace(p, corrections={})
    assert train_dir(tmp_path, off) == tmp_path / "policy" and commands("correct", tmp_path, off) == []
    assert stage_state("correct", tmp_path, off) == "done" and done_files("correct", tmp_path, off) == []
    only = dataclasses.replace(p, corrections={"pickcup": 10})
    pre = commands("correct", tmp_path, only)[1]
    assert pre[pre.index("--dataset") + 2] == str(tmp_path / "data" / "drive")  # Drive's demonstrations alone
    with pytest.raises(ValueError, match="handover"):
        dataclasses.replace(p, handover={"drive": 300})
    with pytest.raises(ValueError, match="correction_rounds"):
        dataclasses.replace(p, correction_rounds=0)


def test_record_keeps_a_finished_task_and_dry_run_only_prints(tmp_path, capsys):
    info = tmp_path / "data" / "pickcup" / "meta" / "info.json"
    info.parent.mkdir(parents=True)
    info.write_text("{}")
    run(PipelineConfig(out=tmp_path, preset="smoke", stages=("record", "fit"), dry_run=True))
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(printed) == 4 and "robotok/Drive-v0" in printed[0]
    assert printed[1].startswith("$ robotok-record-scenes") and "--camera wrist" in printed[2]
    assert printed[3].startswith("$ robotok-fit-tokenizers")
    assert info.is_file() and not (tmp_path / "data" / "drive").exists()


def test_overrides_change_preset_fields_by_their_types():
    from robotok.evaluate.presets import with_overrides

    cpu = PRESETS["cpu"]
    p = with_overrides(
        cpu,
        [
            "cameras=front,wrist",
            "goal=true",
            "train_steps=3000",
            "lr=5e-4",
            "model=small",
            "video_channels=16,32",
            'episodes={"pickcup": 50, "drive": 20}',
            'execute_steps={"pickcup": 3, "drive": 4}',
        ],
    )
    assert p.execute_steps == {"pickcup": 3, "drive": 4}
    assert with_overrides(cpu, ["execute_steps={}"]).execute_steps == {}
    assert p.cameras == ("front", "wrist") and p.goal is True and p.train_steps == 3000 and p.lr == 5e-4
    assert p.model == "small" and p.video_channels == (16, 32) and p.episodes == {"pickcup": 50, "drive": 20}
    assert (p.horizon, p.noise, p.frame_loss_weight) == (cpu.horizon, cpu.noise, cpu.frame_loss_weight)
    assert with_overrides(cpu, []) == cpu
    for bad, says in (
        ("camras=front", "field=value"),
        ("train_steps", "field=value"),
        ("train_steps=many", "train_steps=many"),
        ("goal=maybe", "a bool"),
        ("action_kind=fourier", "one of"),
        ('episodes={"pickcup": 50}', "every task"),
        ('execute_steps={"pickcup": 2}', "every task"),
        ("episodes=[1, 2]", "a JSON object"),
    ):
        with pytest.raises(ValueError, match=says):
            with_overrides(cpu, [bad])


def test_overridden_settings_reach_the_commands_and_guard_the_run_dir(tmp_path, capsys):
    cfg = PipelineConfig(out=tmp_path, preset="smoke", overrides=("cameras=front", "scene_cameras=front", "goal=true"))
    p = cfg.settings()
    pre = commands("pretokenize", tmp_path, p)[0]
    assert pre[pre.index("--cameras") + 1 : pre.index("--cameras") + 3] == ["front", "--horizon"] and "--goal" in pre
    vid = commands("video", tmp_path, p)[0]
    assert vid[vid.index("--cameras") + 1 : vid.index("--cameras") + 3] == ["front", "--steps"]
    with pytest.raises(ValueError, match="field=value"):
        PipelineConfig(overrides=("nope=1",))
    # a run directory made with the plain smoke settings: the overridden run refuses it unless forced
    (tmp_path / "pipeline.json").write_text(
        json.dumps({"preset": "smoke", "settings": PipelineConfig(preset="smoke").settings().__dict__, "stages": {}})
    )
    with pytest.raises(SystemExit, match="cameras: \\['front', 'wrist'\\] there, \\['front'\\] now"):
        run(PipelineConfig(out=tmp_path, preset="smoke", stages=("fit",), dry_run=True, overrides=cfg.overrides))
    run(PipelineConfig(out=tmp_path, preset="smoke", stages=("fit",), dry_run=True))  # same settings: runs
    run(
        PipelineConfig(out=tmp_path, preset="smoke", stages=("fit",), dry_run=True, force=True, overrides=cfg.overrides)
    )
    assert sum(line.startswith("$ robotok-fit-tokenizers") for line in capsys.readouterr().out.splitlines()) == 2
    from robotok.evaluate.pipeline_report import write_pipeline_report

    title = write_pipeline_report(
        tmp_path, {"preset": "smoke", "overrides": list(cfg.overrides), "stages": {}}
    ).read_text()
    assert title.startswith("# robotok demo: preset `smoke` with `cameras=front`, `scene_cameras=front`, `goal=true`")
