"""How well projected influence rewards rank documents like the exact (unprojected) ones.

The `tiny` model (hidden 64, 2 layers) is trained a few steps on a small synthetic world; the reference
tasks are the world's synth_cloze and synth_qa. For each preconditioner, the exact rewards
(projection="none", same preconditioner) are compared with projected ones: Spearman per projection seed.

    python benchmarks/influence_projection.py                      # none, kfac, ekfac at 1024, 8192, 32768
    python benchmarks/influence_projection.py --dims 8192 --set precondition_space=projected
    python benchmarks/influence_projection.py --dims 8192 --seeds 1 --exact-mode   # + reward_mode="exact"
    python benchmarks/influence_projection.py --model 20m --steps 150 --dims 8192 --seeds 1 \
        --projections orthogonal,reference     # a wider model (truth: reward_mode="exact")
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from thresher.corpus.batching import pad_docs
from thresher.corpus.reference import read_reference, tokenize_task
from thresher.corpus.synth import generate
from thresher.corpus.synth_config import SynthConfig
from thresher.influence import InfluenceConfig, InfluenceScorer
from thresher.train.models import build_model


def synthetic_setup(n_world: int = 600, n_docs: int = 160, steps: int = 60, seq_len: int = 128, ref_limit: int = 64,
                    model_name: str = "tiny", dtype: torch.dtype = torch.float64):
    """(model, reference tasks, documents): the model trained ``steps`` AdamW steps (float64 by default)."""
    from tokenizers import Tokenizer

    torch.manual_seed(0)
    w = generate(SynthConfig(n_docs=n_world, seed=0, mixed_formats=False), Path(tempfile.mkdtemp()) / "world")
    tok = Tokenizer.from_file(w["tokenizer"])
    texts = []
    for shard in w["shards"]:  # in order, until n_docs
        texts += [json.loads(line)["text"] for line in gzip.open(shard, "rt")][: n_docs - len(texts)]
    docs = [np.array(tok.encode(t).ids[:seq_len]) for t in texts]
    ref = {n: tokenize_task(n, read_reference(p, limit=ref_limit), tok) for n, p in w["reference"].items()}
    model = build_model(model_name, tok.get_vocab_size()).to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        b = pad_docs([docs[(step * 8 + i) % len(docs)] for i in range(8)], seq_len)
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), ref, docs


def rewards(model, ref, fit, docs, **kw) -> np.ndarray:
    kw.setdefault("reward_mode", "features")
    s = InfluenceScorer(model, ref, InfluenceConfig(max_len=128, batch_size=16, **kw), fit)
    s.refresh(model, 0)
    return s.score_docs(docs)


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="1024,8192,32768")
    ap.add_argument("--preconditioners", default="none,kfac,ekfac")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--n-fit", type=int, default=64)
    ap.add_argument("--exact-mode", action="store_true", help="also score with reward_mode='exact'")
    ap.add_argument("--model", default="tiny", help="model config (tiny: truth = projection='none'; else reward_mode='exact')")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--steps", type=int, default=60, help="AdamW steps on the world before scoring")
    ap.add_argument("--projections", default="", help="comma list of projections to compare (default: the config's)")
    ap.add_argument("--set", action="append", default=[], help="InfluenceConfig field=value for the projected runs")
    args = ap.parse_args()
    kw = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    t0 = time.perf_counter()
    model, ref, docs = synthetic_setup(steps=args.steps, model_name=args.model, dtype=getattr(torch, args.dtype))
    fit, cand = docs[: args.n_fit], docs[args.n_fit :]
    print(f"setup {time.perf_counter() - t0:.1f}s; {len(cand)} candidates; projected runs with {kw}")
    projections = [p for p in args.projections.split(",") if p] or [kw.get("projection", "")]
    for pc in args.preconditioners.split(","):
        truth = dict(projection="none", reward_mode="features") if args.model == "tiny" else dict(reward_mode="exact")
        exact = rewards(model, ref, fit, cand, preconditioner=pc, **truth)
        if args.exact_mode:  # reward_mode="exact": no projection, no per-document gradient
            t = time.perf_counter()
            r = rewards(model, ref, fit, cand, preconditioner=pc, reward_mode="exact")
            print(f"{pc:<6} reward_mode=exact spearman {spearmanr(exact, r).statistic:.6f} "
                  f"max rel err {np.abs(r - exact).max() / np.abs(exact).max():.1e} ({time.perf_counter() - t:.1f}s)", flush=True)
        for proj, dim in [(p, int(d)) for p in projections for d in args.dims.split(",")]:
            pkw = dict(kw, **({"projection": proj} if proj else {}))
            t = time.perf_counter()
            rho = [spearmanr(exact, rewards(model, ref, fit, cand, projection_dim=dim, preconditioner=pc, seed=s, **pkw)).statistic
                   for s in range(args.seeds)]
            print(f"{pc:<6} {proj:<10} dim={dim:<6} spearman " + " ".join(f"{r:.3f}" for r in rho)
                  + f"  min {min(rho):.3f}  ({(time.perf_counter() - t) / args.seeds:.1f}s each)", flush=True)


if __name__ == "__main__":
    main()
