"""The frame inputs of the policy transformer: cell embedding, convolution stem, prompt FiLM (policy/model.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robotok.policy.export import check_graphs, export_transformer
from robotok.policy.model import Transformer, preset
from robotok.tokenizers.space import (
    ACT_CLOSE,
    ACT_OPEN,
    BOS,
    FRAME_CLOSE,
    FRAME_OPEN,
    SEP,
    STATE_CLOSE,
    STATE_OPEN,
)

VIDEO, LEVELS, GRID = 300, (8, 5, 5, 5), (4, 4)  # 1,000 video ids from 300; a 4x4 code grid
STATE, ACTION = 280, 1400  # a state id (after the 256 text ids from 10) and an action id


def make(
    film: int = 0,
    seed: int = 0,
    stem: int = 8,
    ground: bool = False,
    keypoint: bool = False,
    effector: bool = False,
    keypoint_cameras: int = 1,
    context: bool = False,
) -> Transformer:
    torch.manual_seed(seed)
    cfg = preset(
        "micro",
        vocab_size=1600,
        video_start=VIDEO,
        video_levels=LEVELS,
        video_grid=GRID,
        video_stem=stem,
        prompt_film=film,
        ground_head=ground or keypoint,
        keypoint=keypoint,
        keypoint_effector=effector,
        keypoint_cameras=keypoint_cameras,
        prompt_context=context,
    )
    m = Transformer(cfg).eval()
    if keypoint:  # a read-out that marks cells and moves their points (both start flat or at zero)
        torch.nn.init.normal_(m.stem.point.weight)
        torch.nn.init.normal_(m.stem.offset.weight)
    if effector:
        torch.nn.init.normal_(m.stem.point_effector.weight)
    return m


def frame(g: torch.Generator, cameras: int = 1) -> list[int]:
    return [FRAME_OPEN, *torch.randint(VIDEO, VIDEO + 1000, (16 * cameras,), generator=g).tolist(), FRAME_CLOSE]


def sample(prompt: bytes = b"get the red cup", seed: int = 1, cameras: int = 1) -> tuple[list[int], int]:
    """A policy sample with a world-model tail, and the index just after ACT_OPEN."""
    g = torch.Generator().manual_seed(seed)
    obs = frame(g, cameras)
    head = [BOS, *(10 + b for b in prompt), SEP, *obs, STATE_OPEN, STATE, STATE + 1, STATE_CLOSE, ACT_OPEN]
    tail = [ACTION, ACTION + 1, ACT_CLOSE, *frame(g, cameras), STATE_OPEN, STATE + 2, STATE_CLOSE]
    return head + tail, len(head)


@torch.no_grad()
def test_stem_is_two_zero_padded_3x3_convolutions_on_the_grid():
    stem = make().stem
    vec = torch.randn(2, 16, len(LEVELS))
    got = stem(vec, torch.arange(16).expand(2, 16), torch.ones(2, 16, dtype=torch.bool))

    def conv(x: torch.Tensor, lin: torch.nn.Linear, cin: int) -> torch.Tensor:
        return F.conv2d(x, lin.weight.view(lin.out_features, 3, 3, cin).permute(0, 3, 1, 2), lin.bias, padding=1)

    h = F.relu(conv(vec.view(2, 4, 4, -1).permute(0, 3, 1, 2), stem.c1, len(LEVELS)))
    h = F.relu(conv(h, stem.c2, 8))
    torch.testing.assert_close(got, stem.out(h.flatten(2).transpose(1, 2)), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "film,keypoint,effector,cameras,context",
    [
        (0, False, False, 1, False),
        (16, False, False, 1, False),
        (16, True, True, 1, False),
        (16, True, True, 2, False),
        (16, True, True, 3, False),
        (16, True, True, 3, True),
    ],
)
@torch.no_grad()
def test_decoding_as_the_runtime_and_world_model_feed_it_equals_the_full_forward(
    film, keypoint, effector, cameras, context
):
    """Prompt prefix, then one observed step, then every later id one at a time (the action chunk and the
    predicted frame and state): the cache carries the open frame and the prompt's encoding across calls. The
    3 stands for two cameras read by the keypoints (``keypoint_cameras=2``); ``context``: the prompt's encoding
    is added at every position (``prompt_context``)."""
    m = make(film, keypoint=keypoint, effector=effector, keypoint_cameras=2 if cameras == 3 else 1, context=context)
    cameras = min(cameras, 2)
    if film:
        torch.nn.init.normal_(m.stem.film.weight)  # a conditioned stem (it starts as the identity)
    ids, a = sample(cameras=cameras)
    idx = torch.tensor([ids])
    full = m(idx)[0]
    sep = ids.index(SEP) + 1
    cache = m.new_cache(1, 128)
    parts = [m.forward_cached(idx[:, :sep], cache), m.forward_cached(idx[:, sep:a], cache)]
    parts += [m.forward_cached(idx[:, t : t + 1], cache) for t in range(a, len(ids))]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)

    k = torch.zeros(m.cfg.n_layer, 1, m.cfg.n_head, 128, m.cfg.head_dim)
    v, cond, pos, outs = torch.zeros_like(k), None, 0, []
    for chunk in (ids[:sep], ids[sep:a], [ids[a]]):  # the exported graphs' calls
        logits, k, v, cond = m.forward_kv(torch.tensor([chunk]), torch.tensor(pos), k, v, cond)
        outs.append(logits)
        pos += len(chunk)
    torch.testing.assert_close(torch.cat(outs, 1), full[:, : a + 1], atol=1e-5, rtol=0)


@torch.no_grad()
def test_a_predicted_frame_stays_causal_and_an_observed_frame_is_read_whole():
    m = make()
    ids, a = sample()
    full = m(torch.tensor([ids]))[0]
    cell = ids.index(FRAME_OPEN, a) + 7  # a cell of the predicted frame
    changed = list(ids)
    changed[cell] = VIDEO + (ids[cell] - VIDEO + 1) % 1000
    diff = (m(torch.tensor([changed]))[0] - full).abs().amax(-1)[0]
    assert diff[:cell].max() == 0 and diff[cell] > 0, "a predicted cell leaked into earlier positions"

    seen = ids.index(FRAME_OPEN) + 1 + 9  # cell (2, 1) of the observed frame: its neighbours read it
    changed = list(ids)
    changed[seen] = VIDEO + (ids[seen] - VIDEO + 1) % 1000
    diff = (m(torch.tensor([changed]))[0] - full).abs().amax(-1)[0]
    assert diff[seen - 4] > 0, "the stem should let cell (1, 1) see the cell below it"


@torch.no_grad()
def test_cells_tell_equal_codes_apart_and_the_prompt_conditions_observed_frames_only():
    m = make(film=16)
    code = VIDEO + 123
    ids = [BOS, *(10 + b for b in b"red"), SEP, FRAME_OPEN, *[code] * 16, FRAME_CLOSE, ACT_OPEN]
    x, _, _ = m.embed(torch.tensor([ids]))
    first = ids.index(FRAME_OPEN) + 1
    assert (x[0, first] - x[0, first + 5]).abs().max() > 0, "one code at two cells must embed differently"

    blue = [BOS, *(10 + b for b in b"blue"), SEP, *ids[ids.index(SEP) + 1 :]]
    shift = len(blue) - len(ids)
    x_blue, _, _ = m.embed(torch.tensor([blue]))
    same = x_blue[0, first + shift : first + shift + 16] - x[0, first : first + 16]
    assert same.abs().max() == 0, "the FiLM layer starts at zero: the stem starts unconditioned"
    torch.nn.init.normal_(m.stem.film.weight)
    x, _, _ = m.embed(torch.tensor([ids]))
    x_blue, _, _ = m.embed(torch.tensor([blue]))
    assert (x_blue[0, first + shift : first + shift + 16] - x[0, first : first + 16]).abs().max() > 0

    predicted = [*ids[:-1], ACTION, ACT_CLOSE, FRAME_OPEN, code]  # a frame after ACT_CLOSE: no stem, no FiLM
    y, _, _ = m.embed(torch.tensor([predicted]))
    plain = m.tok_emb.weight[code] + m.video_proj(m.video_vecs[123]) + m.cell_emb.weight[0]
    torch.testing.assert_close(y[0, -1], plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("effector", "cameras"), [(False, 1), (True, 1), (True, 2)])
@torch.no_grad()
def test_the_keypoint_hands_the_named_place_to_the_observed_frames_close(effector, cameras):
    """ModelConfig.keypoint: the observed frame's FRAME_CLOSE input gains the embedding of the soft-argmax place
    that the pointing read-out gives the lone frame under the same prompt (and, with keypoint_effector, the
    effector's place); no other position changes, and another prompt moves the named place. With two cameras
    the place is the first camera's (the one the pointing scenes show), whatever the second shows."""
    m = make(film=16, keypoint=True, effector=effector)
    torch.nn.init.normal_(m.stem.film.weight)
    ids, a = sample(cameras=cameras)
    plain = make(film=16)
    plain.load_state_dict(m.state_dict(), strict=False)
    plain.stem.film.load_state_dict(m.stem.film.state_dict())
    x, x0 = m.embed(torch.tensor([ids]))[0][0], plain.embed(torch.tensor([ids]))[0][0]
    close, first = ids.index(FRAME_CLOSE), ids.index(FRAME_OPEN) + 1
    changed = (x - x0).abs().amax(-1).nonzero().flatten().tolist()
    assert changed == [close], changed  # the predicted frame's FRAME_CLOSE gets nothing
    sep = ids.index(SEP) + 1
    prompt, video = torch.tensor([ids[:sep]]), torch.tensor([ids[first : first + 16]])
    logits, place = m.ground_point(prompt, video)
    k = 2 if effector else 1
    assert place.shape == (1, k, 2) and logits.shape == (1, 16, k)
    torch.testing.assert_close(x[close] - x0[close], m.stem.embed_place(place)[0], atol=1e-5, rtol=0)
    other = [BOS, *(10 + b for b in b"get the blue cup"), SEP]
    assert (m.ground_point(torch.tensor([other]), video)[1][:, 0] - place[:, 0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="set keypoint too"):
        preset(
            "micro",
            video_start=VIDEO,
            video_levels=LEVELS,
            video_grid=GRID,
            video_stem=8,
            prompt_film=8,
            ground_head=True,
            keypoint_effector=True,
        )
    with pytest.raises(ValueError, match="set ground_head"):
        preset(
            "micro", video_start=VIDEO, video_levels=LEVELS, video_grid=GRID, video_stem=8, prompt_film=8, keypoint=True
        )


@torch.no_grad()
def test_a_second_keypoint_camera_adds_its_own_place_and_a_one_camera_frame_only_the_first():
    """ModelConfig.keypoint_cameras=2: the FRAME_CLOSE of a two-camera frame gains the first camera's place through
    ``kp_proj`` and the second camera's (the read-outs over its cells, as over a lone frame) through its own
    projection; a frame of one camera (another robot's) gains the first camera's only."""
    m = make(film=16, keypoint=True, effector=True, keypoint_cameras=2)
    torch.nn.init.normal_(m.stem.film.weight)
    plain = make(film=16)
    plain.load_state_dict(m.state_dict(), strict=False)
    plain.stem.film.load_state_dict(m.stem.film.state_dict())
    for cameras in (2, 1):
        ids, a = sample(cameras=cameras)
        x, x0 = m.embed(torch.tensor([ids]))[0][0], plain.embed(torch.tensor([ids]))[0][0]
        close, first, sep = ids.index(FRAME_CLOSE), ids.index(FRAME_OPEN) + 1, ids.index(SEP) + 1
        assert (x - x0).abs().amax(-1).nonzero().flatten().tolist() == [close]
        prompt = torch.tensor([ids[:sep]])
        expect = m.stem.embed_place(m.ground_point(prompt, torch.tensor([ids[first : first + 16]]))[1])[0]
        if cameras == 2:
            wrist = m.ground_point(prompt, torch.tensor([ids[first + 16 : first + 32]]))[1]
            expect = expect + m.stem.embed_place(wrist, m.stem.kp_proj_cams[0])[0]
            assert m.stem.embed_place(wrist, m.stem.kp_proj_cams[0]).abs().max() > 0
        torch.testing.assert_close(x[close] - x0[close], expect, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="keypoint_cameras"):
        preset("micro", keypoint_cameras=2)


def test_config_names_what_the_stem_needs():
    with pytest.raises(ValueError, match="video_stem needs"):
        preset("micro", video_grid=GRID, video_stem=8)
    with pytest.raises(ValueError, match="set video_stem"):
        preset("micro", video_start=VIDEO, video_levels=LEVELS, video_grid=GRID, prompt_film=8)
    with pytest.raises(ValueError, match="video_grid must be"):
        preset("micro", video_grid=(4,))


@pytest.mark.parametrize(("keypoint", "cameras"), [(False, 1), (True, 1), (True, 2)])
def test_exported_graphs_carry_the_prompt_encoding_and_match_torch(tmp_path, keypoint, cameras):
    m = make(film=16, keypoint=keypoint, effector=keypoint, keypoint_cameras=cameras)
    torch.nn.init.normal_(m.stem.film.weight)
    export_transformer(m, tmp_path)
    ids, a = sample(cameras=cameras)
    sep = ids.index(SEP) + 1
    checks = check_graphs(m, tmp_path, 0, chunks=(ids[:sep], ids[sep:a], [ids[a]]))
    assert checks["prefill_max_abs_logit_diff"] < 1e-4 and checks["decode_max_abs_logit_diff"] < 1e-4, checks
    assert checks["logit_scale"] > 0.1


def test_the_ground_head_learns_to_mark_the_cell_the_prompt_names() -> None:
    """Two "cups" of different codes at random cells of a plain frame, the prompt naming one of them among other
    words: the prompt-conditioned stem with its pointing read-out (``Transformer.ground_logits``, robotok-train's
    pointing loss) learns which cell is named, on held-out frames and under the other cup's name as well."""
    from robotok.tokenizers.space import SPECIAL

    m = make(film=16, stem=16, ground=True).train()
    n_cells, words = GRID[0] * GRID[1], ("red", "blue")
    codes = {"red": 500, "blue": 900, "table": 100}
    templates = ("pick up the {} cup", "get the {} one", "{}")

    def prompt(word: str, k: int) -> list[int]:
        ids = [BOS, *(len(SPECIAL) + b for b in templates[k % 3].format(word).encode()), SEP]
        return ids + [0] * (24 - len(ids))

    def scenes(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cells = torch.stack([torch.randperm(n_cells, generator=g)[:2] for _ in range(n)])  # red's, blue's cell
        video = torch.full((n, n_cells), VIDEO + codes["table"])
        video[torch.arange(n), cells[:, 0]] = VIDEO + codes["red"]
        video[torch.arange(n), cells[:, 1]] = VIDEO + codes["blue"]
        named = torch.randint(0, 2, (n,), generator=g)
        return video, cells, named, torch.tensor([prompt(words[int(w)], k) for k, w in enumerate(named)])

    g = torch.Generator().manual_seed(0)
    video, cells, named, prompts = scenes(512, g)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        i = torch.randint(0, 512, (64,), generator=g)
        loss = F.cross_entropy(m.ground_logits(prompts[i], video[i]), cells[i, named[i]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    video, cells, named, prompts = scenes(200, g)
    with torch.no_grad():
        hit = (m.ground_logits(prompts, video).argmax(-1) == cells[torch.arange(200), named]).float().mean()
        other = torch.tensor([prompt(words[1 - int(w)], k) for k, w in enumerate(named)])
        hit_other = (m.ground_logits(other, video).argmax(-1) == cells[torch.arange(200), 1 - named]).float().mean()
    assert hit > 0.9 and hit_other > 0.9, (hit, hit_other)  # a model blind to the prompt gets one half
    with pytest.raises(ValueError, match="ground_head"):
        make(film=8).ground_logits(prompts, video)


@torch.no_grad()
@pytest.mark.parametrize("context", [False, True])
def test_prompt_context_puts_the_prompt_into_every_later_input(context: bool) -> None:
    """``prompt_context``: an action id's input embedding, far from the prompt, differs between "turn left" and
    "turn right" (and fed alone after a cached prompt it carries the same); without it an action id's input is
    its own embedding whatever the prompt."""
    m = make(film=16, context=context)
    inputs = []
    for prompt in (b"turn left at the intersection", b"turn right at the intersection"):
        ids, a = sample(prompt=prompt)
        x, _, cond = m.embed(torch.tensor([ids]))
        step, _, _ = m.embed(torch.tensor([[ids[a]]]), torch.tensor(a), None, cond)  # as a decoding step
        torch.testing.assert_close(step[0, 0], x[0, a], atol=1e-6, rtol=0)
        inputs.append(x[0, a])
    differs = (inputs[0] - inputs[1]).abs().max() > 1e-4
    assert bool(differs) == context


def test_prompt_context_needs_the_prompt_encoder() -> None:
    with pytest.raises(ValueError, match="prompt_film"):
        preset("micro", prompt_context=True)
