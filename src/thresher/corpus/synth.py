"""A synthetic pretraining world where data selection matters and the right answer is known.

Words are pseudo-words. Every (domain, topic) cell has its own "grammar": the next word is drawn from a
mixture of three sparse bigram chains, one shared by the domain, one shared by the topic, one private to
the cell (weights ``chain_mix``). The reference tasks are generated from the grammars of a known, graded
set of cells, so training on those cells (and, less, on cells sharing their domain or topic chain) lowers
the reference loss. A latent quality q in [0, 5] corrupts a fraction noise_max * (1 - q/5)**noise_power of
a document's tokens (random tokens, repetition loops, boilerplate lines shared across documents).

Known utility of a document for a task = u(cell) * (fraction of its word transitions left clean), where
u(cell) = mean over the task's scored transitions (w -> x) of P_cell(x | w): the probability the cell's
own process gives the right continuation. ground_truth.json aggregates it per cell, domain, topic and
quality interval (doc means, i.e. the expected reward of a random document of that category).

Outputs of ``generate(cfg, out_dir)`` (each written atomically; ground_truth.json last, as the marker):
  corpus/shard-00000.jsonl.gz ...   records {id, text, domain, topic, quality, meta}
  tokenizer.json                    HF tokenizers WordLevel over the whole vocabulary, whitespace split
  reference/synth_cloze.jsonl       LAMBADA-like: passage -> its most probable next word
  reference/synth_qa.jsonl          QA-like: "question" ending in a word -> the 2-word most probable path
  ground_truth.json                 utilities + the settings that made them
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thresher.corpus.synth_config import DOMAINS, REDPAJAMA_SET_NAMES, TOPICS, SynthConfig
from thresher.labels.intervals import QUALITY_INTERVALS, quality_interval
from thresher.utils.errors import SettingsMismatchError, ThresherError
from thresher.utils.io import (atomic_path, atomic_write_bytes, atomic_write_json, make_dir, read_json,
                               remove_stale_temps)
from thresher.utils.log import print0
from thresher.utils.seeding import rng

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<unk>"]  # token ids 0, 1, 2; word i has token id i + 3
PUNCTUATION = [".", ",", "?", ":"]  # the first function words
TASKS = ["synth_cloze", "synth_qa"]
N_D, N_T = len(DOMAINS), len(TOPICS)
N_CHAINS = N_D + N_T + N_D * N_T  # domain chains, topic chains, cell chains
GROUND_TRUTH_VERSION = 1


@dataclass
class World:
    """The generating process. Word ids index ``words``; chain g's sparse bigram is succ[g], prob[g]."""

    cfg: SynthConfig
    words: list[str]
    func: np.ndarray  # (n_function_words,) word ids
    dom_words: np.ndarray  # (N_D, n_domain_words)
    top_words: np.ndarray  # (N_T, n_topic_words)
    junk: np.ndarray  # (n_junk_words,)
    succ: np.ndarray  # (N_CHAINS, V, k) int32 successor word ids
    prob: np.ndarray  # (N_CHAINS, V, k) float64 successor probabilities (rows sum to 1)
    boilerplate: list[np.ndarray]  # shared corrupting lines of junk words

    @property
    def V(self) -> int:
        return len(self.words)


def cell_index(d: np.ndarray | int, t: np.ndarray | int):
    return d * N_T + t


def cell_chains(cells: np.ndarray) -> np.ndarray:
    """(n,) cell ids -> (n, 3) chain ids [domain chain, topic chain, cell chain]."""
    cells = np.asarray(cells, dtype=np.int64)
    d, t = cells // N_T, cells % N_T
    return np.stack([d, N_D + t, N_D + N_T + cells], axis=1)


# ----------------------------------------------------------------------------------------- the world


def build_world(cfg: SynthConfig) -> World:
    cfg.validate()
    r = rng(cfg.seed, "synth", "world")
    n_f, n_d, n_t, n_j = cfg.n_function_words, cfg.n_domain_words, cfg.n_topic_words, cfg.n_junk_words
    V = n_f + N_D * n_d + N_T * n_t + n_j
    words = PUNCTUATION + _pseudo_words(V - len(PUNCTUATION), r)
    func = np.arange(n_f)
    dom_words = n_f + np.arange(N_D * n_d).reshape(N_D, n_d)
    top_words = n_f + N_D * n_d + np.arange(N_T * n_t).reshape(N_T, n_t)
    junk = V - n_j + np.arange(n_j)
    succ, prob = _chains(cfg, r, V, func, dom_words, top_words)
    lo, hi = cfg.boilerplate_words
    boiler = [r.choice(junk, size=r.integers(lo, hi + 1)) for _ in range(cfg.n_boilerplate_lines)]
    return World(cfg, words, func, dom_words, top_words, junk, succ, prob, boiler)


def _pseudo_words(n: int, r: np.random.Generator) -> list[str]:
    """n distinct lowercase pseudo-words of 2 or 3 consonant-vowel syllables."""
    syl = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]  # 75 syllables
    S = len(syl)
    if n > S**2 + S**3:
        raise ThresherError(f"synth: vocabulary of {n} words is too large (max {S**2 + S**3})")
    codes = np.sort(r.choice(S**2 + S**3, size=n, replace=False))
    codes = codes[r.permutation(n)]
    out = []
    for c in codes.tolist():
        k, c = (2, c) if c < S**2 else (3, c - S**2)
        out.append("".join(syl[(c // S**i) % S] for i in range(k)))
    return out


def _chains(cfg, r, V, func, dom_words, top_words) -> tuple[np.ndarray, np.ndarray]:
    """Sparse bigrams for every chain: each word gets k successors from the chain's own vocabulary."""
    k = cfg.n_successors
    succ = np.empty((N_CHAINS, V, k), dtype=np.int32)
    prob = np.empty((N_CHAINS, V, k), dtype=np.float64)
    for g in range(N_CHAINS):
        allowed = _chain_vocab(g, func, dom_words, top_words)
        succ[g] = allowed[r.integers(0, len(allowed), size=(V, k))]
        prob[g] = r.dirichlet(np.full(k, cfg.successor_concentration), size=V)
    return succ, prob


def _chain_vocab(g: int, func, dom_words, top_words) -> np.ndarray:
    if g < N_D:
        return np.concatenate([func, dom_words[g]])
    if g < N_D + N_T:
        return np.concatenate([func, top_words[g - N_D]])
    d, t = divmod(g - N_D - N_T, N_T)
    return np.concatenate([func, dom_words[d], top_words[t]])


def walk(world: World, chains: np.ndarray, lengths: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Clean Markov walks, all documents at once. chains (n, 3), lengths (n,) -> (n, max_len) int32.

    Rows are walked in order of decreasing length so the live rows at step i are a prefix; the start
    state is "." (a sentence boundary) and is not emitted.
    """
    n, L = len(lengths), int(lengths.max(initial=0))
    order = np.argsort(-lengths, kind="stable")
    ch, lens = chains[order], lengths[order]
    cum_mix = np.cumsum(world.cfg.chain_mix) / np.sum(world.cfg.chain_mix)
    cum_prob = np.cumsum(world.prob, axis=2)
    k = world.succ.shape[2]
    out = np.zeros((n, L), dtype=np.int32)
    state = np.zeros(n, dtype=np.int64)  # word 0 is "."
    live = n
    for i in range(L):
        while live and lens[live - 1] <= i:
            live -= 1
        comp = np.minimum(np.searchsorted(cum_mix, r.random(live), side="right"), 2)
        g = ch[np.arange(live), comp]
        s = state[:live]
        j = np.minimum((r.random(live)[:, None] > cum_prob[g, s]).sum(1), k - 1)
        state[:live] = world.succ[g, s, j]
        out[:live, i] = state[:live]
    result = np.empty_like(out)
    result[order] = out
    return result


def next_word_dist(world: World, cell: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """P_cell(. | w) as (distinct successor ids, probabilities)."""
    g = cell_chains(np.array([cell]))[0]
    mix = np.asarray(world.cfg.chain_mix, dtype=np.float64) / np.sum(world.cfg.chain_mix)
    cand = world.succ[g, w].ravel()
    p = (mix[:, None] * world.prob[g, w]).ravel()
    ids, inv = np.unique(cand, return_inverse=True)
    return ids, np.bincount(inv, weights=p)


def transition_probs(world: World, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """P_cell(x_i | w_i) for every cell: (n,) transitions -> (N_D * N_T, n) float64."""
    hit = world.succ[:, w, :] == x[None, :, None]  # (G, n, k)
    per_chain = (hit * world.prob[:, w, :]).sum(2)  # (G, n)
    mix = np.asarray(world.cfg.chain_mix, dtype=np.float64) / np.sum(world.cfg.chain_mix)
    ch = cell_chains(np.arange(N_D * N_T))  # (C, 3)
    return np.einsum("j,cjn->cn", mix, per_chain[ch])


# ----------------------------------------------------------------------------------------- documents


@dataclass
class Corpus:
    domain: np.ndarray  # (n,) int codes into DOMAINS
    topic: np.ndarray  # (n,) int codes into TOPICS
    quality: np.ndarray  # (n,) float in [0, 5]
    offsets: np.ndarray  # (n + 1,) into tokens
    tokens: np.ndarray  # (n_tokens,) word ids, all documents concatenated
    clean_frac: np.ndarray  # (n,) fraction of word transitions with both words uncorrupted


def sample_labels(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Domain, topic, quality and length of every document."""
    r = rng(cfg.seed, "synth", "labels")
    shares = np.array([cfg.domain_shares.get(d, 0.0) for d in DOMAINS], dtype=np.float64)
    if shares.sum() <= 0:
        raise ThresherError("synth: domain_shares must have a positive total")
    dom = r.choice(N_D, size=cfg.n_docs, p=shares / shares.sum())
    qual = np.empty(cfg.n_docs)
    topic = np.empty(cfg.n_docs, dtype=np.int64)
    for d in range(N_D):
        idx = np.flatnonzero(dom == d)
        mean, conc = cfg.domain_quality.get(DOMAINS[d], [0.5, 4.0])
        qual[idx] = 5.0 * r.beta(mean * conc, (1.0 - mean) * conc, size=len(idx))
        topic[idx] = r.choice(N_T, size=len(idx), p=_topic_mix(cfg, d, r))
    qual = np.round(qual, 4)  # exactly the value written to disk, so intervals agree with the records
    _concentrate(cfg, dom, topic, qual, r)
    scale = np.array([cfg.domain_length_scale.get(d, 1.0) for d in DOMAINS])[dom]
    raw = cfg.mean_words * scale * r.lognormal(-cfg.length_sigma**2 / 2, cfg.length_sigma, size=cfg.n_docs)
    lengths = np.clip(np.rint(raw), cfg.min_words, cfg.max_words).astype(np.int64)
    return dom, topic, qual, lengths


def _topic_mix(cfg: SynthConfig, d: int, r: np.random.Generator) -> np.ndarray:
    base = r.dirichlet(np.full(N_T, cfg.topic_concentration))
    boost = cfg.domain_topic_boost.get(DOMAINS[d], {})
    base = base * np.array([boost.get(t, 1.0) for t in TOPICS])
    return base / base.sum()


def _concentrate(cfg, dom, topic, qual, r) -> None:
    """High-quality docs of one domain are nearly all one topic (the paper's Books 4-5 observation)."""
    if not cfg.concentrated_domain:
        return
    d, t = DOMAINS.index(cfg.concentrated_domain), TOPICS.index(cfg.concentrated_topic)
    idx = np.flatnonzero((dom == d) & (qual >= cfg.concentrated_min_quality))
    # forced on top of the base mix: the realised share is s + (1 - s) * p_base(topic) >= s
    force = r.random(len(idx)) < cfg.concentrated_share
    topic[idx[force]] = t


def noise_fraction(cfg: SynthConfig, quality: np.ndarray) -> np.ndarray:
    """Expected fraction of corrupted tokens at quality q: noise_max * (1 - q/5) ** noise_power."""
    return cfg.noise_max * np.clip(1.0 - np.asarray(quality) / 5.0, 0.0, 1.0) ** cfg.noise_power


def sample_corpus(world: World) -> Corpus:
    cfg = world.cfg
    dom, topic, qual, lengths = sample_labels(cfg)
    mat = walk(world, cell_chains(cell_index(dom, topic)), lengths, rng(cfg.seed, "synth", "walk"))
    tokens = mat[np.arange(mat.shape[1])[None, :] < lengths[:, None]]  # row-major: docs in order
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    clean = corrupt(world, tokens, offsets, noise_fraction(cfg, qual), rng(cfg.seed, "synth", "noise"))
    return Corpus(dom, topic, qual, offsets, tokens, _clean_transition_frac(clean, offsets))


def corrupt(world: World, tokens: np.ndarray, offsets: np.ndarray, rho: np.ndarray, r) -> np.ndarray:
    """Corrupt ``tokens`` in place; returns the (n_tokens,) mask of tokens left clean.

    rho (n_docs,) is split by noise_mix into repetition loops (a short span repeated), boilerplate
    lines (shared junk sequences overwriting text) and uniformly random words.
    """
    clean = np.ones(len(tokens), dtype=bool)
    mix = np.asarray(world.cfg.noise_mix, dtype=np.float64) / max(np.sum(world.cfg.noise_mix), 1e-12)
    lengths = np.diff(offsets)
    _repetition_loops(tokens, clean, offsets, np.rint(mix[1] * rho * lengths).astype(np.int64), r)
    _boilerplate(world, tokens, clean, offsets, mix[2] * rho * lengths, r)
    doc_rho = np.repeat(mix[0] * rho, lengths)
    hit = r.random(len(tokens)) < doc_rho
    tokens[hit] = r.integers(0, world.V, size=int(hit.sum()))
    clean &= ~hit
    return clean


def _repetition_loops(tokens, clean, offsets, n_loop, r) -> None:
    """One loop per doc: a span of 2-5 words copied over the next n_loop words."""
    for i in np.flatnonzero(n_loop >= 2).tolist():
        a, b, m = int(offsets[i]), int(offsets[i + 1]), int(n_loop[i])
        p = int(r.integers(2, 6))
        if b - a < p + 2:
            continue
        s = a + int(r.integers(0, b - a - p))
        end = min(b, s + p + m)
        tokens[s + p : end] = np.resize(tokens[s : s + p], end - s - p)
        clean[s + p : end] = False


def _boilerplate(world, tokens, clean, offsets, expected_words, r) -> None:
    """Shared junk lines overwrite the text at random places (Poisson count per doc)."""
    avg = np.mean([len(b) for b in world.boilerplate])
    n_lines = r.poisson(expected_words / avg)
    for i in np.flatnonzero(n_lines).tolist():
        a, b = int(offsets[i]), int(offsets[i + 1])
        for line_id in r.integers(0, len(world.boilerplate), size=int(n_lines[i])).tolist():
            line = world.boilerplate[line_id][: b - a]
            s = a + int(r.integers(0, b - a - len(line) + 1))
            tokens[s : s + len(line)] = line
            clean[s : s + len(line)] = False


def _clean_transition_frac(clean: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    pair = np.concatenate([[0], np.cumsum(clean[:-1] & clean[1:])])  # pair[j] = clean pairs before j
    a, b = offsets[:-1], offsets[1:]
    n_pairs = np.maximum(b - a - 1, 1)
    return (pair[np.maximum(b - 1, a)] - pair[a]) / n_pairs


# ----------------------------------------------------------------------------------------- reference tasks


def reference_cell_weights(cfg: SynthConfig) -> np.ndarray:
    """(N_D, N_T) probabilities that a reference example comes from each cell."""
    wd = np.array([cfg.reference_domain_weights.get(d, 0.0) for d in DOMAINS], dtype=np.float64)
    wt = np.array([cfg.reference_topic_weights.get(t, 0.0) for t in TOPICS], dtype=np.float64)
    w = np.outer(wd, wt)
    if w.sum() <= 0:
        raise ThresherError("synth: reference weights must have a positive domain x topic product")
    return w / w.sum()


def helpful_cells(cfg: SynthConfig) -> list[tuple[str, str]]:
    """The top n_helpful_domains x n_helpful_topics cells by reference weight (ties: list order)."""
    wd = [cfg.reference_domain_weights.get(d, 0.0) for d in DOMAINS]
    wt = [cfg.reference_topic_weights.get(t, 0.0) for t in TOPICS]
    ds = sorted(range(N_D), key=lambda i: -wd[i])[: cfg.n_helpful_domains]
    ts = sorted(range(N_T), key=lambda i: -wt[i])[: cfg.n_helpful_topics]
    return [(DOMAINS[d], TOPICS[t]) for d in sorted(ds) for t in sorted(ts)]


def _mode(world: World, cell: int, w: int) -> int:
    ids, p = next_word_dist(world, cell, w)
    return int(ids[np.argmax(p)])


def make_reference(world: World) -> dict[str, dict]:
    """Both tasks as {"ctx": [word ids], "cont": [word ids], "cells": source cell per example}."""
    r = rng(world.cfg.seed, "synth", "reference")
    return {"synth_cloze": _cloze(world, r), "synth_qa": _qa(world, r)}


def _cloze(world: World, r: np.random.Generator) -> dict:
    """LAMBADA-like: a clean passage from a reference cell; the answer is its most probable next word."""
    cfg = world.cfg
    cells = r.choice(N_D * N_T, size=cfg.n_cloze, p=reference_cell_weights(cfg).ravel())
    lo, hi = cfg.cloze_context_words
    lengths = r.integers(lo, hi + 1, size=cfg.n_cloze)
    mat = walk(world, cell_chains(cells), lengths, r)
    ctx = [mat[i, : lengths[i]] for i in range(cfg.n_cloze)]
    cont = [np.array([_mode(world, c, int(x[-1]))]) for c, x in zip(cells.tolist(), ctx)]
    return {"ctx": ctx, "cont": cont, "cells": cells}


def _qa(world: World, r: np.random.Generator) -> dict:
    """QA-like pairs: "<q1> <q2> <q3> w" -> the two-word most probable path after content word w."""
    cfg = world.cfg
    cells = r.choice(N_D * N_T, size=cfg.n_qa, p=reference_cell_weights(cfg).ravel())
    template = world.func[len(PUNCTUATION) : len(PUNCTUATION) + 3]  # fixed "question" words
    ctx, cont = [], []
    for c in cells.tolist():
        d, t = divmod(c, N_T)
        w = int(r.choice(np.concatenate([world.dom_words[d], world.top_words[t]])))
        x1 = _mode(world, c, w)
        ctx.append(np.concatenate([template, [w]]))
        cont.append(np.array([x1, _mode(world, c, x1)]))
    return {"ctx": ctx, "cont": cont, "cells": cells}


def scored_transitions(task: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(previous word, scored word, example index) for every continuation word of a task."""
    w, x, ex = [], [], []
    for i, (c, t) in enumerate(zip(task["ctx"], task["cont"])):
        seq = np.concatenate([c, t])
        w.extend(seq[len(c) - 1 : -1].tolist())
        x.extend(t.tolist())
        ex.extend([i] * len(t))
    return np.array(w), np.array(x), np.array(ex)


def cell_utility(world: World, task: dict) -> np.ndarray:
    """(N_D, N_T): mean over the task's scored transitions of P_cell(x | w)."""
    w, x, _ = scored_transitions(task)
    return transition_probs(world, w, x).mean(axis=1).reshape(N_D, N_T)


# ----------------------------------------------------------------------------------------- ground truth


def ground_truth(world: World, corpus: Corpus, reference: dict[str, dict]) -> dict:
    """Known utilities: per cell (process), per doc category (means of u(cell) * clean_frac)."""
    cfg = world.cfg
    per_task = {name: cell_utility(world, task) for name, task in reference.items()}
    per_task["mean"] = np.mean([per_task[n] for n in reference], axis=0)
    cells = cell_index(corpus.domain, corpus.topic)
    interval = quality_interval(corpus.quality).astype(np.int64)
    gt = {
        "version": GROUND_TRUTH_VERSION,
        "settings": cfg.to_dict(),
        "domains": DOMAINS, "topics": TOPICS, "quality_intervals": QUALITY_INTERVALS,
        "tasks": list(reference),
        "helpful_cells": [list(c) for c in helpful_cells(cfg)],
        "reference_cell_weights": _cell_dict(reference_cell_weights(cfg)),
        "cell_utility": {n: _cell_dict(u) for n, u in per_task.items()},
        "counts": _counts(corpus, cells, interval),
        "clean_fraction_by_interval": _group_mean(corpus.clean_frac, interval, 5),
    }
    for name, u in per_task.items():
        doc_u = u.ravel()[cells] * corpus.clean_frac
        gt.setdefault("domain_utility", {})[name] = dict(zip(DOMAINS, _group_mean(doc_u, corpus.domain, N_D)))
        gt.setdefault("topic_utility", {})[name] = dict(zip(TOPICS, _group_mean(doc_u, corpus.topic, N_T)))
        gt.setdefault("quality_utility", {})[name] = dict(zip(QUALITY_INTERVALS, _group_mean(doc_u, interval, 5)))
        table = _group_mean(doc_u, cells * 5 + interval, N_D * N_T * 5)
        gt.setdefault("cell_interval_utility", {})[name] = _cell_interval_dict(table)
    return gt


def _group_mean(values: np.ndarray, codes: np.ndarray, n: int) -> list:
    """Mean of values per code 0..n-1; None where a code has no documents."""
    s = np.bincount(codes, weights=values, minlength=n)
    c = np.bincount(codes, minlength=n)
    return [round(float(a / b), 8) if b else None for a, b in zip(s, c)]


def _cell_dict(a: np.ndarray) -> dict:
    return {d: {t: round(float(a[i, j]), 8) for j, t in enumerate(TOPICS)} for i, d in enumerate(DOMAINS)}


def _cell_interval_dict(flat: list) -> dict:
    """domain -> topic -> [utility per quality interval] (None where the cell has no docs there)."""
    return {d: {t: flat[(i * N_T + j) * 5 : (i * N_T + j + 1) * 5] for j, t in enumerate(TOPICS)}
            for i, d in enumerate(DOMAINS)}


def _counts(corpus: Corpus, cells: np.ndarray, interval: np.ndarray) -> dict:
    return {
        "docs": int(len(corpus.domain)), "words": int(len(corpus.tokens)),
        "domain": dict(zip(DOMAINS, np.bincount(corpus.domain, minlength=N_D).tolist())),
        "topic": dict(zip(TOPICS, np.bincount(corpus.topic, minlength=N_T).tolist())),
        "quality_interval": dict(zip(QUALITY_INTERVALS, np.bincount(interval, minlength=5).tolist())),
        "cell": {d: dict(zip(TOPICS, row)) for d, row in
                 zip(DOMAINS, np.bincount(cells, minlength=N_D * N_T).reshape(N_D, N_T).tolist())},
    }


# ----------------------------------------------------------------------------------------- writing


def generate(cfg: SynthConfig, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Build the world and write it under ``out_dir``; returns a summary (paths, counts, seconds).

    A finished world (ground_truth.json present) made with the same settings is kept as is; one made with
    other settings is refused unless ``overwrite``.
    """
    cfg.validate()
    out = Path(out_dir)
    t0 = time.perf_counter()
    if _already_done(cfg, out, overwrite):
        return summary(out) | {"skipped": True}
    for folder in (out, out / "corpus", out / "reference"):  # a build killed mid-write left its temporaries
        remove_stale_temps(folder)
    world = build_world(cfg)
    corpus = sample_corpus(world)
    reference = make_reference(world)
    gt = ground_truth(world, corpus, reference)
    write_shards(world, corpus, out / "corpus")
    write_tokenizer(world, out / "tokenizer.json")
    for name, task in reference.items():
        write_reference(world, task, out / "reference" / f"{name}.jsonl")
    atomic_write_json(out / "ground_truth.json", gt)  # last: marks the world complete
    print0(f"synth: {cfg.n_docs} docs, {len(corpus.tokens)} words -> {out} ({time.perf_counter() - t0:.1f}s)")
    return summary(out) | {"skipped": False, "seconds": round(time.perf_counter() - t0, 3)}


def _already_done(cfg: SynthConfig, out: Path, overwrite: bool) -> bool:
    gt_path = out / "ground_truth.json"
    if overwrite or not gt_path.exists():
        return False
    if read_json(gt_path).get("settings") == json.loads(json.dumps(cfg.to_dict())):
        return True
    raise SettingsMismatchError(f"{out} holds a synthetic world made with other settings; "
                                "pass overwrite=True or choose another directory")


def summary(out: Path) -> dict:
    gt = read_json(out / "ground_truth.json")
    return {
        "out_dir": str(out), "n_docs": gt["counts"]["docs"], "n_words": gt["counts"]["words"],
        "shards": sorted(str(p) for p in (out / "corpus").glob("shard-*")),
        "tokenizer": str(out / "tokenizer.json"),
        "reference": {t: str(out / "reference" / f"{t}.jsonl") for t in gt["tasks"]},
        "ground_truth": str(out / "ground_truth.json"), "helpful_cells": gt["helpful_cells"],
    }


def shard_names(cfg: SynthConfig) -> list[str]:
    names = [f"shard-{i:05d}.jsonl.gz" for i in range(cfg.n_shards)]
    if cfg.mixed_formats:
        names[-2] = f"shard-{cfg.n_shards - 2:05d}.jsonl.zst"
        names[-1] = f"shard-{cfg.n_shards - 1:05d}.parquet"
    return names


def records(world: World, corpus: Corpus, lo: int, hi: int) -> list[dict]:
    """The JSON records of documents lo..hi-1."""
    words = np.asarray(world.words, dtype=object)
    out = []
    for i in range(lo, hi):
        d = DOMAINS[corpus.domain[i]]
        out.append({
            "id": f"synth-{i:08d}",
            "text": " ".join(words[corpus.tokens[corpus.offsets[i] : corpus.offsets[i + 1]]]),
            "domain": d, "topic": TOPICS[corpus.topic[i]], "quality": float(corpus.quality[i]),
            "meta": {"redpajama_set_name": REDPAJAMA_SET_NAMES[d]},
        })
    return out


def write_shards(world: World, corpus: Corpus, corpus_dir: Path) -> list[Path]:
    """Contiguous doc ranges per shard; stale shards of an earlier world are removed."""
    names = shard_names(world.cfg)
    bounds = np.linspace(0, len(corpus.domain), len(names) + 1).round().astype(int)
    make_dir(corpus_dir)
    for p in corpus_dir.glob("shard-*"):
        if p.name not in names:
            p.unlink()
    paths = []
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        paths.append(corpus_dir / name)
        _write_records(records(world, corpus, int(lo), int(hi)), paths[-1])
    return paths


def _write_records(recs: list[dict], path: Path) -> None:
    if path.suffix == ".parquet":
        return _write_parquet(recs, path)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: byte-identical reruns
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    atomic_write_bytes(path, data)


def _write_parquet(recs: list[dict], path: Path) -> None:
    """Same fields; ``meta`` as a JSON string (like the shared pool's parquet files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {k: [r[k] for r in recs] for k in ("id", "text", "domain", "topic", "quality")}
    cols["meta"] = [json.dumps(r["meta"]) for r in recs]
    table = pa.table(cols)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def build_tokenizer(world: World):
    """HF WordLevel tokenizer: specials 0..2, word i -> id i + 3, split on whitespace only."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({w: i + len(SPECIAL_TOKENS) for i, w in enumerate(world.words)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def write_tokenizer(world: World, path: Path) -> None:
    atomic_write_bytes(path, build_tokenizer(world).to_str(pretty=False).encode("utf-8"))


def write_reference(world: World, task: dict, path: Path) -> None:
    """JSONL {context, continuation, cell}; the continuation has no leading space (readers add one)."""
    lines = []
    for ctx, cont, c in zip(task["ctx"], task["cont"], task["cells"].tolist()):
        d, t = divmod(c, N_T)
        rec = {"context": " ".join(world.words[i] for i in ctx),
               "continuation": " ".join(world.words[i] for i in cont), "domain": DOMAINS[d], "topic": TOPICS[t]}
        lines.append(json.dumps(rec) + "\n")
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))


def read_corpus(out_dir: str | Path) -> list[dict]:
    """All records of a generated world, in id order (a small reader for tests and benchmarks)."""
    recs = []
    for p in sorted((Path(out_dir) / "corpus").glob("shard-*")):
        recs.extend(_read_shard(p))
    if not recs:
        raise ThresherError(f"no synthetic corpus shards under {out_dir}/corpus")
    return recs


def _read_shard(p: Path) -> list[dict]:
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
        return [r | {"meta": json.loads(r["meta"])} for r in rows]
    raw = p.read_bytes()
    if p.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif p.name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]
