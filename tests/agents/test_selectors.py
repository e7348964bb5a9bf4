"""Selectors end to end with a fake reward source of known per-category utilities."""

import dataclasses
import json
import pickle

import numpy as np
import pytest
from agents_helpers import DOMAINS, FakeRewards, make_ctx
from scipy.stats import spearmanr

from thresher.agents.config import SelectorConfig
from thresher.agents.policies import POLICIES, build_selector
from thresher.agents.presets import DOMAIN_MIXTURES
from thresher.utils.errors import SettingsMismatchError, ThresherError


def _run(cfg, steps, ctx=None, state=None, start=0):
    ctx = ctx or make_ctx(4000)
    ctx.rewards = FakeRewards(ctx.labels)
    sel = build_selector(cfg, ctx)
    first = sel.initial_selection()
    if state is not None:
        sel.load_state_dict(pickle.loads(pickle.dumps(state)))
    picks = []
    for step in range(start + 1, steps + 1):
        if sel.on_step(step, None):
            picks.append(sel.selection().copy())
    return sel, first, picks


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_selects_the_budget_without_duplicates(policy):
    cfg = SelectorConfig(policy=policy, update_every=5, budget_docs=400, samples_per_category=8,
                         clusters_per_round=4, threshold=0.0)
    sel, first, picks = _run(cfg, 10)
    for ids in [first, *picks]:
        assert len(ids) == 400 and len(np.unique(ids)) == 400 and ids.min() >= 0 and ids.max() < 4000


@pytest.mark.parametrize("policy,selection", [("multi-agent", "gumbel"), ("multi-agent+quad", "top-k"),
                                              ("quad", "top-k")])
def test_state_dict_round_trip_mid_run(policy, selection):
    cfg = SelectorConfig(policy=policy, update_every=3, budget_tokens=20000, samples_per_category=8,
                         selection=selection, reuse_penalty=0.3, clusters_per_round=3, threshold_mode="quantile")
    full, _, picks = _run(cfg, 15)
    half, _, _ = _run(cfg, 6)
    state = half.state_dict()
    assert state["selection"].dtype == np.int32  # half the checkpoint bytes while doc ids fit
    resumed, _, rest = _run(cfg, 15, state=state, start=6)
    assert resumed.selection().dtype == np.int32 and not resumed.selection().flags.writeable
    assert len(picks) == 5 and len(rest) == 3
    for a, b in zip(picks[2:], rest):
        np.testing.assert_array_equal(a, b)
    assert json.dumps(full.log, default=str) == json.dumps(resumed.log, default=str)


def test_learned_weights_track_true_utilities():
    ctx = make_ctx(20000, seed=3)
    cfg = SelectorConfig(policy="multi-agent", update_every=1, budget_docs=1000, samples_per_category=48)
    sel, _, _ = _run(cfg, 8, ctx=ctx)
    truth = ctx.rewards.utility
    rho = {a.column: spearmanr(a.weights, truth[a.column])[0] for a in sel.console.agents}
    print("spearman(learned weights, true utilities):", {k: round(v, 3) for k, v in rho.items()})
    assert all(v >= 0.7 for v in rho.values()), rho


def test_bandit_agent_and_quad_favour_useful_clusters():
    ctx = make_ctx(20000, seed=4)
    cfg = SelectorConfig(policy="quad", update_every=1, budget_docs=2000, clusters_per_round=4,
                         threshold_mode="quantile", threshold_quantile=0.5, alpha=1e-5)
    sel, _, _ = _run(cfg, 1, ctx=ctx)
    b = sel.bandit
    visited = b.counts > 0
    truth = ctx.rewards.utility["cluster"]
    rho = spearmanr(b.sums[visited] / b.counts[visited], truth[visited])[0]
    print("quad: clusters visited", visited.sum(), "spearman(mean reward, utility):", round(rho, 3))
    assert visited.all() and rho >= 0.7
    assert len(sel.selection()) == 2000


def test_quad_accepts_only_docs_above_threshold():
    ctx = make_ctx(6000, seed=5)
    cfg = SelectorConfig(policy="quad", update_every=2, budget_docs=300, threshold=0.0, clusters_per_round=2)
    sel, _, _ = _run(cfg, 2, ctx=ctx)
    assert (ctx.rewards.rewards(sel.selection()) > 0).all()


def test_missing_labels_neutral_or_excluded():
    ctx = make_ctx(3000, missing=0.2)
    q = ctx.labels.codes["quality"]
    for missing, allowed in (("exclude", False), ("neutral", True)):
        cfg = SelectorConfig(policy="quality-top", budget_docs=2500, missing=missing)
        sel, first, _ = _run(cfg, 0, ctx=ctx)
        assert (q[first] == -1).any() == allowed


def test_quality_top_takes_highest_intervals_first():
    ctx = make_ctx(3000)
    q = ctx.labels.codes["quality"]
    k = int((q == 4).sum() + 10)
    sel, first, _ = _run(SelectorConfig(policy="quality-top", budget_docs=k), 0, ctx=ctx)
    assert (q[first] == 4).sum() == (q == 4).sum() and (q[first] == 3).sum() == 10


def test_static_mixture_follows_preset_and_init_file(tmp_path):
    ctx = make_ctx(20000)
    sel, first, _ = _run(SelectorConfig(policy="static-mixture", mixture="doge", budget_docs=1000), 0, ctx=ctx)
    counts = np.bincount(ctx.labels.codes["domain"][first], minlength=7)
    want = dict(zip(["CommonCrawl", "C4", "GitHub", "Book", "ArXiv", "Wikipedia", "StackExchange"],
                    DOMAIN_MIXTURES["doge"]))
    expect = np.array([want[d] for d in DOMAINS]) / 100 * 1000
    assert counts.sum() == 1000 and np.abs(counts - expect).max() <= 1
    f = tmp_path / "init.json"
    f.write_text(json.dumps({"domain": {"Wikipedia": 3, "C4": 1}}))
    sel = build_selector(SelectorConfig(policy="domain", init_file=str(f), budget_docs=10),
                         make_ctx(500, rewards=FakeRewards(make_ctx(500).labels)))
    np.testing.assert_allclose(sel.console.agents[0].weights, [0, 0, 0.75, 0, 0, 0, 0.25])
    # static-mixture trains the init file's mixture (a RegMix fit) when asked (mixture = "init"); selector.init
    # wins over the file, mixture_weights over both; without "init" the file does not change the preset
    sel, first, _ = _run(SelectorConfig(policy="static-mixture", mixture="init", init_file=str(f), budget_docs=1000), 0, ctx=ctx)
    counts = np.bincount(ctx.labels.codes["domain"][first], minlength=7)
    assert counts[DOMAINS.index("Wikipedia")] == 750 and counts[DOMAINS.index("C4")] == 250 and counts.sum() == 1000
    assert sel.log[0]["weights_from"] == f"init_file {f}"
    sel, _, _ = _run(SelectorConfig(policy="static-mixture", mixture="init", init_file=str(f), budget_docs=100,
                                    init={"domain": {"GitHub": 1}}), 0, ctx=ctx)
    assert sel.weights[DOMAINS.index("GitHub")] == 1 and sel.log[0]["weights_from"] == "init"
    sel, _, _ = _run(SelectorConfig(policy="static-mixture", mixture="init", init_file=str(f), mixture_weights={"ArXiv": 1},
                                    budget_docs=100), 0, ctx=ctx)
    assert sel.weights[DOMAINS.index("ArXiv")] == 1 and sel.log[0]["weights_from"] == "mixture_weights"
    sel, _, _ = _run(SelectorConfig(policy="static-mixture", mixture="doge", init_file=str(f), budget_docs=100), 0, ctx=ctx)
    assert sel.log[0]["weights_from"] == "preset doge"
    with pytest.raises(ThresherError, match="mixture = 'init' takes the initial weights of 'domain'"):
        _run(SelectorConfig(policy="static-mixture", mixture="init", budget_docs=100), 0, ctx=ctx)


def test_a_table_4_preset_on_other_domains_names_slimpajama_and_the_categories():
    from thresher.agents.presets import initial_weights

    with pytest.raises(ThresherError, match=r"preset 'doremi' is a mixture of SlimPajama's 7 domains.*\['Pile-CC', 'FreeLaw'\]"):
        initial_weights("doremi", ["Pile-CC", "FreeLaw"], "selector.init.domain")
    np.testing.assert_allclose(initial_weights("uniform", ["Pile-CC", "FreeLaw"], "x"), [0.5, 0.5])
    w = initial_weights("doremi", ["CommonCrawl", "C4", "GitHub", "Books", "ArXiv", "Wikipedia", "StackExchange"], "x")
    np.testing.assert_allclose(w, np.array(DOMAIN_MIXTURES["doremi"]) / sum(DOMAIN_MIXTURES["doremi"]))


def test_categories_without_documents_are_named_once_and_logged(capsys):
    ctx = make_ctx(2000, rewards=None)
    codes = np.asarray(ctx.labels.codes["domain"]).copy()
    codes[codes == 2] = 0  # no Wikipedia left
    ctx.labels.codes["domain"] = codes
    ctx.rewards = FakeRewards(ctx.labels)
    sel = build_selector(SelectorConfig(policy="multi-agent", budget_docs=200, update_every=5), ctx)
    out = capsys.readouterr().out
    assert out.count("warning") == 1 and "no document in the pool has domain 'Wikipedia'" in out, out
    sel.initial_selection()
    assert sel.log[0]["empty_categories"] == {"domain": ["Wikipedia"]}
    w0 = sel.console.agents[1].weights.copy()
    sel.on_step(5, None)
    dom = sel.log[-1]["agents"][1]
    assert dom["agent"] == "domain" and dom["n_samples"][2] == 0 and dom["mean_rewards"][2] is None
    w1 = sel.console.agents[1].weights
    assert w1[2] == w0[2] and not np.allclose(np.delete(w1, 2), np.delete(w0, 2))  # the others learnt
    build_selector(SelectorConfig(policy="multi-agent", budget_docs=200), make_ctx(2000, rewards=ctx.rewards))
    assert "warning" not in capsys.readouterr().out  # every category populated: nothing to say


def test_one_init_file_per_column_comma_separated(tmp_path):
    """The paper initialises the domain and the topic agent from RegMix fits, one `thresher regmix` per column:
    selector.init_file names both files; a column in two files is an error, selector.init still wins."""
    (tmp_path / "d.json").write_text(json.dumps({"domain": {"Wikipedia": 3, "C4": 1}}))
    (tmp_path / "t.json").write_text(json.dumps({"topic": {"topic3": 1}}))
    (tmp_path / "d2.json").write_text(json.dumps({"domain": {"GitHub": 1}}))
    ctx = make_ctx(500)
    ctx.rewards = FakeRewards(ctx.labels)
    both = f"{tmp_path / 'd.json'}, {tmp_path / 't.json'}"
    sel = build_selector(SelectorConfig(policy="domain+topic", init_file=both, budget_docs=10), ctx)
    dom, top = sel.console.agents
    np.testing.assert_allclose(dom.weights, [0, 0, 0.75, 0, 0, 0, 0.25])
    assert top.weights[3] == 1 and top.weights.sum() == pytest.approx(1)
    with pytest.raises(ThresherError, match=r"\['domain'\] given by .*d2.json and by an earlier file"):
        build_selector(SelectorConfig(policy="domain", init_file=f"{both},{tmp_path / 'd2.json'}", budget_docs=10), ctx)
    sel = build_selector(SelectorConfig(policy="domain+topic", init_file=both, init={"topic": "uniform"}, budget_docs=10), ctx)
    np.testing.assert_allclose(sel.console.agents[1].weights, 1 / len(top.weights))


@pytest.mark.parametrize("budget", [{"budget_docs": 1000}, {"budget_tokens": 100_000}])
def test_static_mixture_says_when_the_pool_cannot_fill_a_share(capsys, budget):
    ctx = make_ctx(20000, **{"budget_docs": None, **budget})
    codes = np.asarray(ctx.labels.codes["domain"]).copy()
    wiki = np.flatnonzero(codes == 2)
    codes[wiki[10:]] = 0  # 10 Wikipedia docs left, far fewer than DoReMi's 23% share
    ctx.labels.codes["domain"] = codes
    sel = build_selector(SelectorConfig(policy="static-mixture", mixture="doremi", **budget), ctx)
    ids = sel.initial_selection()
    out = capsys.readouterr().out
    short = sel.log[0]["shortfall"]
    assert list(short) == ["Wikipedia"], short
    unit = "docs" if "budget_docs" in budget else "tokens"
    got = 10 if unit == "docs" else int(ctx.doc_lengths[np.flatnonzero(codes == 2)].sum())
    assert short["Wikipedia"]["selected"] == got and short["Wikipedia"]["target"] > got
    assert out.count("warning") == 1 and f"Wikipedia ({got:,} of {short['Wikipedia']['target']:,} {unit})" in out, out
    lost = short["Wikipedia"]["target"] - got
    size = len(ids) if unit == "docs" else int(ctx.doc_lengths[ids].sum())
    assert f"{lost:,} {unit} short" in out and size <= list(budget.values())[0] - lost + (0 if unit == "docs" else 7 * 200)


def test_water_filling_by_hand():
    from thresher.agents.selectors import _water_fill

    w = np.array([0.5, 0.3, 0.2])
    np.testing.assert_array_equal(_water_fill(100, w, np.array([10, 100, 100]), True), [10, 54, 36])  # 90 as 3:2
    np.testing.assert_array_equal(_water_fill(100, w, np.array([10, 40, 100]), True), [10, 40, 50])  # a second round
    np.testing.assert_array_equal(_water_fill(100, w, np.array([10, 10, 10]), True), [10, 10, 10])  # the pool is small
    np.testing.assert_array_equal(_water_fill(7, w, np.array([0, 9, 9]), True), [0, 4, 3])  # 7 as 3:2, remainders
    np.testing.assert_allclose(_water_fill(1000, np.array([0.25, 0.75, 0.0]), np.array([100, 1e9, 1e9]), False),
                               [100, 900, 0])  # tokens; a weight of 0 takes nothing
    np.testing.assert_array_equal(_water_fill(100, w, np.array([100, 100, 100]), True), [50, 30, 20])  # room: shares


@pytest.mark.parametrize("budget", [{"budget_docs": 1000}, {"budget_tokens": 100_000}])
def test_static_mixture_can_hand_a_short_share_to_the_other_categories(capsys, budget):
    """mixture_shortfall = "redistribute": the short domain gives all it has and the budget is met, the other domains
    in proportion to their weights (a document's worth of tokens per domain below, at most)."""
    ctx = make_ctx(20000, **{"budget_docs": None, **budget})
    codes = np.asarray(ctx.labels.codes["domain"]).copy()
    codes[np.flatnonzero(codes == 2)[10:]] = 0  # 10 Wikipedia docs left
    ctx.labels.codes["domain"] = codes
    cfg = SelectorConfig(policy="static-mixture", mixture="doremi", mixture_shortfall="redistribute", **budget)
    sel = build_selector(cfg, ctx)
    ids = sel.initial_selection()
    out = capsys.readouterr().out
    unit = "docs" if "budget_docs" in budget else "tokens"
    size = (lambda x: len(x)) if unit == "docs" else (lambda x: int(ctx.doc_lengths[x].sum()))
    wiki = np.flatnonzero(codes == 2)
    assert np.isin(wiki, ids).all() and list(sel.log[0]["shortfall"]) == ["Wikipedia"]
    k = list(budget.values())[0]
    assert k - 7 * 200 < size(ids) <= k  # the budget is met (tokens: up to one document short per domain)
    if unit == "docs":
        assert size(ids) == k
    w = np.asarray(sel.weights, dtype=np.float64)  # DoReMi's, in this pool's domain order
    got = np.array([size(ids[codes[ids] == j]) for j in range(len(w))], dtype=np.float64)
    rest = np.arange(len(w)) != 2
    targets = np.array(list(sel.log[0]["targets"].values()), dtype=np.float64)
    np.testing.assert_allclose(targets[rest] / targets[rest].sum(), w[rest] / w[rest].sum(), atol=2e-3)
    assert np.all(np.abs(got[rest] - targets[rest]) <= (1 if unit == "docs" else 200))
    assert "went to the other categories in proportion to their weights" in out and "short of the budget" not in out


def test_bad_settings_are_one_line_errors():
    ctx = make_ctx(200)
    with pytest.raises(ThresherError, match="unknown selection policy"):
        build_selector(SelectorConfig(policy="nope"), ctx)
    with pytest.raises(ThresherError, match="needs a reward source"):
        build_selector(SelectorConfig(policy="multi-agent"), ctx)
    with pytest.raises(ThresherError, match="is not one of"):
        build_selector(SelectorConfig(policy="domain", init={"domain": {"Reddit": 1}}),
                       make_ctx(200, rewards=FakeRewards(ctx.labels)))
    with pytest.raises(ThresherError, match="selection"):
        SelectorConfig(selection="argmax").validate()
    with pytest.raises(ThresherError, match="theta_eta"):
        SelectorConfig(theta_eta="per-agent").validate()
    with pytest.raises(ThresherError, match="unknown selector setting"):
        SelectorConfig.from_dict({"polcy": "random"})
    assert SelectorConfig.from_dict(SelectorConfig().to_dict()) == SelectorConfig()


def test_resume_under_other_selector_settings_is_refused():
    """A checkpoint's selector state loads only into a selector built from the same settings: another
    policy (whose state lacks, e.g., Quad's bandit) or another budget is one clear error, not a KeyError."""
    base = dict(update_every=3, budget_docs=400, samples_per_category=8, clusters_per_round=3)
    sel, _, _ = _run(SelectorConfig(policy="multi-agent", **base), 6)
    state = pickle.loads(pickle.dumps(sel.state_dict()))
    for other in (SelectorConfig(policy="quad", **base), SelectorConfig(policy="multi-agent", **base | {"budget_docs": 300})):
        ctx = make_ctx(4000)
        ctx.rewards = FakeRewards(ctx.labels)
        resumed = build_selector(other, ctx)
        resumed.initial_selection()
        with pytest.raises(SettingsMismatchError, match="selector state"):
            resumed.load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "settings"}  # a state from before settings were kept
    _run(SelectorConfig(policy="multi-agent", **base), 9, state=old, start=6)


OTHER_VALUE = {"theta_eta": "agent", "ucb_count": "rounds", "mixture_shortfall": "redistribute"}


def test_every_added_setting_has_a_resume_test():
    from thresher.agents.config import ADDED_SETTINGS

    assert set(OTHER_VALUE) == set(ADDED_SETTINGS)


@pytest.mark.parametrize("key", sorted(OTHER_VALUE))
def test_a_checkpoint_from_before_a_setting_resumes_under_its_old_value_only(key):
    """A setting added after checkpoints were written without it (e.g. theta_eta: those ran Eq. 9 with eta_console)
    resumes such a state under the value those runs used (config.ADDED_SETTINGS) and refuses it under another."""
    base = dict(policy="multi-agent", update_every=3, budget_docs=400, samples_per_category=8)
    _, _, picks = _run(SelectorConfig(**base), 9)
    half, _, _ = _run(SelectorConfig(**base), 6)
    state = pickle.loads(pickle.dumps(half.state_dict()))
    del state["settings"][key]
    _, _, rest = _run(SelectorConfig(**base), 9, state=state, start=6)
    np.testing.assert_array_equal(picks[-1], rest[-1])
    with pytest.raises(SettingsMismatchError, match=key):
        _run(SelectorConfig(**base, **{key: OTHER_VALUE[key]}), 9, state=state, start=6)


def test_misspelt_agent_columns_and_a_missing_budget_are_errors():
    ctx = make_ctx(200)
    ctx.rewards = FakeRewards(ctx.labels)
    for key in ("eta_agents", "init"):
        with pytest.raises(ThresherError, match=f"selector.{key} names \\['qualty'\\]"):
            build_selector(SelectorConfig(policy="multi-agent", **{key: {"qualty": 5.0}}), ctx)
    build_selector(SelectorConfig(policy="domain", eta_agents={"quality": 5.0}), ctx)  # a real column not in use: fine
    with pytest.raises(ThresherError, match="needs a budget"):
        build_selector(SelectorConfig(policy="random"), make_ctx(200, budget_docs=None))


def test_quad_threshold_off_the_reward_scale_and_stage_tokens_with_a_doc_budget_are_errors():
    """An absolute threshold above every reward would score the whole pool and select nothing; stage sizes in
    tokens under a document budget would be ignored. Both are one clear error."""
    ctx = make_ctx(2000)
    ctx.rewards = FakeRewards(ctx.labels, scale=1e-6)  # rewards ~1e-6, the paper's threshold 0.0025
    sel = build_selector(SelectorConfig(policy="quad", budget_docs=300, update_every=5), ctx)
    sel.initial_selection()
    with pytest.raises(ThresherError, match="threshold_mode = 'quantile'"):
        sel.on_step(5, None)
    ok = build_selector(SelectorConfig(policy="quad", budget_docs=300, update_every=5, threshold_mode="quantile"), ctx)
    ok.initial_selection()
    assert ok.on_step(5, None) and len(ok.selection()) == 300
    with pytest.raises(ThresherError, match="selector.initial = 'scores' is for the console policies"):
        build_selector(SelectorConfig(policy="quad", budget_docs=300, initial="scores"), ctx)
    with pytest.raises(ThresherError, match="quad_stage_tokens"):
        build_selector(SelectorConfig(policy="quad", budget_docs=300, quad_stage_tokens=500), ctx)


def test_checkpointed_selection_keeps_ids_beyond_int32():
    from thresher.agents.base import Selector

    class Fixed(Selector):
        def setup(self, ctx):
            pass

        def initial_selection(self):
            self._set_selection(np.array([3, 2**31 + 5], dtype=np.int64))
            return self._selection

    a = Fixed()
    a.initial_selection()
    state = a.state_dict()
    assert state["selection"].dtype == np.int64
    b = Fixed()
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.selection(), [3, 2**31 + 5])
    assert b.selection().dtype == np.int64 and a.selection().dtype == np.int64  # held wide only when needed
    from thresher.agents.base import narrow_ids

    with pytest.raises(ThresherError, match="doc ids must be non-negative, got -4294967291"):
        narrow_ids(np.array([-2**32 + 5, 7]))  # would wrap to 5 in int32


def test_budget_must_be_positive_and_a_whole_pool_budget_is_named(capsys):
    from thresher.agents.base import resolve_budget

    ctx = make_ctx(200, budget_docs=None)
    with pytest.raises(ThresherError, match="selector budget must be positive, got budget_tokens = -5"):
        resolve_budget(SelectorConfig(budget_tokens=-5), ctx)
    assert resolve_budget(SelectorConfig(budget_docs=50), ctx) == (50, None)
    assert "holds the whole pool" not in capsys.readouterr().out
    assert resolve_budget(SelectorConfig(budget_docs=500), ctx) == (500, None)
    assert "budget_docs = 500 holds the whole pool (200 docs" in capsys.readouterr().out
    resolve_budget(SelectorConfig(budget_tokens=int(ctx.doc_lengths.sum())), ctx)
    assert "every document is selected" in capsys.readouterr().out
    # held-out documents are not in the selectable pool: 190 docs hold all 200 - 10 of them
    held = dataclasses.replace(ctx, heldout=np.arange(10, dtype=np.int64))
    resolve_budget(SelectorConfig(budget_docs=190), held)
    assert "budget_docs = 190 holds the whole pool (190 docs" in capsys.readouterr().out
    resolve_budget(SelectorConfig(budget_tokens=int(ctx.doc_lengths[10:].sum())), held)
    assert "held-out documents excluded): every document is selected" in capsys.readouterr().out
    resolve_budget(SelectorConfig(budget_tokens=int(ctx.doc_lengths[10:].sum()) - 1), held)
    assert "holds the whole pool" not in capsys.readouterr().out


class _Recording(FakeRewards):
    """FakeRewards that logs every refresh and every scored batch with the step it was scored at."""

    def __init__(self, labels):
        super().__init__(labels)
        self.events = []

    def refresh(self, model, step):
        super().refresh(model, step)
        self.events.append(("refresh", step, model))

    def rewards(self, doc_ids):
        r = super().rewards(doc_ids)
        self.events.append(("rewards", self.step, (np.asarray(doc_ids).copy(), r)))
        return r


@pytest.mark.parametrize("policy", ["quad", "multi-agent", "multi-agent+quad"])
def test_every_stage_is_scored_by_the_model_refreshed_at_its_step(policy):
    """Algorithm 1 line 7 / Quad's loop: rewards of the stage at step s come from the model at step s."""
    ctx = make_ctx(4000)
    ctx.rewards = rec = _Recording(ctx.labels)
    cfg = SelectorConfig(policy=policy, update_every=4, budget_docs=300, samples_per_category=4,
                         clusters_per_round=3, threshold_mode="quantile")
    sel = build_selector(cfg, ctx)
    sel.initial_selection()
    for step in range(1, 13):
        sel.on_step(step, f"model@{step}")
    refreshes = [(s, m) for kind, s, m in rec.events if kind == "refresh"]
    assert refreshes == [(4, "model@4"), (8, "model@8"), (12, "model@12")]
    seen = None
    for kind, s, _ in rec.events:
        if kind == "refresh":
            seen = s
        else:  # no reward before the first refresh, each scored at the latest refresh's step
            assert seen is not None and s == seen
    assert {s for kind, s, _ in rec.events if kind == "rewards"} == {4, 8, 12}


@pytest.mark.parametrize("q", [0.2, 0.8])
def test_quad_quantile_threshold_keeps_the_docs_above_that_quantile_of_their_round(q):
    ctx = make_ctx(4000)
    ctx.rewards = rec = _Recording(ctx.labels)
    cfg = SelectorConfig(policy="quad", update_every=5, budget_docs=200, samples_per_category=8,
                         clusters_per_round=4, threshold_mode="quantile", threshold_quantile=q)
    sel = build_selector(cfg, ctx)
    sel.initial_selection()
    assert sel.on_step(5, None)
    rounds = [payload for kind, _, payload in rec.events if kind == "rewards"]
    chosen = set(sel.selection().tolist())
    assert len(rounds) > 2 and len(chosen) == 200
    for i, (docs, r) in enumerate(rounds):  # a stage draws no doc twice, so each selected doc has one round
        above = set(docs[r > np.quantile(r, q)].tolist())
        if i < len(rounds) - 1:
            assert chosen & set(docs.tolist()) == above, i
        else:  # the last round is cut at the budget
            assert chosen & set(docs.tolist()) <= above


@pytest.mark.parametrize("count", ["docs", "rounds"])
def test_quad_bandit_state_sums_each_rounds_rewards_by_its_count(count):
    """Eq. 2 through the selector: from the rounds the reward source saw, R_i and n_i recomputed by hand."""
    ctx = make_ctx(4000)
    ctx.rewards = rec = _Recording(ctx.labels)
    cfg = SelectorConfig(policy="quad", update_every=5, budget_docs=300, clusters_per_round=3,
                         threshold_mode="quantile", ucb_count=count)
    sel = build_selector(cfg, ctx)
    sel.initial_selection()
    assert sel.on_step(5, None)
    sums, counts = np.zeros(20), np.zeros(20, dtype=np.int64)
    rounds = [payload for kind, _, payload in rec.events if kind == "rewards"]
    assert len(rounds) > 2
    for docs, r in rounds:
        arm = ctx.labels.codes["cluster"][docs]
        for a in np.unique(arm):
            sums[a] += r[arm == a].mean() if count == "rounds" else r[arm == a].sum()
            counts[a] += 1 if count == "rounds" else (arm == a).sum()
    np.testing.assert_allclose(sel.bandit.sums, sums, rtol=1e-12, atol=1e-18)
    assert sel.bandit.counts.tolist() == counts.tolist()


def test_quad_absolute_threshold_is_strict():
    """Quad keeps a sampled doc only if its influence is *higher* than the threshold: equal is left out."""

    class Fixed(FakeRewards):
        def rewards(self, doc_ids):
            return np.where(np.asarray(doc_ids) % 2 == 0, 0.5, 0.75)

    ctx = make_ctx(2000)
    ctx.rewards = Fixed(ctx.labels)
    sel = build_selector(SelectorConfig(policy="quad", budget_docs=100, threshold=0.5, update_every=1), ctx)
    sel.initial_selection()
    assert sel.on_step(1, None)
    ids = sel.selection()
    assert len(ids) == 100 and (ids % 2 == 1).all()


def test_a_checkpoint_from_before_ucb_count_resumes_only_under_its_default():
    ctx = make_ctx(2000)
    ctx.rewards = FakeRewards(ctx.labels)
    cfg = SelectorConfig(policy="quad", budget_docs=100, threshold_mode="quantile")
    state = build_selector(cfg, ctx).state_dict()
    del state["settings"]["ucb_count"]  # what a run written before the setting existed saved
    build_selector(cfg, ctx).check_state(state)
    with pytest.raises(SettingsMismatchError, match="ucb_count"):
        build_selector(dataclasses.replace(cfg, ucb_count="rounds"), ctx).check_state(state)


def test_multi_agent_without_a_label_column_names_the_labeler_to_run():
    from thresher.agents.base import Labels

    ctx = make_ctx(500)
    ctx.labels = Labels({k: v for k, v in ctx.labels.codes.items() if k != "topic"},
                        {k: v for k, v in ctx.labels.categories.items() if k != "topic"})
    ctx.rewards = FakeRewards(ctx.labels)
    with pytest.raises(ThresherError, match=r"has no \['topic'\] column .*topic_zeroshot.*selector.agents"):
        build_selector(SelectorConfig(policy="multi-agent", budget_tokens=5000), ctx)
    sel = build_selector(SelectorConfig(policy="multi-agent", budget_tokens=5000, agents=["domain", "quality"]), ctx)
    assert len(sel.initial_selection()) > 0


@pytest.mark.parametrize("policy", ["multi-agent", "quad", "static-mixture"])
def test_resume_with_relabelled_columns_is_refused(policy, tmp_path):
    """A checkpoint records the digest of the labels and lengths its cell index was built from: a resume over
    a column relabelled in place (thresher label --replace) or a re-ingested store is refused; the same labels
    (also through the cache folder instead of memory) resume."""
    from thresher.agents.base import Labels

    base = dict(policy=policy, update_every=3, budget_docs=400, samples_per_category=8, clusters_per_round=3,
                threshold_mode="quantile")
    sel, _, _ = _run(SelectorConfig(**base), 6)
    state = sel.state_dict()
    same = make_ctx(4000)
    same.cell_cache = str(tmp_path)
    _run(SelectorConfig(**base), 9, ctx=same, state=state, start=6)
    column = "domain" if policy == "static-mixture" else sel.index.columns[0]
    ctx = make_ctx(4000)
    codes = dict(ctx.labels.codes)
    codes[column] = codes[column].copy()
    codes[column][:50] = (codes[column][:50] + 1) % len(ctx.labels.categories[column])  # 50 docs relabelled
    ctx.labels = Labels(codes, ctx.labels.categories)
    with pytest.raises(SettingsMismatchError, match="cannot resume: the labels of .* changed since this checkpoint"):
        _run(SelectorConfig(**base), 9, ctx=ctx, state=state, start=6)
    lengths = make_ctx(4000)
    lengths.doc_lengths = lengths.doc_lengths.copy()
    lengths.doc_lengths[0] += 1
    with pytest.raises(SettingsMismatchError, match="or the documents' lengths changed"):
        _run(SelectorConfig(**base), 9, ctx=lengths, state=state, start=6)


def test_a_long_quad_stage_shows_progress_in_a_log_file(monkeypatch):
    """A Quad stage is many short scoring calls, each below a phase bar's delay: its own bar fills with D_k, so a log
    file gets a line while a long stage runs (the refresh interval shrunk from 30 s to 0.05 s here), and the
    selection is the same with or without the bar."""
    import io
    import sys
    import time

    from thresher.utils import log as log_module

    cfg = SelectorConfig(policy="quad", update_every=2, budget_docs=300, threshold=0.0, clusters_per_round=2)
    monkeypatch.setenv("THRESHER_NO_PROGRESS", "1")
    quiet, _, _ = _run(cfg, 2, ctx=make_ctx(6000, seed=5))

    class Slow(FakeRewards):
        def task_rewards(self, doc_ids):
            time.sleep(0.02)
            return super().task_rewards(doc_ids)

    out = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.delenv("THRESHER_NO_PROGRESS")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(log_module, "NON_TTY_REFRESH_S", 0.05)
    ctx = make_ctx(6000, seed=5)
    ctx.rewards = Slow(ctx.labels)
    sel = build_selector(cfg, ctx)
    sel.initial_selection()
    assert sel.on_step(2, None)
    assert "quad: fill D_k (step 2)" in out.getvalue() and "/300" in out.getvalue()
    np.testing.assert_array_equal(sel.selection(), quiet.selection())
