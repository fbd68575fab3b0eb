"""Policy transformer speed: training tokens/s (fp32 vs bf16 autocast) and per-chunk generation latency.

    python benchmarks/policy_speed.py [--threads 2] [--reps 20]

1. CPU training throughput of the ``tiny`` preset (forward, backward, AdamW step), fp32 against bf16
   autocast measured in the same run, interleaved so that load from other processes hits both alike.
   ``robotok-train --dtype auto`` picks bf16 on CPUs with AMX-BF16 or AVX512-BF16 because of this ratio.
   A third figure swaps the model's attention (fp32 on the CPU, ``robotok.policy.layers.attend``) for torch's
   bf16 kernel, in the same rounds.
2. Latency of generating one action chunk (``--gen`` tokens greedily after a ``--prompt``-token context,
   batch 1, fp32) with the KV cache (prefill, then one token per step) and without it (a full forward
   per token), p50/p99 over ``--reps`` chunks, for the ``tiny`` and ``small`` presets.
3. With CUDA: bf16 training tokens/s per preset and model FLOPs utilisation, 6 * params * tokens/s over
   the GPU's dense bf16 peak (attention FLOPs left out, as in the usual 6N estimate).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import robotok.policy.layers as layers_lib
from robotok.policy.model import Transformer, preset

VOCAB = 2048  # about the joint token space of the demo tasks
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def train_tokens_per_s(
    model: Transformer,
    batch: int,
    seq: int,
    dtype: torch.dtype | None,
    steps: int,
    device: str,
    supervised: float = 1.0,
) -> float:
    """Training tokens/s; ``supervised`` < 1 computes the head only at the last that fraction of positions,
    as ``robotok-train`` does for the positions that carry a loss (``Transformer.forward(select=...)``)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda" or None)
    x = torch.randint(0, VOCAB, (batch, seq + 1), device=device)
    select = None
    if supervised < 1.0:
        select = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        select[:, seq - round(supervised * seq) :] = True

    def step() -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            _, loss = model(x[:, :-1], x[:, 1:], select=select)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, kernel choice)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch * seq / (time.perf_counter() - t)


@torch.no_grad()
def chunk_latency(model: Transformer, prompt: torch.Tensor, gen: int, cached: bool) -> float:
    """Seconds to generate ``gen`` greedy tokens after ``prompt`` [1, P]."""
    t = time.perf_counter()
    if cached:
        cache = model.new_cache(1, prompt.shape[1] + gen)
        nxt = model.forward_cached(prompt, cache)[:, -1].argmax(-1, keepdim=True)
        for _ in range(gen - 1):
            nxt = model.forward_cached(nxt, cache)[:, -1].argmax(-1, keepdim=True)
    else:
        seq = prompt
        for _ in range(gen):
            nxt = model(seq)[0][:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    return time.perf_counter() - t


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--reps", type=int, default=10, help="chunks per latency measurement")
    ap.add_argument("--prompt", type=int, default=200, help="context tokens before a chunk")
    ap.add_argument("--gen", type=int, default=40, help="tokens generated per chunk")
    ap.add_argument("--train-rounds", type=int, default=4, help="interleaved fp32/bf16 rounds")
    ap.add_argument(
        "--supervised", type=float, default=0.4, help="fraction of positions with a loss (a demo sequence: ~0.4)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads"
    )

    # 1. CPU training throughput, fp32 vs bf16 autocast, interleaved rounds
    model = Transformer(preset("tiny", vocab_size=VOCAB, max_seq_len=512))
    rates: dict[str, list[float]] = {"fp32": [], "bf16": [], "bf16_sel": [], "bf16_kernel": []}
    for _ in range(args.train_rounds):
        rates["fp32"].append(train_tokens_per_s(model, 8, 256, None, 2, "cpu"))
        rates["bf16"].append(train_tokens_per_s(model, 8, 256, torch.bfloat16, 2, "cpu"))
        rates["bf16_sel"].append(train_tokens_per_s(model, 8, 256, torch.bfloat16, 2, "cpu", args.supervised))
        own, layers_lib.attend = layers_lib.attend, F.scaled_dot_product_attention  # torch's bf16 kernel instead
        try:
            rates["bf16_kernel"].append(train_tokens_per_s(model, 8, 256, torch.bfloat16, 2, "cpu"))
        finally:
            layers_lib.attend = own
    # best of the rounds: other processes on the machine only ever slow a round down
    fp32, bf16 = max(rates["fp32"]), max(rates["bf16"])
    print(
        f"train  tiny ({model.num_params() / 1e6:.2f}M params) batch 8x256 on CPU: fp32 {fp32:,.0f} tokens/s, "
        f"bf16 autocast {bf16:,.0f} tokens/s, bf16/fp32 = {bf16 / fp32:.2f}x (best of {args.train_rounds}; "
        f"medians {statistics.median(rates['fp32']):,.0f} / {statistics.median(rates['bf16']):,.0f})"
    )
    kernel = max(rates["bf16_kernel"])
    print(
        f"train  tiny bf16 with the bf16 attention kernel instead of the model's fp32 attention: {kernel:,.0f} "
        f"tokens/s, fp32 attention / kernel = {bf16 / kernel:.2f}x (best of {args.train_rounds}; median "
        f"{statistics.median(rates['bf16_kernel']):,.0f})"
    )
    sel = max(rates["bf16_sel"])
    print(
        f"train  tiny bf16, head only at the {args.supervised:.0%} supervised positions: {sel:,.0f} tokens/s, "
        f"{sel / bf16:.2f}x the full head (best of {args.train_rounds}; median "
        f"{statistics.median(rates['bf16_sel']):,.0f})"
    )

    # 2. per-chunk generation latency with and without the KV cache
    for name in ("tiny", "small"):
        m = Transformer(preset(name, vocab_size=VOCAB, max_seq_len=512)).eval()
        prompt = torch.randint(0, VOCAB, (1, args.prompt))
        res = {}
        for cached in (True, False):
            chunk_latency(m, prompt, args.gen, cached)  # warm-up
            res[cached] = [chunk_latency(m, prompt, args.gen, cached) for _ in range(args.reps)]
        w, wo = res[True], res[False]
        print(
            f"chunk  {name:5s} ({m.num_params() / 1e6:.2f}M) {args.gen} tokens after {args.prompt}: "
            f"KV cache p50 {pct(w, 0.5) * 1e3:.1f} ms p99 {pct(w, 0.99) * 1e3:.1f} ms; "
            f"no cache p50 {pct(wo, 0.5) * 1e3:.1f} ms p99 {pct(wo, 0.99) * 1e3:.1f} ms; "
            f"speed-up {pct(wo, 0.5) / pct(w, 0.5):.1f}x (p50)"
        )

    # 3. GPU: bf16 training throughput and MFU
    if not torch.cuda.is_available():
        print("gpu    no CUDA device: bf16 tokens/s and MFU not measured")
        return
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    for name, batch in (("tiny", 64), ("small", 64), ("base", 32), ("large", 16)):
        m = Transformer(preset(name, vocab_size=VOCAB)).cuda()
        seq = 1024
        tps = train_tokens_per_s(m, batch, seq, torch.bfloat16, 10, "cuda")
        mfu = f"{6 * m.num_params() * tps / peak:.1%}" if peak else "n/a (unknown peak)"
        print(
            f"gpu    {name:5s} ({m.num_params() / 1e6:.1f}M) on {gpu}, batch {batch}x{seq} bf16: "
            f"{tps:,.0f} tokens/s, MFU {mfu}"
        )
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
