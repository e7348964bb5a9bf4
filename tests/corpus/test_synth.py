"""The synthetic world: determinism, schema, proportions, tokenizer, reference tasks, ground truth."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from thresher.corpus import synth
from thresher.corpus.reference import read_reference_jsonl, tokenize_task
from thresher.corpus.synth_config import DOMAINS, REDPAJAMA_SET_NAMES, TOPICS, SynthConfig
from thresher.labels.intervals import QUALITY_INTERVALS, quality_interval
from thresher.utils.errors import SettingsMismatchError, ThresherError

N_T = len(TOPICS)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "w0"
    synth.generate(SynthConfig.tiny(seed=0), out)
    return out


@pytest.fixture(scope="module")
def world():
    return synth.build_world(SynthConfig.tiny(seed=0))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(world_dir, tmp_path):
    synth.generate(SynthConfig.tiny(seed=0), tmp_path / "again")
    a, b = _files(world_dir), _files(tmp_path / "again")
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seeds_differ(world_dir, tmp_path):
    synth.generate(SynthConfig.tiny(seed=1), tmp_path / "s1")
    a, b = _files(world_dir), _files(tmp_path / "s1")
    for name in ["corpus/shard-00000.jsonl.gz", "tokenizer.json", "reference/synth_cloze.jsonl"]:
        assert a[name] != b[name]


def test_layout_and_record_schema(world_dir):
    cfg = SynthConfig.tiny(seed=0)
    names = sorted(p.name for p in (world_dir / "corpus").iterdir())
    assert names == ["shard-00000.jsonl.gz", "shard-00001.jsonl.zst", "shard-00002.parquet"]
    recs = synth.read_corpus(world_dir)
    assert len(recs) == cfg.n_docs and len({r["id"] for r in recs}) == cfg.n_docs
    for r in recs:
        assert set(r) == {"id", "text", "domain", "topic", "quality", "meta"}
        assert r["domain"] in DOMAINS and r["topic"] in TOPICS
        assert isinstance(r["quality"], float) and 0.0 <= r["quality"] <= 5.0
        assert r["meta"] == {"redpajama_set_name": REDPAJAMA_SET_NAMES[r["domain"]]}
        n = len(r["text"].split(" "))
        assert cfg.min_words <= n <= cfg.max_words and r["text"] == r["text"].strip()


def test_records_hold_the_generated_tokens(world_dir, world):
    """Text on disk == the sampled word ids (a second, independent sampling of the same world)."""
    corpus = synth.sample_corpus(world)
    recs = synth.read_corpus(world_dir)
    for i in [0, 1, 700, len(recs) - 1]:
        ids = corpus.tokens[corpus.offsets[i] : corpus.offsets[i + 1]]
        assert recs[i]["text"] == " ".join(world.words[j] for j in ids)
        assert recs[i]["domain"] == DOMAINS[corpus.domain[i]] and recs[i]["topic"] == TOPICS[corpus.topic[i]]


def test_proportions_follow_the_config():
    cfg = SynthConfig.tiny(n_docs=8000, mean_words=16, min_words=8, max_words=40)
    dom, topic, qual, lengths = synth.sample_labels(cfg)
    shares = np.array([cfg.domain_shares[d] for d in DOMAINS])
    shares = shares / shares.sum()
    counts = np.bincount(dom, minlength=len(DOMAINS))
    sd = np.sqrt(cfg.n_docs * shares * (1 - shares))
    assert np.all(np.abs(counts - cfg.n_docs * shares) < 5 * sd)
    # Beta means per domain (sd of a mean of >= 400 draws in [0, 5] is < 0.1)
    for d, name in enumerate(DOMAINS):
        assert abs(qual[dom == d].mean() / 5 - cfg.domain_quality[name][0]) < 0.05
    # the paper's Books observation: high-quality Books docs are (nearly) one topic
    books_hq = (dom == DOMAINS.index("Books")) & (qual >= cfg.concentrated_min_quality)
    share = np.mean(topic[books_hq] == TOPICS.index("Literature and Art"))
    assert share >= cfg.concentrated_share - 0.1
    # C4 stays diverse: every topic present, none above 25%
    c4 = np.bincount(topic[dom == DOMAINS.index("C4")], minlength=N_T)
    assert c4.min() > 0 and c4.max() / c4.sum() < 0.25


def test_tokenizer_round_trip_is_exact(world_dir, world):
    tok = Tokenizer.from_file(str(world_dir / "tokenizer.json"))
    assert tok.get_vocab_size() == world.V + len(synth.SPECIAL_TOKENS)
    assert [tok.token_to_id(t) for t in synth.SPECIAL_TOKENS] == [0, 1, 2]
    corpus = synth.sample_corpus(world)
    recs = synth.read_corpus(world_dir)
    enc = tok.encode_batch([r["text"] for r in recs[:200]], add_special_tokens=False)
    for i, (r, e) in enumerate(zip(recs, enc)):
        ids = np.asarray(e.ids)
        assert np.array_equal(ids, corpus.tokens[corpus.offsets[i] : corpus.offsets[i + 1]] + 3)
        assert tok.decode(e.ids) == r["text"]


def test_walk_matches_the_cell_process(world):
    """Empirical next-word frequencies of long walks == P_cell(. | w), built here by brute force."""
    cell = synth.cell_index(DOMAINS.index("Wikipedia"), TOPICS.index("Health"))
    mat = synth.walk(world, synth.cell_chains(np.full(400, cell)), np.full(400, 400), np.random.default_rng(3))
    prev, nxt = mat[:, :-1].ravel(), mat[:, 1:].ravel()
    w = int(np.bincount(prev).argmax())  # the most visited word: many samples of its successors
    mix = np.array(world.cfg.chain_mix) / np.sum(world.cfg.chain_mix)
    expect: dict[int, float] = {}
    for j, g in enumerate(synth.cell_chains(np.array([cell]))[0]):
        for s, p in zip(world.succ[g, w].tolist(), world.prob[g, w].tolist()):
            expect[s] = expect.get(s, 0.0) + mix[j] * p
    got = Counter(nxt[prev == w].tolist())
    n = sum(got.values())
    assert n > 800 and set(got) <= set(expect)
    for s, p in expect.items():
        assert abs(got[s] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_transition_probs_match_a_loop(world):
    r = np.random.default_rng(0)
    w, x = r.integers(0, world.V, 50), r.integers(0, world.V, 50)
    x[:25] = world.succ[5, w[:25], 0]  # make half of them real transitions
    got = synth.transition_probs(world, w, x)
    for c in [0, 37, len(DOMAINS) * N_T - 1]:
        for i in range(50):
            ids, p = synth.next_word_dist(world, c, int(w[i]))
            ref = float(p[ids == x[i]].sum())
            assert got[c, i] == pytest.approx(ref, abs=1e-12)


def test_corruption_rate_follows_quality(world):
    n_docs, L = 400, 200
    tokens = np.zeros(n_docs * L, dtype=np.int32)
    offsets = np.arange(n_docs + 1) * L
    rho = np.repeat([0.0, 0.2, 0.5, 0.7], n_docs // 4)
    clean = synth.corrupt(world, tokens, offsets, rho, np.random.default_rng(0))
    corrupted = 1 - clean.reshape(n_docs, L).mean(1)
    for k, r in enumerate([0.0, 0.2, 0.5, 0.7]):
        frac = corrupted[k * 100 : (k + 1) * 100].mean()
        assert frac == 0.0 if r == 0 else abs(frac - r) < 0.35 * r  # overlaps make it a bit under rho


def test_reference_tasks(world_dir, world):
    cfg = world.cfg
    tok = Tokenizer.from_file(str(world_dir / "tokenizer.json"))
    vocab = set(world.words)
    for name, n in [("synth_cloze", cfg.n_cloze), ("synth_qa", cfg.n_qa)]:
        pairs = read_reference_jsonl(world_dir / "reference" / f"{name}.jsonl")
        assert len(pairs) == n
        assert all(set(c.split()) <= vocab and set(t.split()) <= vocab for c, t in pairs)
        task = tokenize_task(name, pairs, tok)
        assert all(len(t) == (1 if name == "synth_cloze" else 2) for t in task.continuations)
        assert all(2 not in t for t in task.continuations)  # no <unk>


def test_continuations_are_the_most_probable_next_words(world_dir, world):
    word_id = {w: i for i, w in enumerate(world.words)}
    cell_of = {(d, t): synth.cell_index(i, j) for i, d in enumerate(DOMAINS) for j, t in enumerate(TOPICS)}
    for name in synth.TASKS:
        for line in (world_dir / "reference" / f"{name}.jsonl").read_text().splitlines()[:40]:
            rec = json.loads(line)
            seq = [word_id[w] for w in (rec["context"] + " " + rec["continuation"]).split()]
            n_cont = len(rec["continuation"].split())
            for k in range(len(seq) - n_cont, len(seq)):
                ids, p = synth.next_word_dist(world, cell_of[(rec["domain"], rec["topic"])], seq[k - 1])
                assert seq[k] == ids[np.argmax(p)]


def test_ground_truth_is_consistent(world_dir):
    gt = json.loads((world_dir / "ground_truth.json").read_text())
    cfg = SynthConfig.tiny(seed=0)
    assert gt["settings"] == json.loads(json.dumps(cfg.to_dict()))
    helpful = {tuple(c) for c in gt["helpful_cells"]}
    assert len(helpful) == cfg.n_helpful_domains * cfg.n_helpful_topics
    hd, ht = {d for d, _ in helpful}, {t for _, t in helpful}
    for task in gt["tasks"] + ["mean"]:
        cu = gt["cell_utility"][task]
        flat = {(d, t): cu[d][t] for d in DOMAINS for t in TOPICS}
        assert max(flat, key=flat.get) in helpful
        unrelated = max(v for (d, t), v in flat.items() if d not in hd and t not in ht)
        assert min(flat[c] for c in helpful) > unrelated
        dom_u, top_u = gt["domain_utility"][task], gt["topic_utility"][task]
        assert set(sorted(dom_u, key=dom_u.get)[-len(hd):]) == hd
        assert set(sorted(top_u, key=top_u.get)[-len(ht):]) == ht
        assert dom_u["ArXiv"] < np.median(list(dom_u.values()))  # high quality, little help


def test_aggregates_equal_doc_weighted_table(world_dir):
    """domain / topic / quality utilities == the cell x interval table weighted by counts from the records."""
    gt = json.loads((world_dir / "ground_truth.json").read_text())
    recs = synth.read_corpus(world_dir)
    q = quality_interval(np.array([r["quality"] for r in recs]))
    cnt = Counter((r["domain"], r["topic"], int(j)) for r, j in zip(recs, q))
    table = gt["cell_interval_utility"]["mean"]
    for key, pos, names in [("domain_utility", 0, DOMAINS), ("topic_utility", 1, TOPICS),
                            ("quality_utility", 2, QUALITY_INTERVALS)]:
        for k, name in enumerate(names):
            sel = {c: n for c, n in cnt.items() if (c[pos] == (name if pos < 2 else k))}
            if not sel:
                assert gt[key]["mean"][name] is None
                continue
            ref = sum(n * table[d][t][j] for (d, t, j), n in sel.items()) / sum(sel.values())
            assert gt[key]["mean"][name] == pytest.approx(ref, rel=1e-5)
    frac = gt["clean_fraction_by_interval"]
    assert all(a < b for a, b in zip(frac, frac[1:]))  # higher quality, cleaner text


def test_rerun_skips_and_other_settings_are_refused(world_dir):
    assert synth.generate(SynthConfig.tiny(seed=0), world_dir)["skipped"] is True
    with pytest.raises(SettingsMismatchError):
        synth.generate(SynthConfig.tiny(seed=0, n_docs=10), world_dir)


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ThresherError, match="unknown name"):
        synth.generate(SynthConfig.tiny(domain_shares={"Reddit": 1.0}), tmp_path)
    with pytest.raises(ThresherError, match="n_shards"):
        synth.generate(SynthConfig.tiny(n_shards=2), tmp_path)
    assert not (tmp_path / "ground_truth.json").exists()


def test_a_rerun_after_a_kill_mid_write_removes_the_killed_build_s_temporaries(tmp_path):
    import subprocess
    import sys

    from thresher.utils.io import _HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / "corpus" / f".shard-00000.jsonl.gz.{_HOST}-{int(dead.stdout)}.k1ll3d_x.tmp"  # killed mid-shard
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half a shard")
    synth.generate(SynthConfig.tiny(seed=0), tmp_path)
    assert not left.exists() and not [p for p in tmp_path.rglob(".*")]
