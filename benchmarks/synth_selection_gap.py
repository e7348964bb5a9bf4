"""Does data selection matter in the synthetic world? Train a tiny LLaMA on top-utility vs random data.

For each seed: generate the world, pick documents up to the same token budget either by ground-truth
utility (cell x quality-interval table of ground_truth.json) or uniformly at random, train the same tiny
LlamaForCausalLM for the same number of steps on each, and print the reference loss (mean NLL over
continuation tokens of the tasks' eval parts) for both and the gap (random - top).

    .venv/bin/python benchmarks/synth_selection_gap.py --seeds 0 1 --steps 300
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from thresher.corpus.batching import pad_examples
from thresher.corpus.reference import read_reference_jsonl, tokenize_task
from thresher.corpus.synth import generate, read_corpus
from thresher.corpus.synth_config import SynthConfig
from thresher.labels.intervals import quality_interval
from thresher.utils.io import read_json


def load_world(seed: int, n_docs: int, root: Path):
    from tokenizers import Tokenizer

    out = root / f"world-{seed}"
    generate(SynthConfig(seed=seed, n_docs=n_docs), out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    recs = read_corpus(out)
    ids = [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch([r["text"] for r in recs])]
    return out, tok, recs, ids


def doc_scores(recs: list[dict], gt: dict) -> np.ndarray:
    """Ground-truth utility of each doc's (domain, topic, quality interval); unseen combinations -> 0."""
    table = gt["cell_interval_utility"]["mean"]
    q = quality_interval(np.array([r["quality"] for r in recs]))
    return np.array([table[r["domain"]][r["topic"]][j] or 0.0 for r, j in zip(recs, q.tolist())])


def take_budget(order: np.ndarray, lengths: np.ndarray, budget: int) -> np.ndarray:
    return order[: int(np.searchsorted(np.cumsum(lengths[order]), budget, side="right"))]


def token_stream(docs: list[np.ndarray], eos: int) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([np.append(d, eos) for d in docs]))


def make_model(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def train(model, stream: torch.Tensor, steps: int, batch: int, seq: int, lr: float, seed: int) -> None:
    """AdamW, linear warmup then cosine; random windows of the packed stream. (B, T) batches."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=g)
        x = torch.stack([stream[s : s + seq] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


@torch.no_grad()
def reference_nll(model, examples, batch: int = 64) -> float:
    """Mean NLL per continuation token, summed over all examples then divided (not a mean of means)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch):
        b = pad_examples(examples[i : i + batch], max_len=128, pad_id=1)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        # position t predicts token t + 1: (B, T-1, V) vs (B, T-1)
        lp = F.cross_entropy(logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(), reduction="sum",
                             ignore_index=-100)
        total += float(lp)
        count += int((b["labels"][:, 1:] != -100).sum())
    return total / count


def run_seed(seed: int, args, root: Path) -> dict:
    out, tok, recs, ids = load_world(seed, args.n_docs, root)
    gt = read_json(out / "ground_truth.json")
    lengths = np.array([len(d) for d in ids])
    budget = int(args.budget_fraction * lengths.sum())
    top = take_budget(np.argsort(-doc_scores(recs, gt), kind="stable"), lengths, budget)
    rand = take_budget(np.random.default_rng(seed).permutation(len(ids)), lengths, budget)
    evals = {}
    for task in gt["tasks"]:
        full = tokenize_task(task, read_reference_jsonl(out / "reference" / f"{task}.jsonl"), tok)
        evals[task] = full.split(0.5, seed=seed)[1].examples()
    res = {"seed": seed, "budget_tokens": budget, "top_docs": len(top), "random_docs": len(rand)}
    for name, sel in [("top", top), ("random", rand)]:
        t0 = time.perf_counter()
        model = make_model(tok.get_vocab_size(), seed)
        train(model, token_stream([ids[i] for i in sel], eos=0), args.steps, args.batch, args.seq, args.lr, seed)
        for task, ex in evals.items():
            res[f"{name}/{task}"] = reference_nll(model, ex)
        res[f"{name}/mean"] = float(np.mean([res[f"{name}/{t}"] for t in evals]))
        res[f"{name}/seconds"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n-docs", type=int, default=20_000)
    ap.add_argument("--budget-fraction", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = run_seed(seed, args, Path(tmp))
            tasks = sorted({k.split("/")[1] for k in r if k.startswith("top/")} - {"seconds", "mean"})
            print(f"seed {seed}: budget {r['budget_tokens']} tokens ({r['top_docs']} top docs, "
                  f"{r['random_docs']} random docs), {args.steps} steps")
            for t in tasks + ["mean"]:
                top, rnd = r[f"top/{t}"], r[f"random/{t}"]
                print(f"  {t:12s} top-utility {top:.3f}  random {rnd:.3f}  gap {rnd - top:+.3f} nats")
            print(f"  train seconds: top {r['top/seconds']:.1f}, random {r['random/seconds']:.1f}")


if __name__ == "__main__":
    main()
