"""The policy transformer: cached decoding equals the full forward, causality, the weighted loss, presets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robotok.policy.layers import Block, attend
from robotok.policy.model import (
    PRESETS,
    ModelConfig,
    Transformer,
    fsq_code_vectors,
    preset,
    weighted_cross_entropy,
)


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("tiny", vocab_size=300, max_seq_len=128)).eval()


@torch.no_grad()
def test_kv_cache_matches_full_forward(model):
    idx = torch.randint(0, 300, (2, 60), generator=torch.Generator().manual_seed(1))
    full, _ = model(idx)
    cache = model.new_cache(2, 96)
    parts = [model.forward_cached(idx[:, :40], cache)]  # prefill
    parts += [model.forward_cached(idx[:, t : t + 1], cache) for t in range(40, 60)]  # token by token
    assert cache.pos == 60
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    cache = model.new_cache(2, 96)  # last=True: the last position's logits alone, the cache filled the same
    last = model.forward_cached(idx[:, :40], cache, last=True)
    assert last.shape == (2, 1, full.shape[-1]) and cache.pos == 40
    torch.testing.assert_close(last, full[:, 39:40], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.forward_cached(idx[:, 40:41], cache, last=True), full[:, 40:41], atol=1e-5, rtol=0)


@torch.no_grad()
def test_pure_forward_kv_matches_and_leaves_inputs_alone(model):
    cfg = model.cfg
    idx = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(2))
    full, _ = model(idx)
    k = torch.zeros(cfg.n_layer, 1, cfg.n_head, 64, cfg.head_dim)
    v = torch.zeros_like(k)
    logits_a, k1, v1, _ = model.forward_kv(idx[:, :25], torch.tensor(0), k, v)
    assert k.abs().sum() == 0 and v.abs().sum() == 0, "forward_kv must not write into its inputs"
    outs = [logits_a]
    for t in range(25, 30):
        logits_t, k1, v1, _ = model.forward_kv(idx[:, t : t + 1], torch.tensor(t), k1, v1)
        outs.append(logits_t)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_truncated_cache_reuses_a_prefix(model):
    """Rewinding the cache to a shared prefix and decoding another continuation equals a fresh forward."""
    g = torch.Generator().manual_seed(3)
    prefix, a, b = (torch.randint(0, 300, (1, n), generator=g) for n in (20, 8, 8))
    cache = model.new_cache(1, 64)
    model.forward_cached(prefix, cache)
    model.forward_cached(a, cache)
    cache.truncate(20)
    got = model.forward_cached(b, cache)
    want, _ = model(torch.cat([prefix, b], 1))
    torch.testing.assert_close(got, want[:, 20:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cache full"):
        model.forward_cached(torch.zeros(1, 64, dtype=torch.long), cache)


@torch.no_grad()
def test_causal_future_tokens_do_not_change_past_logits(model):
    idx = torch.randint(0, 300, (1, 50), generator=torch.Generator().manual_seed(4))
    changed = idx.clone()
    changed[0, 30:] = (changed[0, 30:] + 7) % 300
    la, _ = model(idx)
    lb, _ = model(changed)
    torch.testing.assert_close(la[:, :30], lb[:, :30], atol=1e-6, rtol=0)
    assert (la[:, 30:] - lb[:, 30:]).abs().max() > 1e-3


def test_weighted_loss_is_mean_over_weighted_positions_only():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 11, generator=g)
    targets = torch.randint(0, 11, (2, 6), generator=g)
    weights = torch.tensor([[0, 0, 1, 1, 0.5, 0], [1, 0, 0, 0, 0, 2]], dtype=torch.float32)
    ce = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none").reshape(2, 6)
    want = (ce * weights).sum() / weights.sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, targets, weights), want)
    torch.testing.assert_close(weighted_cross_entropy(logits, targets, weights, "sum"), (ce * weights).sum())
    other = targets.clone()
    other[weights == 0] = (other[weights == 0] + 1) % 11  # targets at ignored positions do not matter
    torch.testing.assert_close(weighted_cross_entropy(logits, other, weights), want)


def test_forward_loss_uses_weights():
    torch.manual_seed(0)
    m = Transformer(preset("micro", vocab_size=50))
    idx = torch.randint(0, 50, (2, 16))
    w = torch.zeros(2, 16)
    w[:, 10:] = 1.0
    logits, loss = m(idx, idx, w)
    assert logits.shape == (2, 16, 50)
    torch.testing.assert_close(loss, weighted_cross_entropy(logits, idx, w))


def test_selected_head_equals_the_full_head_at_those_positions():
    """select= computes logits and loss only where asked; they equal the full forward's at those positions."""
    torch.manual_seed(0)
    m = Transformer(preset("micro", vocab_size=50))
    idx = torch.randint(0, 50, (3, 16))
    w = torch.zeros(3, 16)
    w[:, 9:] = 1.0
    w[1, 12:] = 0.5
    full, full_loss = m(idx, idx, w)
    sel = w > 0
    part, part_loss = m(idx, idx, w, select=sel)
    assert part.shape == (int(sel.sum()), 50)
    torch.testing.assert_close(part, full[sel])
    torch.testing.assert_close(part_loss, full_loss)
    part_loss.backward()  # the selected path trains: gradients reach the embedding
    assert m.tok_emb.weight.grad is not None and m.tok_emb.weight.grad.abs().sum() > 0


def test_video_code_embedding_follows_the_fsq_codebook_and_keeps_the_cache_exact():
    """Video ids add a projection of their FSQ latent (the tokenizer's own id order); other ids do not; the
    KV-cached decode still equals the full forward."""
    from robotok.tokenizers.video import FSQ

    levels = (4, 3, 3)
    vecs = fsq_code_vectors(levels)
    torch.testing.assert_close(vecs, FSQ(levels).indices_to_codes(torch.arange(36)).reshape(36, 3).float())
    torch.manual_seed(0)
    m = Transformer(preset("micro", vocab_size=100, video_start=50, video_levels=levels)).eval()
    with torch.no_grad():
        m.video_proj.weight.normal_()
    ids = torch.tensor([[3, 49, 50, 85, 86, 99]])
    delta = m.embed(ids)[0] - m.tok_emb(ids)
    assert delta[0, [0, 1, 4, 5]].abs().max() == 0  # not video ids: [50, 86) are
    torch.testing.assert_close(delta[0, 1 + 1], m.video_proj(vecs[0]))
    torch.testing.assert_close(delta[0, 3], m.video_proj(vecs[35]))
    idx = torch.randint(0, 100, (1, 24))
    with torch.no_grad():
        full, _ = m(idx)
        cache = m.new_cache(1, 32)
        step = torch.cat(
            [
                m.forward_cached(idx[:, :10], cache),
                *(m.forward_cached(idx[:, t : t + 1], cache) for t in range(10, 24)),
            ],
            1,
        )
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-4)


def test_cpu_attention_runs_in_fp32_under_bf16_autocast():
    """bf16 q/k/v under CPU autocast: the output is the fp32 attention of those values, rounded once to bf16, which
    differs from the kernel's own bf16 result in places (so the check can tell the two paths apart)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 70, 16, generator=g).bfloat16() for _ in range(3))
    with torch.autocast("cpu", torch.bfloat16):
        got = attend(q, k, v, is_causal=True)
    assert got.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(got, ref.bfloat16(), atol=0, rtol=0)
    with torch.autocast("cpu", torch.bfloat16):
        kernel = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (kernel != got).any()
    fp32 = torch.randn(1, 2, 5, 8, generator=g)
    torch.testing.assert_close(attend(fp32, fp32, fp32), F.scaled_dot_product_attention(fp32, fp32, fp32))


def test_presets_sizes_and_wrap_units():
    sizes = {}
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            m = Transformer(cfg)
        sizes[name] = m.num_params()
        assert len(m.blocks) == cfg.n_layer and all(isinstance(b, Block) for b in m.blocks)
    assert 3.0e6 <= sizes["tiny"] <= 4.0e6, sizes  # the CPU demo model (~3.75M)
    assert sizes["micro"] < sizes["tiny"] < sizes["small"] < sizes["base"] < sizes["large"]
    names = {n for n, _ in Transformer(preset("micro", vocab_size=10)).state_dict().items()}
    assert "tok_emb.weight" in names and not any("lm_head" in n for n in names), "embeddings are tied"


def test_config_rejects_bad_heads():
    with pytest.raises(ValueError, match="n_head"):
        ModelConfig(d_model=100, n_head=3)
