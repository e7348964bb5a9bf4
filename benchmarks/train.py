"""Trainer throughput: tokens/s, MFU and peak memory of thresher.train vs a plain LlamaForCausalLM + AdamW loop.

    .venv/bin/python benchmarks/train.py                                   # tiny on CPU, eager + compiled
    .venv/bin/python benchmarks/train.py --models 125m,370m --seq-len 1024 --micro-batch 8   # on a GPU
    .venv/bin/python benchmarks/train.py --models 370m --seq-len 1024 --micro-batch 16 --loss full,chunked
    .venv/bin/python benchmarks/train.py --modes compiled,compiled-layers   # whole-model vs per-layer compile

Both sides train the same config on random tokens for --steps updates; the first --warmup updates
(compilation, allocator warm-up) are excluded from tokens/s; "1st update s" is the first update's time,
i.e. mostly the (cold-cache) compile time: Dynamo is reset before every run and Inductor's caches are
off, but Inductor's one-time start-up (imports, compile workers) falls on the first compiled run of the
process only (thresher's: it runs before the plain baseline), so later rows' first updates are a few
seconds short of a cold start in a fresh process (run one --modes/--loss per process for cold numbers on
every row). Each measurement is printed as a "# ..." line as soon as it is taken, the table row when both
sides of it are known. The plain loop (full logits + F.cross_entropy) is the
reference for the overhead of the selector hook, the packed loader, metrics and callbacks; with
``--loss full,chunked`` thresher runs once per loss implementation (TrainConfig.loss_impl) against
the same plain number. Peak memory is torch.cuda.max_memory_allocated of the thresher run (n/a on CPU).
"""

from __future__ import annotations

import os

# "1st update s" is the cold compile: Inductor's on-disk caches would otherwise serve a graph compiled by an
# earlier run (or by the plain baseline) to the next one. Set it to 0 to measure warm-cache starts.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import argparse
import contextlib
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch
import torch._dynamo
import torch.nn.functional as F

from thresher.agents.base import Selector
from thresher.train.config import TrainConfig
from thresher.train.loop import _peak_flops, build_optimizer, train
from thresher.train.models import build_model, count_flops_per_token, get_model_config


class RandomStore:
    def __init__(self, n_docs: int, vocab: int, seed: int = 0):
        g = np.random.default_rng(seed)
        self.lengths = g.integers(200, 2000, n_docs).astype(np.int64)
        self._data = g.integers(2, vocab, int(self.lengths.sum())).astype(np.int64)
        self._off = np.concatenate([[0], np.cumsum(self.lengths)])
        self.n_docs, self.vocab_size, self.eos_id, self.pad_id = n_docs, vocab, 1, 0

    def doc(self, i):
        return self._data[self._off[i] : self._off[i + 1]]


class AllDocs(Selector):
    def setup(self, ctx):
        pass

    def initial_selection(self):
        self._set_selection(np.arange(self.n))
        return self._selection

    def __init__(self, n):
        super().__init__()
        self.n = n


def dynamo_graphs() -> str:
    """Graphs Dynamo compiled and graph breaks since the counters were last cleared: compile_scope="layers"
    should give 1 graph (every layer reusing it); more means recompiles (past the recompile limit, 8, the
    remaining layers would silently run eagerly)."""
    c = torch._dynamo.utils.counters
    return f"graphs={c['stats']['unique_graphs']} breaks={sum(c['graph_break'].values())}"


def thresher_tps(cfg: TrainConfig, store, warmup: int) -> tuple[float, float | None, float]:
    """(tokens/s after warm-up, peak GiB allocated on the GPU or None on CPU, seconds of the first update:
    compilation included)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()  # no graph compiled by an earlier row is reused
    torch._dynamo.utils.counters.clear()  # for dynamo_graphs()
    with tempfile.TemporaryDirectory() as out:
        train(cfg, store, AllDocs(store.n_docs), out)
        lines = [json.loads(ln) for ln in open(f"{out}/metrics.jsonl")]
    first, lines = lines[0]["step_s"], lines[warmup:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return sum(m["tokens_per_s"] ** -1 for m in lines) ** -1 * len(lines), peak, first  # tokens / total seconds


def plain_tps(cfg: TrainConfig, vocab: int, warmup: int) -> tuple[float, float]:
    """(tokens/s after warm-up, seconds of the first update) of plain LlamaForCausalLM + AdamW (whole-model
    torch.compile when cfg.compile)."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # for dynamo_graphs()
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab).to(dev)
    opt = build_optimizer(model, cfg, dev)
    engine = torch.compile(model) if cfg.compile else model
    accum = cfg.global_batch_tokens // (cfg.micro_batch * cfg.seq_len)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    times = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        for _ in range(accum):
            ids = torch.randint(2, vocab, (cfg.micro_batch, cfg.seq_len + 1), device=dev)
            with amp:
                logits = engine(input_ids=ids[:, :-1], use_cache=False).logits  # no KV cache, as thresher
            (F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()) / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return cfg.global_batch_tokens * len(times[warmup:]) / sum(times[warmup:]), times[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--modes", default="eager,compiled",
                    help="eager, compiled (TrainConfig.compile_scope='model'), compiled-layers (compile_scope='layers')")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--loss", default="full", help="comma list of TrainConfig.loss_impl values: full,chunked")
    ap.add_argument("--chunk-tokens", type=int, default=4096, help="TrainConfig.loss_chunk_tokens")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    store = RandomStore(2000, args.vocab)
    import transformers

    print(f"device={dev} threads={torch.get_num_threads()} seq_len={args.seq_len} micro_batch={args.micro_batch} "
          f"torch={torch.__version__} transformers={transformers.__version__}")
    print(f"{'model':>6} {'mode':>15} {'loss':>7} {'thresher tok/s':>15} {'plain tok/s':>12} {'ratio':>6} "
          f"{'MFU':>6} {'peak GiB':>8} {'1st update s':>13} {'plain 1st s':>12}")
    for name in args.models.split(","):
        plains = {}  # the plain baseline once per (eager | whole-model compiled)
        for mode in args.modes.split(","):
            cfg = TrainConfig(model=name, seq_len=args.seq_len, micro_batch=args.micro_batch,
                              global_batch_tokens=args.seq_len * args.micro_batch * args.accum, steps=args.steps,
                              warmup_steps=2, compile=mode.startswith("compiled"), device=dev, export=False,
                              compile_scope="layers" if mode == "compiled-layers" else "model",
                              loss_chunk_tokens=args.chunk_tokens)
            peak = _peak_flops(cfg, torch.device(dev))
            fpt = count_flops_per_token(get_model_config(name), args.vocab, args.seq_len)
            # thresher first, each number printed ("# ..." lines) as soon as it is measured: a run cut by a
            # timeout (e.g. during the plain baseline's whole-model compile) still reports what finished
            ours_rows = []
            for loss in args.loss.split(","):
                ours, mem, first = thresher_tps(dataclasses.replace(cfg, loss_impl=loss), store, args.warmup)
                mfu = f"{fpt * ours / peak:.1%}" if peak else "n/a"
                mem_s = f"{mem:.2f}" if mem is not None else "n/a"
                print(f"# thresher {name} {mode} {loss}: {ours:,.0f} tok/s, MFU {mfu}, peak {mem_s} GiB, "
                      f"1st update {first:.1f} s, {dynamo_graphs()}", flush=True)
                ours_rows.append((loss, ours, mfu, mem_s, first))
            if cfg.compile not in plains:
                plains[cfg.compile] = plain_tps(cfg, args.vocab, args.warmup)
                print(f"# plain {name} {'compiled' if cfg.compile else 'eager'}: {plains[cfg.compile][0]:,.0f} tok/s, "
                      f"1st update {plains[cfg.compile][1]:.1f} s, {dynamo_graphs()}", flush=True)
            plain, plain_first = plains[cfg.compile]
            for loss, ours, mfu, mem_s, first in ours_rows:
                print(f"{name:>6} {mode:>15} {loss:>7} {ours:>15,.0f} {plain:>12,.0f} {ours / plain:>6.2f} {mfu:>6} "
                      f"{mem_s:>8} {first:>13.1f} {plain_first:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
