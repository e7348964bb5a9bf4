"""What a refresh costs, and what reusing the (E)K-FAC factors across refreshes costs in ranking.

A model is trained on a small synthetic world; every ``--every`` steps (one selection update, U) the
influence engine refreshes. The engines run side by side on the same snapshots:
  fresh   influence.factor_refresh_every = 1: factors re-estimated at every refresh (the baseline)
  reused  factor_refresh_every = N, factor_reuse = "all": factors fit at the first refresh of every N,
          everything reused after
  basis   (EK-FAC) factor_refresh_every = N, factor_reuse = "eigenbasis": eigenbases reused, Lambda
          re-estimated at every refresh
For each refresh it prints the refresh times and the Spearman correlation of each engine's rewards with
the fresh engine's on held-out candidate documents (1.0 at the refits). The ratio lines are the mean
refresh times against fresh.
For scale, "resample" is the Spearman between the fresh engine and a fresh engine whose factors come from
another sample of fit documents of the same size: the noise of the factor estimate itself.

    python benchmarks/influence_refresh.py                          # tiny model, CPU, ~1 min
    python benchmarks/influence_refresh.py --model 20m --dtype float32 --steps 40 --every 40 --refreshes 4 \
        --preconditioners ekfac --seq-len 256                        # thresher's 20m: hidden 256, 8 layers
    python benchmarks/influence_refresh.py --steps 1500 --n-train 12500 --lr-late 3e-4  # later in training
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from influence_projection import synthetic_setup
from scipy.stats import spearmanr

from thresher.corpus.batching import pad_docs
from thresher.influence import InfluenceConfig, InfluenceScorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--steps", type=int, default=60, help="AdamW steps before the first refresh")
    ap.add_argument("--every", type=int, default=25, help="AdamW steps between refreshes (U)")
    ap.add_argument("--refreshes", type=int, default=5)
    ap.add_argument("--reuse", type=int, default=0, help="factor_refresh_every of the reused engine (0 = --refreshes)")
    ap.add_argument("--preconditioners", default="kfac,ekfac")
    ap.add_argument("--projection", default="auto")
    ap.add_argument("--n-fit", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=200,
                    help="training documents (cycled; raise it with --steps so the model sees fresh data, not epochs)")
    ap.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate before the first refresh (constant)")
    ap.add_argument("--lr-late", type=float, default=0.0,
                    help="learning rate from the first refresh on (0 = --lr); e.g. --steps 1500 --lr-late 3e-4 "
                         "stands for a late stage of a decayed schedule")
    args = ap.parse_args()
    reuse = args.reuse or args.refreshes

    n_docs = 2 * args.n_fit + 96 + args.n_train
    model, ref, docs = synthetic_setup(n_world=max(2000, n_docs + 100), n_docs=n_docs, steps=0, model_name=args.model,
                                       dtype=getattr(torch, args.dtype), seq_len=args.seq_len)
    fit, fit_b = docs[: args.n_fit], docs[args.n_fit : 2 * args.n_fit]
    cand, train = docs[2 * args.n_fit : 2 * args.n_fit + 96], docs[2 * args.n_fit + 96 :]
    if not train:
        raise SystemExit(f"the world holds only {len(docs)} documents; lower --n-fit")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)  # one optimizer throughout, as in a real run
    snapshots = []
    for step in range(args.steps + args.every * (args.refreshes - 1) + 1):
        if step == args.steps and args.lr_late:
            for g in opt.param_groups:
                g["lr"] = args.lr_late
        if step >= args.steps and (step - args.steps) % args.every == 0:
            snapshots.append(copy.deepcopy(model).eval())
            if len(snapshots) == args.refreshes:
                break
        model.train()
        b = pad_docs([train[(step * 8 + i) % len(train)] for i in range(8)], args.seq_len)
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"model={args.model} {args.dtype}; {len(train)} training docs, {8 * step / len(train):.2f} epochs; lr {args.lr:g}, from step {args.steps} {args.lr_late or args.lr:g}; "
          f"{len(snapshots)} refreshes {args.every} steps apart; reused engine: "
          f"factor_refresh_every={reuse}; {len(cand)} candidates, {len(fit)} fit docs of <= {args.seq_len} tokens")

    for pc in args.preconditioners.split(","):
        engines = {}
        kinds = [("fresh", 1, fit, "all"), ("reused", reuse, fit, "all"), ("resample", 1, fit_b, "all")]
        if pc == "ekfac":
            kinds.insert(2, ("basis", reuse, fit, "eigenbasis"))
        for name, n, f, what in kinds:
            cfg = InfluenceConfig(preconditioner=pc, projection=args.projection, factor_refresh_every=n,
                                  factor_reuse=what, max_len=args.seq_len, batch_size=16, fit_docs_max=len(f))
            engines[name] = InfluenceScorer(snapshots[0], ref, cfg, f)
        times = {name: [] for name in engines}
        print(f"\n{pc} (projection={engines['fresh'].cfg.projection})")
        cols = [n for n in engines if n not in ("fresh", "resample")]
        print(f"{'refresh':>8}{'step':>7}{'refit':>7}" + "".join(f"{n + ' s':>11}" for n in engines)
              + "".join(f"{'rho ' + n:>13}" for n in cols + ["resample"]))
        for i, snap in enumerate(snapshots):
            r = {}
            for name, s in engines.items():
                t = time.perf_counter()
                s.refresh(snap, step=args.steps + i * args.every)
                times[name].append(time.perf_counter() - t)
                r[name] = s.score_docs(cand)
            print(f"{i:>8}{args.steps + i * args.every:>7}{'yes' if engines['reused'].last_refit else 'no':>7}"
                  + "".join(f"{times[n][-1]:>11.2f}" for n in engines)
                  + "".join(f"{spearmanr(r['fresh'], r[n]).statistic:>13.4f}" for n in cols + ["resample"]), flush=True)
        f = np.mean(times["fresh"])
        print("mean refresh: fresh {:.2f}s; ".format(f)
              + "; ".join(f"{n} {np.mean(times[n]):.2f}s, ratio {n}/fresh {np.mean(times[n]) / f:.3f}" for n in cols))


if __name__ == "__main__":
    main()
