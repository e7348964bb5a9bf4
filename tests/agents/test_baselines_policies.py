"""Baseline policies perplexity, dsir and mates against brute-force and closed-form references."""

import itertools
import pickle

import numpy as np
import pytest
from scipy.stats import spearmanr

from thresher.agents.base import Labels, SelectionContext
from thresher.agents.config import SelectorConfig
from thresher.agents.mates import fit_ridge, predict_pool, r_squared
from thresher.agents.policies import build_selector
from thresher.agents.score_top import numeric_context_fields, select_band
from thresher.influence.rewards import RewardSource
from thresher.utils.errors import ThresherError
from thresher.utils.seeding import rng


class LinearRewards(RewardSource):
    """reward(doc) = emb[doc] @ w_true + noise (deterministic per step and doc)."""

    def __init__(self, emb, w_true, noise=0.0):
        self.emb, self.w_true, self.noise, self.step = emb, w_true, noise, 0

    def truth(self):
        return np.asarray(self.emb, dtype=np.float64) @ self.w_true

    def refresh(self, model, step):
        self.step = step

    def rewards(self, doc_ids):
        doc_ids = np.asarray(doc_ids)
        eps = np.array([rng(0, "noise", self.step, int(d)).normal() for d in doc_ids]) if self.noise else 0.0
        return np.asarray(self.emb[doc_ids], dtype=np.float64) @ self.w_true + self.noise * eps

    def provenance(self):
        return {"step": self.step, "source": "linear"}


def make_ctx(n=3000, d=16, seed=0, budget_docs=300, budget_tokens=None, noise=0.0, nan_frac=0.0):
    g = rng(seed, "baselines")
    ppl = np.round(np.exp(g.normal(3.0, 0.6, n)), 1).astype(np.float32)  # rounded: real ties
    logw = g.normal(0.0, 2.0, n).astype(np.float32)
    if nan_frac:
        ppl[g.random(n) < nan_frac] = np.nan
        logw[g.random(n) < nan_frac] = np.nan
    emb = g.normal(size=(n, d)).astype(np.float16)
    lengths = g.integers(10, 200, n).astype(np.int64)
    rewards = LinearRewards(emb, g.normal(size=d) * 1e-3, noise)
    return SelectionContext(lengths, Labels(), rewards, budget_docs, budget_tokens, seed,
                            embeddings=emb, scores={"perplexity": ppl, "dsir_logw": logw})


def brute_band(values, band, k=None, lengths=None, tokens=None):
    """Full stable argsort by (value, id); the band's order; its prefix that fits the budget."""
    valid = np.flatnonzero(np.isfinite(values))
    order = valid[np.argsort(values[valid], kind="stable")]
    n = len(order)
    if band == "high":
        order = order[::-1]
    elif band == "medium":
        order = order[np.argsort(np.abs(np.arange(n) - (n - 1) / 2), kind="stable")]
    if tokens is None:
        return np.sort(order[:k])
    fit = np.searchsorted(np.cumsum(lengths[order]), tokens, side="right")
    return np.sort(order[:fit])


POLICIES = [("perplexity", {"perplexity_band": b}) for b in ("high", "medium", "low")]
POLICIES += [("dsir", {}), ("mates", {"update_every": 5, "mates_samples": 256})]


def run_policy(policy, kw, ctx, steps=12):
    sel = build_selector(SelectorConfig(policy=policy, **kw), ctx)
    picks = [sel.initial_selection().copy()]
    for step in range(1, steps + 1):
        if sel.on_step(step, None):
            picks.append(sel.selection().copy())
    return sel, picks


@pytest.mark.parametrize("policy,kw", POLICIES)
@pytest.mark.parametrize("budget", [("docs", 300), ("tokens", 30_000)])
def test_budget_no_duplicates_and_seeded(policy, kw, budget):
    docs, tokens = (budget[1], None) if budget[0] == "docs" else (None, budget[1])
    ctx = make_ctx(budget_docs=docs, budget_tokens=tokens, nan_frac=0.05)
    sel, picks = run_policy(policy, kw, ctx)
    assert len(picks) == (3 if policy == "mates" else 1)
    for ids in picks:
        assert len(np.unique(ids)) == len(ids) and ids.min() >= 0 and ids.max() < ctx.n_docs
        if docs is not None:
            assert len(ids) == docs
        else:  # the prefix stops at the first doc that does not fit
            assert tokens - ctx.doc_lengths.max() < ctx.doc_lengths[ids].sum() <= tokens
    _, again = run_policy(policy, kw, make_ctx(budget_docs=docs, budget_tokens=tokens, nan_frac=0.05))
    assert all(np.array_equal(a, b) for a, b in zip(picks, again))
    if policy != "perplexity":  # seeded: another seed gives another selection
        ctx1 = make_ctx(budget_docs=docs, budget_tokens=tokens, nan_frac=0.05)
        _, other = run_policy(policy, {**kw, "seed": 1}, ctx1)
        assert not np.array_equal(picks[-1], other[-1])


@pytest.mark.parametrize("band", ["high", "medium", "low"])
def test_perplexity_band_matches_brute_force_sort(band):
    ctx = make_ctx(n=801, nan_frac=0.1)
    ppl, lengths = ctx.scores["perplexity"], ctx.doc_lengths
    n_valid = int(np.isfinite(ppl).sum())
    for k in [0, 1, 2, 7, 100, 101, n_valid - 1, n_valid, n_valid + 5]:
        assert np.array_equal(select_band(ppl, lengths, band, k, None), brute_band(ppl, band, k)), k
    for tokens in [0, 50, 999, 12_345, 40_000, 10**9]:
        got = select_band(ppl, lengths, band, None, tokens)
        assert np.array_equal(got, brute_band(ppl, band, lengths=lengths, tokens=tokens)), tokens
    cfg = SelectorConfig(policy="perplexity", perplexity_band=band, budget_docs=100)
    assert np.array_equal(build_selector(cfg, ctx).initial_selection(), brute_band(ppl, band, 100))


def test_perplexity_band_all_ties():
    v = np.full(50, 3.0, dtype=np.float32)
    lengths = np.ones(50, dtype=np.int64)
    for band, k in itertools.product(["high", "medium", "low"], [0, 1, 10, 49, 50]):
        assert np.array_equal(select_band(v, lengths, band, k, None), brute_band(v, band, k))


def successive_sampling_inclusion(w, k):
    """Exact P(doc in sample) of k draws without replacement, each proportional to w (enumeration)."""
    p = np.zeros(len(w))
    for seq in itertools.permutations(range(len(w)), k):
        left, prob = w.sum(), 1.0
        for i in seq:
            prob *= w[i] / left
            left -= w[i]
        p[list(seq)] += prob
    return p


def test_dsir_matches_weighted_sampling_without_replacement():
    logw = np.log(np.array([0.5, 1.0, 2.0, 4.0, 8.0, 0.25], dtype=np.float32))
    exact = successive_sampling_inclusion(np.exp(logw.astype(np.float64)), 2)
    ctx = SelectionContext(np.ones(6, np.int64), Labels(), budget_docs=2, scores={"dsir_logw": logw})
    trials = 4000
    counts = np.zeros(6)
    for seed in range(trials):
        counts[build_selector(SelectorConfig(policy="dsir", seed=seed), ctx).initial_selection()] += 1
    freq = counts / trials
    tol = 4 * np.sqrt(exact * (1 - exact) / trials)  # 4 binomial sigmas
    assert np.all(np.abs(freq - exact) < tol), (freq, exact)


def test_ridge_equals_lstsq_reference():
    g = rng(0, "ridge")
    x = g.normal(size=(60, 7)) + 3.0
    y = x @ g.normal(size=7) + 0.5 * g.normal(size=60) + 10.0
    for alpha in [0.0, 0.3, 5.0]:
        m = fit_ridge(x, y, alpha)
        z = (y - y.mean()) / y.std()
        xc = x - x.mean(0)
        # ridge as least squares on augmented rows sqrt(alpha) I with target 0; intercept from the means
        w_ref = np.linalg.lstsq(np.vstack([xc, np.sqrt(alpha) * np.eye(7)]), np.append(z, np.zeros(7)), rcond=None)[0]
        np.testing.assert_allclose(m.w, w_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(m.predict(x), xc @ w_ref + z.mean(), atol=1e-9)
    plain = np.linalg.lstsq(np.hstack([x, np.ones((60, 1))]), (y - y.mean()) / y.std(), rcond=None)[0]
    m0 = fit_ridge(x, y, 0.0)
    np.testing.assert_allclose(np.append(m0.w, m0.b), plain, rtol=1e-8, atol=1e-10)
    resid = (y - y.mean()) / y.std() - x @ plain[:7] - plain[7]
    assert r_squared(m0, x, y) == pytest.approx(1 - (resid ** 2).sum() / 60, rel=1e-10)  # SST = n for z-scores


def test_predict_pool_is_block_invariant_and_skips_missing_rows():
    g = rng(0, "pool")
    emb = g.normal(size=(1000, 8)).astype(np.float16)
    emb[[3, 500]] = np.nan
    m = fit_ridge(g.normal(size=(50, 8)), g.normal(size=50), 1.0)
    ref = emb.astype(np.float64) @ m.w + m.b
    for block, workers in [(1, 1), (7, 3), (1000, 2), (4096, 1)]:
        got = predict_pool(emb, m, block=block, workers=workers)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        assert np.isnan(got[[3, 500]]).all()


def test_mates_learns_linear_rewards_and_selects_the_top():
    ctx = make_ctx(n=4000, d=16, budget_docs=200)
    cfg = SelectorConfig(policy="mates", update_every=10, mates_samples=400, mates_alpha=1e-3,
                         mates_temperature=0.05)
    sel = build_selector(cfg, ctx)
    sel.initial_selection()
    assert sel.on_step(10, None) and not sel.on_step(11, None)
    truth = ctx.rewards.truth()
    pred = predict_pool(ctx.embeddings, sel.model)
    assert spearmanr(pred, truth).statistic > 0.95
    top = np.argsort(-truth)[:200]
    assert len(np.intersect1d(sel.selection(), top)) > 0.6 * 200
    log = sel.log[-1]
    assert log["step"] == 10 and log["n_samples"] == 400 and log["selected"] == 200 and log["r2_heldout"] > 0.95


def test_mates_resume_mid_run_reselects_identically():
    kw = dict(policy="mates", update_every=5, mates_samples=300, budget_docs=250)
    whole, full = run_policy("mates", {k: v for k, v in kw.items() if k != "policy"}, make_ctx(noise=1e-3), steps=20)
    sel, _ = run_policy("mates", {k: v for k, v in kw.items() if k != "policy"}, make_ctx(noise=1e-3), steps=10)
    state = pickle.loads(pickle.dumps(sel.state_dict()))
    fresh = build_selector(SelectorConfig(**kw), make_ctx(noise=1e-3))
    fresh.initial_selection()
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.model.w, sel.model.w)
    resumed = [fresh.selection().copy()]
    for step in range(11, 21):
        if fresh.on_step(step, None):
            resumed.append(fresh.selection().copy())
    assert len(resumed) == 3
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a, b)
    assert fresh.log == whole.log and len(fresh.log) == len(full)


def test_mates_refuses_a_resume_over_other_embeddings():
    """MATES re-predicts the pool from the embeddings every update: a checkpoint taken over embeddings computed
    one way must not resume over a column relabelled another way (--replace), nor over another shape."""
    from thresher.utils.errors import SettingsMismatchError

    kw = dict(policy="mates", update_every=5, mates_samples=300, budget_docs=250)

    def ctx_with(prov, d=16):
        ctx = make_ctx(noise=1e-3, d=d)
        ctx.embedding_provenance = prov
        return ctx

    made = {"labeler": "EmbedLabeler", "settings": {"model": "all-MiniLM-L6-v2", "max_length": 256}}
    sel = build_selector(SelectorConfig(**kw), ctx_with(made))
    sel.initial_selection()
    sel.on_step(5, None)
    state = pickle.loads(pickle.dumps(sel.state_dict()))
    same = build_selector(SelectorConfig(**kw), ctx_with(dict(made)))
    same.load_state_dict(state)  # the same column: resumes
    relabelled = {**made, "settings": {**made["settings"], "max_length": 64}}
    for other in (ctx_with(relabelled), ctx_with(made, d=8)):
        with pytest.raises(SettingsMismatchError, match="embedding column 'embedding' changed") as e:
            build_selector(SelectorConfig(**kw), other).load_state_dict(state)
        assert "\n" not in str(e.value)
    old = {k: v for k, v in state.items() if k != "labels_key"}  # a checkpoint from before the key: unchecked
    build_selector(SelectorConfig(**kw), ctx_with(relabelled)).load_state_dict(old)


@pytest.mark.parametrize("policy,labeler", [("perplexity", "perplexity"), ("dsir", "dsir"), ("mates", "embed")])
def test_missing_column_names_the_labeler(policy, labeler):
    ctx = make_ctx()
    ctx.scores, ctx.embeddings = {}, None
    with pytest.raises(ThresherError, match=f"--labelers {labeler}") as e:
        build_selector(SelectorConfig(policy=policy), ctx)
    assert "\n" not in str(e.value)


def test_bad_band_is_a_one_line_error():
    with pytest.raises(ThresherError, match="perplexity_band"):
        build_selector(SelectorConfig(policy="perplexity", perplexity_band="middle"), make_ctx())


def test_numeric_context_fields_from_a_label_table(tmp_path):
    from thresher.config import DataConfig
    from thresher.labels.table import LabelTable

    n, g = 40, rng(0, "table")
    ppl = g.random(n).astype(np.float32)
    ppl[5] = np.nan
    emb = g.normal(size=(n, 4)).astype(np.float16)
    np.save(tmp_path / "emb.npy", emb)
    prov = {"labeler": "test"}
    (tmp_path / "t").mkdir()
    floats = {"kind": "float", "provenance": prov}
    specs = {"ppl_gpt2": floats, "dsir_logw": floats, "embedding": {"kind": "embedding", "provenance": prov},
             "domain": {"kind": "category", "categories": ["a"], "provenance": prov}}
    data = {"ppl_gpt2": ppl, "dsir_logw": ppl * 2, "embedding": tmp_path / "emb.npy", "domain": np.zeros(n, np.int16)}
    LabelTable.write(tmp_path / "t", n, data, specs)
    table = LabelTable.open(tmp_path / "t")
    data = DataConfig(label_columns={"perplexity": "ppl_gpt2"})
    scores, e = numeric_context_fields(data, table, SelectorConfig(policy="perplexity"))
    assert list(scores) == ["perplexity"]
    np.testing.assert_array_equal(scores["perplexity"], ppl)
    assert e is None  # only MATES reads the embeddings
    _, e = numeric_context_fields(data, table, SelectorConfig(policy="mates"))
    np.testing.assert_array_equal(np.asarray(e), emb)
    scores, _ = numeric_context_fields(DataConfig(label_columns={}), table)
    assert sorted(scores) == ["dsir_logw", "ppl_gpt2"]
    scores, e = numeric_context_fields(DataConfig(), table, SelectorConfig(policy="dsir", embedding_column="none"))
    assert list(scores) == ["dsir_logw"] and e is None
    with pytest.raises(ThresherError, match="float"):
        numeric_context_fields(DataConfig(label_columns={"perplexity": "domain"}), table,
                               SelectorConfig(policy="perplexity"))


def test_selectable_at_matches_the_materialised_pool():
    """selectable_at maps positions in the pool-without-held-out to doc ids like indexing the explicit list."""
    from thresher.agents.base import selectable_at, selectable_count

    g = np.random.default_rng(3)
    for n, held in [(50, []), (50, [0]), (50, [49]), (50, [0, 1, 2, 10, 11, 48, 49]),
                    (1000, np.sort(g.choice(1000, 300, replace=False)))]:
        ctx = make_ctx(n=n)
        ctx.heldout = np.asarray(held, dtype=np.int64) if len(held) else None
        pool = np.setdiff1d(np.arange(n), held)
        assert selectable_count(ctx) == len(pool)
        np.testing.assert_array_equal(selectable_at(ctx, np.arange(len(pool))), pool)


def test_mates_fits_on_selectable_docs_only():
    """Held-out documents never enter MATES's ridge fit (nor its selection): the reward source is never asked
    for one. Without held-out docs the draw is the old one (same ids, same selection)."""
    seen = []

    class Recording(LinearRewards):
        def rewards(self, doc_ids):
            seen.append(np.asarray(doc_ids).copy())
            return super().rewards(doc_ids)

    def run(held):
        ctx = make_ctx(n=2000, budget_docs=200)
        ctx.rewards = Recording(ctx.rewards.emb, ctx.rewards.w_true)
        ctx.heldout = held
        sel = build_selector(SelectorConfig(policy="mates", update_every=5, mates_samples=1000), ctx)
        sel.initial_selection()
        sel.on_step(5, None)
        return sel

    held = np.arange(0, 2000, 3, dtype=np.int64)  # a third of the pool
    sel = run(held)
    asked = np.concatenate(seen)
    assert len(asked) == 1000 and not np.isin(asked, held).any()
    assert not np.isin(sel.selection(), held).any()
    seen.clear()
    base = run(None)
    first = np.concatenate(seen)
    assert len(first) == 1000 and np.isin(first, held).any()
    g = rng(0, "selector", "mates")  # the draw before this change: g.choice(n) on the whole pool
    np.testing.assert_array_equal(first, np.sort(g.choice(2000, size=1000, replace=False)))
    assert base.log[-1]["n_samples"] == 1000
