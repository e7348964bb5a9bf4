"""Each labeler against a reference: a per-example loop, brute force in float64, or hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.labels.base import InMemorySource
from thresher.labels.domain import DOMAINS, DomainLabeler, discover_domains
from thresher.labels.intervals import quality_interval
from thresher.utils.errors import ThresherError
from thresher.labels.quality import FastTextQualityLabeler, HFQualityLabeler, RuleQualityLabeler, rule_signals


def batch(texts, **meta):
    return {"doc_id": np.arange(len(texts)), "text": list(texts), **meta}


def test_eq3_edges():
    s = np.array([0, 0.999, 1, 4, 4.999, 5, 5.3, -0.1, np.nan])
    # I_j = [j-1, j) for j<=4, I_5 = [4, 5]; clipped outside [0, 5]; NaN -> missing (-1)
    assert quality_interval(s).tolist() == [0, 0, 1, 4, 4, 4, 4, 0, -1]
    assert quality_interval(s).dtype == np.int16


def test_domain_mapping_and_unknowns():
    names = [f"RedPajama{d}" for d in ("CommonCrawl", "C4", "Github", "Book", "ArXiv", "Wikipedia", "StackExchange")]
    vals = names + DOMAINS + ["Reddit", None]
    out = DomainLabeler().label(batch(["x"] * len(vals), domain=vals))
    assert out["domain"].tolist() == list(range(7)) * 2 + [-1, -1]
    assert out["domain_reason"][-2:] == ["unknown:Reddit", "unknown:None"]
    assert out["domain_reason"][:14] == [None] * 14



def test_domain_names_of_another_corpus_match_case_insensitively_in_the_given_order():
    lab = DomainLabeler(names=["Pile-CC", "Github", "ArXiv", "FreeLaw"])
    vals = ["pile-cc", " FreeLaw ", "ArXiv", "GITHUB", "RedPajamaC4", None, "Enron Emails"]
    out = lab.label(batch(["x"] * len(vals), domain=vals))
    assert out["domain"].tolist() == [0, 3, 2, 1, -1, -1, -1]
    assert out["domain_reason"] == [None] * 4 + ["unknown:RedPajamaC4", "unknown:None", "unknown:Enron Emails"]
    assert lab.categories == {"domain": ["Pile-CC", "Github", "ArXiv", "FreeLaw"]}
    assert lab.settings() == {"field": "domain", "names": ["Pile-CC", "Github", "ArXiv", "FreeLaw"]}
    assert DomainLabeler().settings() == {"field": "domain", "mapping": "slimpajama-v1"}  # the default is unchanged
    assert DomainLabeler().categories == {"domain": DOMAINS}


@pytest.mark.parametrize("names, message", [(["web", "Web"], r"twice.*\['Web', 'web'\]"), (["web", " "], "empty name")])
def test_bad_domain_names_are_refused(names, message):
    with pytest.raises(ThresherError, match=message):
        DomainLabeler(names=names)


def test_discover_domains_most_frequent_first_ties_by_name_case_merged():
    vals = ["b", "a", "B", "c", "a ", None, "", "c", "b", 3]
    src = InMemorySource(["x"] * len(vals), {"domain": vals})
    assert discover_domains(src, "domain", chunk=3) == ["b", "a", "c"]  # b: 3, then a and c with 2 (by name)
    with pytest.raises(ThresherError, match="more than 256 distinct values.*domain_names"):
        discover_domains(InMemorySource(["x"] * 300, {"url": [f"u{i}" for i in range(300)]}), "url")
    with pytest.raises(ThresherError, match="no string values"):
        discover_domains(InMemorySource(["x", "y"], {"domain": [None, ""]}), "domain")


def test_rule_quality_matches_per_doc_loop(docs):
    out = RuleQualityLabeler().label(batch(docs))
    for i, t in enumerate(docs):
        if not t.strip():
            assert np.isnan(out["quality_score"][i]) and out["quality_interval"][i] == -1
            assert out["quality_reason"][i] == "empty"
        else:
            ref = 5.0 * np.mean(list(rule_signals(t).values()))
            assert out["quality_score"][i] == pytest.approx(ref, rel=1e-6)
            assert out["quality_interval"][i] == quality_interval(np.array([ref]))[0]


def test_rule_signals_hand_computed():
    t = "lorem ipsum dolor\nlorem ipsum dolor"
    s = rule_signals(t)
    assert s["no_lorem"] == 0.0 and s["word_count"] == 0.0 and s["stop_words"] == 0.0
    assert s["unique_lines"] == pytest.approx(0.5 / 0.7) and s["terminal_punct"] == 0.0


def test_hf_quality_matches_unbatched_forward(docs, tiny_regressor):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    docs = docs[:12]
    lab = HFQualityLabeler(str(tiny_regressor), max_length=64, batch_size=5, device="cpu")
    out = lab.label(batch(docs))
    tok = AutoTokenizer.from_pretrained(tiny_regressor)
    net = AutoModelForSequenceClassification.from_pretrained(tiny_regressor).eval()
    for i, t in enumerate(docs):
        if not t.strip():
            assert out["quality_reason"][i] == "empty" and np.isnan(out["quality_score"][i])
            continue
        with torch.no_grad():  # one doc, no padding: the reference
            ref = net(**tok(t, truncation=True, max_length=64, return_tensors="pt")).logits[0, 0].item()
        assert out["quality_score"][i] == pytest.approx(np.clip(ref, 0, 5), abs=1e-4)
    again = HFQualityLabeler(str(tiny_regressor), max_length=64, batch_size=3, device="cpu").label(batch(docs))
    np.testing.assert_allclose(again["quality_score"], out["quality_score"], atol=1e-4)
    assert lab.provenance()["settings"]["sha256"]  # local model identity recorded


def test_fasttext_quality(docs, fasttext_model):
    import fasttext

    lab = FastTextQualityLabeler(fasttext_model)
    out = lab.label(batch(docs))
    ft = fasttext.load_model(str(fasttext_model))
    for i, t in enumerate(docs):
        if t.strip():
            labels, probs = ft.predict(" ".join(t.split()), k=-1)
            ref = 5 * dict(zip(labels, probs))["__label__hq"]
            assert out["quality_score"][i] == pytest.approx(ref, rel=1e-5)
    spam = lab.label(batch(["click here buy now cheap free win casino"] * 2))["quality_score"]
    assert spam.max() < np.nanmean(out["quality_score"])


def test_fasttext_training_deterministic(tmp_path, fasttext_model):
    from thresher.labels.quality import train_quality_fasttext

    d = fasttext_model.parent
    p2 = train_quality_fasttext(d / "pos.txt", d / "neg.txt", tmp_path / "m2.bin", epoch=5, dim=16, seed=0)
    t = ["the market fell as investors sold bank shares", "buy now cheap casino"]
    a = FastTextQualityLabeler(fasttext_model).label(batch(t))["quality_score"]
    b = FastTextQualityLabeler(p2).label(batch(t))["quality_score"]
    np.testing.assert_array_equal(a, b)


def test_embed_matches_sentence_transformers(docs, minilm, st_model):
    from thresher.labels.embed import EmbedLabeler

    out = EmbedLabeler(minilm, batch_size=8, device="cpu", max_seq_length=64).label(batch(docs[:10]))["embedding"]
    assert out.shape == (10, 384) and out.dtype == np.float16
    for i, t in enumerate(docs[:10]):
        if not t.strip():
            assert np.isnan(out[i]).all()
        else:
            ref = st_model.encode([t], normalize_embeddings=True)[0]
            np.testing.assert_allclose(out[i].astype(np.float32), ref, atol=2e-3)


def test_zero_shot_topic_is_brute_force_argmax(docs, minilm, st_model):
    from thresher.labels.topic import TOPICS, ZeroShotTopicLabeler

    texts = docs[:10] + ["Stocks, bonds and interest rates: how banks lend money to investors."]
    out = ZeroShotTopicLabeler(minilm, device="cpu", max_seq_length=64).label(batch(texts))
    st = st_model
    proto = st.encode([f"{k}: {v}" for k, v in TOPICS.items()], normalize_embeddings=True).astype(np.float64)
    for i, t in enumerate(texts):
        if not t.strip():
            assert out["topic"][i] == -1 and out["topic_reason"][i] == "empty"
            continue
        sim = proto @ st.encode([t], normalize_embeddings=True)[0].astype(np.float64)
        if np.sort(sim)[-1] - np.sort(sim)[-2] > 1e-3:  # skip float ties
            assert out["topic"][i] == sim.argmax()
        assert out["topic_score"][i] == pytest.approx(sim.max(), abs=1e-3)


def test_hf_topic_matches_loop(docs, tiny_topic_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from thresher.labels.topic import TOPIC_NAMES, HFTopicLabeler

    lab = HFTopicLabeler(str(tiny_topic_classifier), max_length=64, batch_size=5, device="cpu")
    assert lab.categories["topic"] == TOPIC_NAMES
    out = lab.label(batch(docs[:20]))
    tok = AutoTokenizer.from_pretrained(tiny_topic_classifier)
    net = AutoModelForSequenceClassification.from_pretrained(tiny_topic_classifier).eval()
    for i, t in enumerate(docs[:20]):
        if t.strip():
            with torch.no_grad():
                p = net(**tok(t, truncation=True, max_length=64, return_tensors="pt")).logits[0].softmax(-1).numpy()
            assert out["topic"][i] == p.argmax() and out["topic_score"][i] == pytest.approx(p.max(), abs=1e-4)


def test_perplexity_matches_per_doc_loss(docs, tiny_causal_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thresher.labels.perplexity import PerplexityLabeler

    out = PerplexityLabeler(str(tiny_causal_lm), max_length=64, batch_size=6, device="cpu").label(batch(docs[:16]))
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    net = AutoModelForCausalLM.from_pretrained(tiny_causal_lm).eval()
    for i, t in enumerate(docs[:16]):
        if t.strip():
            ids = tok(t, truncation=True, max_length=64, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                ref = np.exp(net(ids, labels=ids).loss.item())
            assert out["perplexity"][i] == pytest.approx(ref, rel=1e-4)


def test_dsir_brute_force():
    import zlib
    from collections import Counter

    from thresher.labels.dsir import DsirLabeler, _TOKEN

    target = ["the cat sat on the mat", "a cat and a dog"]
    raw = ["stock prices fell", "the market rose", "a dog barked"]
    lab = DsirLabeler.fit(target, raw, num_buckets=64, ngrams=2)

    def grams(t):
        w = _TOKEN.findall(t.lower())
        return [" ".join(w[i : i + n]) for n in (1, 2) for i in range(len(w) - n + 1)]

    def dist(texts):
        c = Counter(zlib.crc32(g.encode()) % 64 for t in texts for g in grams(t))
        v = np.array([c[j] + 1.0 for j in range(64)])
        return v / v.sum()

    pt, pr = dist(target), dist(raw)
    texts = ["the cat sat", "stock market fell", "dog"]
    out = lab.label(batch(texts))["dsir_logw"]
    for i, t in enumerate(texts):
        ref = sum(np.log(pt[zlib.crc32(g.encode()) % 64]) - np.log(pr[zlib.crc32(g.encode()) % 64]) for g in grams(t))
        assert out[i] == pytest.approx(ref, rel=1e-5)
    assert out[0] > out[1]


def test_synthetic_noise():
    from thresher.labels.synthetic import SyntheticLabeler

    n = 20_000
    r = np.random.default_rng(0)
    dom, top, q = r.integers(0, 7, n), r.integers(0, 13, n), r.uniform(0, 5, n)
    b = batch([""] * n, domain=dom.tolist(), topic=top.tolist(), quality=q.tolist())
    clean = SyntheticLabeler().label(b)
    assert clean["domain"].tolist() == dom.tolist() and clean["topic"].tolist() == top.tolist()
    np.testing.assert_allclose(clean["quality_score"], q, rtol=1e-6)
    noisy = SyntheticLabeler(domain_noise=0.3, topic_noise=0.1, quality_noise=0.2, seed=5).label(b)
    flipped = noisy["domain"] != dom
    assert abs(flipped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)  # binomial 4 sigma
    assert abs((noisy["topic"] != top).mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)
    inner = (q > 1) & (q < 4)  # away from the clip
    assert abs(np.std(noisy["quality_score"][inner] - q[inner]) - 0.2) < 0.01
    # per-doc noise: labelling halves separately gives the same labels (shard invariance)
    half = {k: (v[: n // 2] if not isinstance(v, list) else v[: n // 2]) for k, v in b.items()}
    part = SyntheticLabeler(domain_noise=0.3, topic_noise=0.1, quality_noise=0.2, seed=5).label(half)
    assert part["domain"].tolist() == noisy["domain"][: n // 2].tolist()


def test_kmeans_assign_is_nearest_centroid():
    from thresher.labels.cluster import KMeansClusterer

    r = np.random.default_rng(0)
    centers = r.normal(size=(5, 8)) * 5
    x = (centers[r.integers(0, 5, 500)] + r.normal(size=(500, 8))).astype(np.float16)
    x[[10, 20]] = np.nan
    km = KMeansClusterer(k=5, sample_size=400, niter=10, seed=1, spherical=False, chunk=128)
    c = km.train(x)
    a = km.assign(x, c)
    ok = ~np.isnan(x[:, 0].astype(np.float32))
    d = ((x[ok].astype(np.float64)[:, None, :] - c.astype(np.float64)[None]) ** 2).sum(-1)
    assert a[~ok].tolist() == [-1, -1]
    best = d.min(1)
    assert np.all(d[np.arange(ok.sum()), a[ok]] <= best + 1e-3)  # brute-force nearest (ties allowed)
    np.testing.assert_array_equal(km.train(x), c)  # same seed -> same centroids


def test_hf_classifier_without_a_pad_token_labels_batches(tmp_path):
    """A Llama-style classifier whose tokenizer and config have no pad token (like GPT-2's) labels batches > 1:
    the loader gives the config the pad id it gives the tokenizer, and each row's label is that of the row alone."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    from thresher.labels.topic import HFTopicLabeler

    words = "the a of to and in is was for on that with as by at from it an be this which or are question answer"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([words, words.upper()] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=64, num_labels=3,
                      id2label={0: "x", 1: "y", 2: "z"}, label2id={"x": 0, "y": 1, "z": 2})
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    fast.save_pretrained(tmp_path)
    texts = ["the a of to and", "question answer is the", "of of of of of of of of"]
    lab = HFTopicLabeler(str(tmp_path), max_length=16, batch_size=4, device="cpu")
    batched = lab.label({"doc_id": np.arange(3), "text": texts})["topic"]
    alone = [lab.label({"doc_id": np.arange(1), "text": [t]})["topic"][0] for t in texts]
    assert list(batched) == alone


def test_fasttext_training_files_skip_bad_lines_and_refuse_an_empty_class(tmp_path, capsys):
    from thresher.labels.quality import train_quality_fasttext

    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.jsonl"
    pos.write_bytes(b"a careful essay on the history of rivers\nbroken \xff\xfe bytes\nanother long careful essay\n")
    neg.write_text('{"text": "buy now cheap casino"}\n{bad json\n["a list"]\n{"text": "click here win"}\n')
    out = train_quality_fasttext(pos, neg, tmp_path / "m.bin", epoch=1, dim=8, seed=0)
    assert out.exists()
    err = capsys.readouterr().err
    assert "pos.txt: skipped 1 unusable line(s): {'invalid_utf8': 1}" in err
    assert "neg.jsonl: skipped 2 unusable line(s): {'malformed_json': 2}" in err
    # one class only would train a model without the positive label: every document would score alike
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ThresherError, match="no usable documents in the fastText training file .*empty.txt"):
        train_quality_fasttext(tmp_path / "empty.txt", neg, tmp_path / "m2.bin", epoch=1, dim=8, seed=0)
    assert not (tmp_path / "m2.bin").exists()


def test_a_model_that_is_not_there_fails_before_any_labelling(tmp_path, monkeypatch, docs, minilm):
    import huggingface_hub

    from thresher.labels import base
    from thresher.labels.embed import EmbedLabeler
    from thresher.labels.executors import run_labelers

    base.ensure_model(minilm)  # a local folder: nothing to fetch
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    labelers = [RuleQualityLabeler(), HFQualityLabeler("nobody/no-such-classifier"), EmbedLabeler(minilm)]
    with pytest.raises(ThresherError, match=r"'nobody/no-such-classifier' is not a local path and not in the "
                                            r"Hugging Face cache \(HF_HUB_OFFLINE is set\): give a local folder "
                                            r"\(--set quality_model=PATH\)"):
        run_labelers(InMemorySource(docs[:4]), labelers, tmp_path / "labels")
    assert not (tmp_path / "labels").exists()  # no _work folder, no shard started
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fetched = []

    def no_network(repo_id, **kw):
        fetched.append(repo_id)
        raise OSError("Connection refused\nmore lines")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ThresherError, match=r"downloading it failed \(nobody/no-such-classifier: OSError: Connection "
                                            r"refused\); without network"):
        run_labelers(InMemorySource(docs[:4]), labelers[1:], tmp_path / "labels")
    assert fetched == ["nobody/no-such-classifier"] and not (tmp_path / "labels").exists()


def test_a_bare_sentence_transformers_name_is_fetched_from_its_organisation(monkeypatch):
    import huggingface_hub

    from thresher.labels.embed import EmbedLabeler
    from thresher.labels.topic import ZeroShotTopicLabeler

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tried = []

    def download(repo_id, **kw):  # only the organisation's repo exists, as on the Hub
        tried.append(repo_id)
        if repo_id != "sentence-transformers/all-MiniLM-L6-v2":
            raise OSError("404")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    for labeler in (EmbedLabeler("all-MiniLM-L6-v2"), ZeroShotTopicLabeler("all-MiniLM-L6-v2")):
        labeler.fetch()
    assert tried == ["sentence-transformers/all-MiniLM-L6-v2"] * 2
    tried.clear()
    with pytest.raises(ThresherError, match="BAAI/bge-nope: OSError: 404"):
        EmbedLabeler("BAAI/bge-nope").fetch()  # an org/name id is tried as given, once
    assert tried == ["BAAI/bge-nope"]


def test_fetching_a_hub_model_skips_the_other_runtimes_exports(monkeypatch):
    """snapshot_download without patterns fetches the whole repo: onnx/, openvino/, TF/Flax/Rust weights,
    which the labelers never load (several times the model's size for some Hub repos)."""
    import fnmatch

    import huggingface_hub

    from thresher.labels import base

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    seen = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: seen.update(kw))
    base.ensure_model("nobody/not-cached-model")
    skip = seen.get("ignore_patterns") or []
    repo = ["config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json",
            "onnx/model.onnx", "openvino/openvino_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot"]
    kept = [f for f in repo if not any(fnmatch.fnmatch(f, p) for p in skip)]
    assert kept == ["config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"]
