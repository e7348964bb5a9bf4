"""Per-cell top-k and Gumbel-top-k against brute force over documents."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from thresher.agents.base import Labels
from thresher.agents.cells import StageDraws, build_cell_index, gather_cells
from thresher.agents.select import make_groups, select_gumbel, select_top_k
from thresher.utils.errors import ThresherError


def _index(codes_a, codes_b, lengths):
    labels = Labels({"a": np.array(codes_a, np.int16), "b": np.array(codes_b, np.int16)},
                    {"a": ["0", "1", "2"], "b": ["0", "1"]})
    return build_cell_index(labels, ["a", "b"], np.array(lengths, np.int64))


corpus = st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-1, 2), min_size=n, max_size=n), st.lists(st.integers(0, 1), min_size=n, max_size=n),
    st.lists(st.integers(1, 9), min_size=n, max_size=n),
    st.lists(st.sampled_from([0.0, 1.0, 2.0, -np.inf]), min_size=12, max_size=12),  # ties across cells
    st.integers(0, 70), st.integers(0, 2**31), st.sampled_from([0.0, 1.5])))


def _setup(case):
    a, b, lengths, cell_pool, budget, seed, penalty = case
    index = _index(a, b, lengths)
    scores = np.array(cell_pool[: index.n_cells])
    lengths = np.array(lengths, np.int64)
    trained = np.random.default_rng(seed).random(len(lengths)) < 0.3 if penalty else None
    groups = make_groups(index, scores, lengths, trained, penalty)
    doc_score = scores[index.cell_id] - (penalty * trained if penalty else 0.0)
    return index, lengths, groups, doc_score, budget, np.random.default_rng(seed), trained


def test_cell_index_groups_every_doc_once():
    g = np.random.default_rng(1)
    a, b, lengths = g.integers(-1, 3, 500), g.integers(0, 2, 500), g.integers(1, 9, 500)
    index = _index(a, b, lengths)
    docs = gather_cells(index, np.arange(index.n_cells))
    assert sorted(docs.tolist()) == list(range(500))
    np.testing.assert_array_equal(index.codes[index.cell_id], np.stack([a, b], axis=1))
    np.testing.assert_array_equal(index.tokens, np.bincount(index.cell_id, weights=lengths))
    for c in range(index.n_cells):
        assert (index.cell_id[index.docs(c)] == c).all()
    for j, col in enumerate(["a", "b", "a"]):  # asked twice: the cached grouping answers the same
        for code in (-1, 0, 1, 2, 7):
            np.testing.assert_array_equal(index.cells_with(col, code), np.flatnonzero(index.codes[:, j % 2] == code))


@pytest.mark.parametrize("n_cat", [3, 5000])  # 4 * 5001^2 keys > 2^24: the sort path, not the lookup table
def test_cell_index_matches_unique_rows_in_both_key_paths(n_cat):
    g = np.random.default_rng(2)
    a, b = g.integers(-1, n_cat, 3000).astype(np.int16), g.integers(-1, n_cat, 3000).astype(np.int16)
    labels = Labels({"a": a, "b": b}, {"a": [str(i) for i in range(n_cat)], "b": [str(i) for i in range(n_cat)]})
    index = build_cell_index(labels, ["a", "b"], np.ones(3000, np.int32))
    rows, inverse = np.unique(np.stack([a, b], axis=1).astype(np.int64), axis=0, return_inverse=True)
    np.testing.assert_array_equal(index.codes, rows)  # cells in ascending code order, like np.unique
    np.testing.assert_array_equal(index.cell_id, inverse.reshape(-1))
    assert index.cell_id.dtype == index.order.dtype == np.int32


def test_cell_index_refuses_non_integer_codes():
    labels = Labels({"a": np.array([0.0, 1.0])}, {"a": ["x", "y"]})
    with pytest.raises(ThresherError, match="label column 'a' holds float64 values; agents need integer"):
        build_cell_index(labels, ["a"], np.ones(2, np.int64))


def test_gather_cells_keeps_the_index_dtype_when_asked():
    g = np.random.default_rng(3)
    index = _index(g.integers(-1, 3, 400), g.integers(0, 2, 400), g.integers(1, 9, 400))
    for cells in (np.arange(index.n_cells), np.array([2]), np.array([3, 0]), np.zeros(0, np.int64)):
        wide, narrow = gather_cells(index, cells), gather_cells(index, cells, None)
        assert wide.dtype == np.int64 and narrow.dtype == np.int32
        np.testing.assert_array_equal(wide, np.concatenate([index.docs(c) for c in cells] or [np.zeros(0)]))
        np.testing.assert_array_equal(wide, narrow)


@pytest.mark.parametrize("chunks", [[1, 5, 40, 3, 200, 1000], [300, 300, 300, 300]])
def test_stage_draws_give_every_doc_of_an_arm_once(chunks):
    """Quad's draws within a stage: only the arm's docs (over several cells), none twice, all of them in the
    end."""
    g = np.random.default_rng(5)
    index = _index(g.integers(-1, 3, 3000), g.integers(0, 2, 3000), g.integers(1, 9, 3000))
    for arm in range(3):
        draws, got = StageDraws(index, "a"), []
        want = np.sort(gather_cells(index, index.cells_with("a", arm)))
        assert len(index.cells_with("a", arm)) > 1 and draws.size(arm) == len(want)
        for m in chunks:
            got.append(draws.draw(arm, m, g))
            assert got[-1].dtype == np.int64 and len(got[-1]) == min(m, len(want) - sum(map(len, got[:-1])))
        assert draws.draw(arm, 5, g).size == 0 and draws.drawn() == len(want)
        np.testing.assert_array_equal(np.sort(np.concatenate(got)), want)


@pytest.mark.parametrize("n, first_m, then_m", [(500, 2, 3), (500, 8, 20), (10, 2, 3)])  # sparse, sparse -> dense, dense
def test_stage_draws_are_uniform_and_in_random_order(n, first_m, then_m):
    """After ``first_m`` docs are drawn, the next draw is a uniform ordered sample of the other docs: each
    equally likely first, and equally likely included (chi-square against uniform)."""
    from scipy.stats import chisquare

    index = _index(np.zeros(n, np.int64), np.zeros(n, np.int64), np.ones(n, np.int64))
    g = np.random.default_rng(11)
    first, incl = np.zeros(n - first_m), np.zeros(n - first_m)
    for _ in range(6000):
        draws = StageDraws(index, "a")
        before = draws.draw(0, first_m, g)
        nxt = draws.draw(0, then_m, g)
        assert not set(before) & set(nxt) and draws.drawn() == first_m + then_m
        pos = np.searchsorted(np.setdiff1d(np.arange(n), before), nxt)  # the other docs, relabelled
        first[pos[0]] += 1
        incl[pos] += 1
    assert (0 in draws.dense) == (first_m + then_m > StageDraws.DENSE_SHARE * n)
    assert chisquare(first).pvalue > 1e-3 and chisquare(incl).pvalue > 1e-3


def test_stage_draws_hold_only_what_was_drawn():
    n = 1_000_000
    index = _index(np.zeros(n, np.int64), np.arange(n) % 2, np.ones(n, np.int64))
    draws = StageDraws(index, "a")
    got = np.concatenate([draws.draw(0, 50, np.random.default_rng(i)) for i in range(4)])
    assert len(np.unique(got)) == 200 == draws.drawn()
    held = sum(t.nbytes for t in draws.taken.values()) + sum(c.nbytes + s.nbytes for c, s in draws._arm.values())
    assert held < 4096 and not draws.dense  # a shuffled copy of the arm was 4 MB
    # drawn to exhaustion: one shuffled copy of the free positions, then slices of it (no re-sort per draw)
    rest = [draws.draw(0, 100_000, np.random.default_rng(9)) for _ in range(12)]
    assert 0 in draws.dense and draws.drawn() == n and rest[-1].size == 0  # the arm spans both b cells
    assert len(np.unique(np.concatenate([got, *rest]))) == n


@settings(max_examples=150, deadline=None)
@given(corpus)
def test_top_k_docs_equals_brute_force_sort(case):
    index, lengths, groups, doc_score, k, g, trained = _setup(case)
    sel = select_top_k(index, lengths, groups, g, budget_docs=k, trained=trained)
    finite = np.isfinite(doc_score)
    brute = np.sort(doc_score[finite])[::-1][:k]  # brute-force top-k scores (float64 sort of all docs)
    assert len(np.unique(sel)) == len(sel) == min(k, finite.sum())
    np.testing.assert_array_equal(np.sort(doc_score[sel])[::-1], brute)


@settings(max_examples=150, deadline=None)
@given(corpus)
def test_top_k_tokens_is_a_sorted_prefix_that_fits(case):
    index, lengths, groups, doc_score, budget, g, trained = _setup(case)
    budget *= 5
    sel = select_top_k(index, lengths, groups, g, budget_tokens=budget, trained=trained)
    used = lengths[sel].sum()
    assert len(np.unique(sel)) == len(sel) and used <= budget
    rest = np.setdiff1d(np.flatnonzero(np.isfinite(doc_score)), sel)
    if len(sel) and len(rest):
        assert doc_score[rest].max() <= doc_score[sel].min()  # a prefix of the score order
    if len(rest):  # the prefix stopped at a doc of the next score level that did not fit
        nxt = rest[doc_score[rest] == doc_score[rest].max()]
        assert (lengths[nxt] > budget - used).any()


@settings(max_examples=100, deadline=None)
@given(corpus, st.sampled_from([0.3, 1.0, 5.0]))
def test_gumbel_exact_budget_no_duplicates_seeded(case, tau):
    index, lengths, groups, doc_score, k, _, trained = _setup(case)
    run = lambda s, **kw: select_gumbel(index, lengths, groups, np.random.default_rng(s), tau, trained=trained, **kw)  # noqa: E731
    sel = run(7, budget_docs=k)
    assert len(np.unique(sel)) == len(sel) == min(k, np.isfinite(doc_score).sum())
    assert np.isfinite(doc_score[sel]).all()
    np.testing.assert_array_equal(sel, run(7, budget_docs=k))
    tok = run(3, budget_tokens=5 * k)
    assert lengths[tok].sum() <= 5 * k and len(np.unique(tok)) == len(tok)


def _brute_gumbel(doc_score, lengths, tau, g, k=None, tokens=None):
    keys = doc_score / tau + g.gumbel(size=len(doc_score))
    order = np.argsort(-keys)
    order = order[np.isfinite(doc_score[order])]
    if tokens is None:
        return order[:k]
    return order[: np.searchsorted(np.cumsum(lengths[order]), tokens, side="right")]


def test_gumbel_matches_brute_force_in_distribution():
    # 4 cells, unequal sizes and scores; compare per-doc inclusion frequencies over many draws
    a = [0] * 3 + [1] * 5 + [2] * 8 + [2] * 4
    b = [0] * 3 + [0] * 5 + [0] * 8 + [1] * 4
    lengths = np.arange(20) % 7 + 1
    index = _index(a, b, lengths)
    cell_scores = np.array([0.0, 1.0, 2.0, -0.5])[: index.n_cells]
    groups = make_groups(index, cell_scores, lengths)
    doc_score = cell_scores[index.cell_id]
    n = 3000
    for kw in ({"k": 6}, {"tokens": 20}):
        g1, g2 = np.random.default_rng(11), np.random.default_rng(12)
        ours, brute = np.zeros(20), np.zeros(20)
        for _ in range(n):
            ours[select_gumbel(index, lengths, groups, g1, 0.7, budget_docs=kw.get("k"),
                               budget_tokens=kw.get("tokens"))] += 1
            brute[_brute_gumbel(doc_score, lengths, 0.7, g2, **kw)] += 1
        p = (ours + brute) / (2 * n)
        se = np.sqrt(np.maximum(p * (1 - p), 1e-4) * 2 / n)
        assert np.all(np.abs(ours / n - brute / n) < 4.5 * se), (ours / n, brute / n)


@pytest.mark.parametrize("budget", ["docs", "tokens"])
def test_gumbel_inclusion_probabilities_match_the_draws(budget):
    """The large-pool inclusion probability of each score group against the frequency over 300 brute-force
    Gumbel-top-k draws (2,000 docs in 5 groups of unequal size and score; 400 docs or 2,000 tokens)."""
    from thresher.agents.select import gumbel_inclusion

    g = np.random.default_rng(5)
    group = np.repeat(np.arange(5), [100, 300, 600, 400, 600])
    scores = np.array([2.0, 1.2, 0.5, 0.0, -1.0])
    lengths = g.integers(1, 10, len(group))
    doc_score, tau, n = scores[group], 0.6, 300
    kw = {"k": 400} if budget == "docs" else {"tokens": 2000}
    freq = np.zeros(len(group))
    for _ in range(n):
        freq[_brute_gumbel(doc_score, lengths, tau, g, **kw)] += 1
    amount = np.bincount(group, minlength=5) if budget == "docs" else np.bincount(group, lengths, minlength=5)
    target = kw.get("k") or kw["tokens"]
    p = gumbel_inclusion(scores, amount, tau, target)
    got = np.bincount(group, freq, minlength=5) / (n * np.bincount(group))
    np.testing.assert_allclose(got, p, atol=0.01)  # measured: 0.003 at most
    assert np.all(np.diff(p) < 0) and (amount * p).sum() == pytest.approx(target, rel=1e-9)
    assert gumbel_inclusion(scores, amount, tau, amount.sum() + 1).tolist() == [1.0] * 5  # the whole pool fits
