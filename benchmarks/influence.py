"""Influence engine throughput vs training throughput, on one model and one set of documents.

    python benchmarks/influence.py                          # tiny model on CPU, < 1 min
    python benchmarks/influence.py --model 20m --seq-len 512 --docs 16   # ~19M block params, CPU, minutes
    python benchmarks/influence.py --model 125m --seq-len 1024 --docs 64 --batch-size 8   # GPU
    python benchmarks/influence.py --compile --modes features,fused,fused-compiled   # hook-free path (fused.py)

--modes: InfluenceScorer.score_docs with reward_mode "features" / "exact" and scoring_impl="hooks"
(forward hooks: "features", "exact") or "fused" (fused.py, the default: "fused", "fused-exact"); a
"-compiled" suffix sets compile_scoring (compiled once in the warm-up run).
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import numpy as np
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from thresher.corpus.batching import pad_docs
from thresher.corpus.reference import ReferenceTask
from thresher.influence import InfluenceConfig, InfluenceScorer

MODELS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=172, vocab_size=512),
    "20m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1376, vocab_size=8192),
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048, vocab_size=32000),
}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


REPS = 1


def timed(fn, dev, reps=None):
    """Fastest of ``reps`` runs after one warm-up (compilation, allocator); the minimum resists noise
    from other processes on a shared machine."""
    fn()
    best = float("inf")
    for _ in range(reps or REPS):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def peak_mem_gb(dev):
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def cpu_peak_flops():
    a = torch.randn(1024, 1024)
    t = timed(lambda: a @ a, torch.device("cpu"), reps=5)
    return 2 * 1024**3 / t


def train_time(model, batches, dev, compile_):
    m = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    step_model = torch.compile(m) if compile_ else m

    def run():
        for b in batches:
            loss = step_model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return timed(run, dev)


def naive_time(model, docs, dev):
    """Per-example autograd loop: weight gradients of the tracked Linears, dot with a reference vector."""
    weights = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    for w in weights:
        w.requires_grad_(True)
    ref = [torch.randn_like(w) for w in weights]

    def run():
        for d in docs:
            b = {k: v.to(dev) for k, v in pad_docs([d], len(d)).items()}
            gs = torch.autograd.grad(model(**b).loss, weights)
            sum(float((g * r).sum()) for g, r in zip(gs, ref))

    return timed(run, dev)


def scorer_for(model, docs, args, **kw):
    r = np.random.default_rng(1)
    V = model.config.vocab_size
    ref = {f"ref{i}": ReferenceTask(f"ref{i}", [r.integers(1, V, 64) for _ in range(8)], [r.integers(1, V, 8) for _ in range(8)])
           for i in range(args.tasks)}
    kw = {"projection": args.projection, "full_space_max_entries": args.full_space_max_entries, **kw}
    cfg = InfluenceConfig(batch_size=args.batch_size, max_len=args.seq_len, autocast=args.autocast, fit_docs_max=len(docs), **kw)
    s = InfluenceScorer(model, ref, cfg, fit_docs=docs)
    dev = next(model.parameters()).device
    sync(dev)
    t = time.perf_counter()
    s.refresh(model)
    sync(dev)  # the refresh's last GPU work (reference gradients, their projection) is asynchronous
    return s, time.perf_counter() - t


def score_row(model, docs, args, pc, mode, dev):
    """(name, seconds, refresh seconds) of one scoring mode (see --modes): InfluenceScorer.score_docs
    with reward_mode features/exact and scoring_impl hooks/fused (compile_scoring for "-compiled")."""
    reward_mode = "exact" if "exact" in mode else "features"
    impl = "fused" if mode.startswith("fused") else "hooks"
    s, t_fit = scorer_for(model, docs, args, preconditioner=pc, reward_mode=reward_mode, scoring_impl=impl,
                          compile_scoring=mode.endswith("-compiled"))
    return f"score {pc} {mode} {s.cfg.projection[:4]}", timed(lambda: s.score_docs(docs), dev), t_fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=sorted(MODELS))
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--autocast", default="", choices=["", "bf16", "fp16"])
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s in TFLOP/s (default 800 on CUDA, measured on CPU)")
    ap.add_argument("--proj-dims", default="512,2048,8192", help="'' skips the projection-size sweep")
    ap.add_argument("--tasks", type=int, default=1, help="reference tasks (exact mode: one target per task)")
    ap.add_argument("--preconditioners", default="none,kfac,ekfac")
    ap.add_argument("--modes", default="features,fused,exact,fused-exact",
                    help="features, exact (hooks), fused, fused-exact (fused.py), each with an optional -compiled suffix")
    ap.add_argument("--projection", default="auto", help="InfluenceConfig.projection (auto, reference, orthogonal, ...)")
    ap.add_argument("--full-space-max-entries", type=int, default=1 << 29, help="InfluenceConfig.full_space_max_entries")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per row (the fastest is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default); use 1 on a busy machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global REPS
    REPS = args.reps

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=max(2048, args.seq_len), **MODELS[args.model])
    model = LlamaForCausalLM(cfg).to(dev)
    if dev.type == "cuda" and args.autocast == "bf16":
        model = model.to(torch.bfloat16)
    docs = [np.random.default_rng(i).integers(1, cfg.vocab_size, args.seq_len) for i in range(args.docs)]
    n_tok = args.docs * args.seq_len
    batches = [{k: v.to(dev) for k, v in pad_docs(docs[i : i + args.batch_size], args.seq_len).items()}
               for i in range(0, len(docs), args.batch_size)]
    n_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    peak = (args.peak_tflops * 1e12) if args.peak_tflops else (800e12 if dev.type == "cuda" else cpu_peak_flops())
    limit_s = 4 * n_params * n_tok / peak  # forward 2NP + activation-only backward 2NP
    print(f"device={dev} model={args.model} block params={n_params / 1e6:.2f}M tokens={n_tok} peak={peak / 1e12:.3f} TFLOP/s "
          f"torch={torch.__version__} transformers={transformers.__version__}")

    # each row is printed as soon as it is measured (flush): a run cut by a timeout still reports what finished
    print(f"{'what':<34}{'tok/s':>12}{'docs/s':>10}{'vs train':>10}{'vs train(c)':>12}{'FLOP-limit frac':>17}{'refresh s':>11}",
          flush=True)
    times: dict = {}

    def report(name, t, fit=None):
        times[name] = t
        t_train, t_comp = times["train (eager)"], times.get("train (compiled)")
        frac = f"{limit_s / t:.3f}" if name.startswith("score") or name.startswith("naive") else ""
        vs_c = f"{t_comp / t:.3f}" if t_comp else ""
        print(f"{name:<34}{n_tok / t:>12.0f}{args.docs / t:>10.1f}{t_train / t:>10.3f}{vs_c:>12}{frac:>17}"
              f"{(f'{fit:.2f}' if fit else ''):>11}", flush=True)

    report("train (eager)", train_time(model, batches, dev, False))
    if args.compile:
        report("train (compiled)", train_time(model, batches, dev, True))
    for pc in args.preconditioners.split(","):
        for mode in args.modes.split(","):
            report(*score_row(model, docs, args, pc, mode, dev))
    if args.model == "tiny" or args.docs <= 16:
        report("naive per-example loop", naive_time(model, docs[: min(8, len(docs))], dev) * len(docs) / min(8, len(docs)))
    print(f"peak memory: {peak_mem_gb(dev):.2f} GB ({'CUDA allocated' if dev.type == 'cuda' else 'process max RSS'})")

    print("cost vs projection size (ekfac):", flush=True)
    for pd in [int(x) for x in args.proj_dims.split(",") if x]:
        s, t_fit = scorer_for(model, docs, args, preconditioner="ekfac", projection_dim=pd, reward_mode="features")
        t = timed(lambda: s.score_docs(docs), dev)
        print(f"  projection_dim={pd:<6} D={s.feats.dim:<6} score tok/s={n_tok / t:>10.0f} refresh={t_fit:.2f}s", flush=True)


if __name__ == "__main__":
    main()
