"""State, settings, errors and the RewardSource wrapper."""

import numpy as np
import pytest
import torch

import influence_ref as R
from thresher.influence import (InfluenceConfig, InfluenceRewards, InfluenceScorer, load_scores, mix_scores,
                                save_scores)
from thresher.utils.errors import SettingsMismatchError, ThresherError

FIT = R.random_docs(8, seed=3)
DOCS = R.random_docs(5, seed=4)


@pytest.fixture(scope="module")
def model():
    return R.tiny_llama()


def _scorer(model, **kw):
    s = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(batch_size=4, **kw), FIT)
    return s


def test_state_dict_round_trip_gives_same_scores(model):
    a = _scorer(model, preconditioner="kfac")
    a.refresh(model, step=7)
    b = _scorer(model, preconditioner="kfac")
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.score_docs(DOCS), a.score_docs(DOCS))
    assert b.provenance()["step"] == 7
    c = _scorer(model, preconditioner="kfac", seed=1)
    with pytest.raises(SettingsMismatchError):
        c.load_state_dict(a.state_dict())


def test_saved_scores_refuse_other_settings(model, tmp_path):
    a, b = _scorer(model, preconditioner="none"), _scorer(model, preconditioner="none", damping=0.5)
    a.refresh(model)
    sa = a.score_docs(DOCS)
    save_scores(tmp_path / "a.npz", sa, a.settings())
    got, settings = load_scores(tmp_path / "a.npz", expect_settings=a.settings())
    np.testing.assert_array_equal(got, sa)
    with pytest.raises(SettingsMismatchError, match="damping"):
        load_scores(tmp_path / "a.npz", expect_settings=b.settings())
    with pytest.raises(SettingsMismatchError):
        mix_scores([(sa, a.settings()), (sa, b.settings())])
    assert len(mix_scores([(sa, settings), (sa, a.settings())])) == 2 * len(DOCS)


def test_errors_are_thresher_errors(model):
    with pytest.raises(ThresherError, match="refresh"):
        _scorer(model, preconditioner="none").score_docs(DOCS)
    with pytest.raises(ThresherError, match="preconditioner"):
        InfluenceConfig(preconditioner="lissa")
    with pytest.raises(ThresherError, match="fit_docs"):
        InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(preconditioner="ekfac"), None)
    with pytest.raises(ThresherError, match="no nn.Linear"):
        InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(modules=["nothing_here"], preconditioner="none"))


def test_non_finite_factor_names_the_block():
    model = R.tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    s = _scorer(model, preconditioner="ekfac")
    with pytest.raises(ThresherError, match=r"block model\.layers\.\d\..* is not finite"):
        s.refresh(model)


def test_scoring_leaves_model_untouched(model):
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    s = _scorer(model, preconditioner="ekfac")
    s.refresh(model)
    s.score_docs(DOCS)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    model.eval()


class Store:
    def __init__(self, docs):
        self._docs = docs

    def docs(self, ids):
        return [self._docs[i] for i in ids]


def test_influence_rewards_wraps_scorer(model):
    s = _scorer(model, preconditioner="none")
    src = InfluenceRewards(s, Store(DOCS))
    src.refresh(model, step=3)
    ids = np.array([4, 0, 2])
    np.testing.assert_allclose(src.rewards(ids), s.score_docs([DOCS[i] for i in ids]), rtol=1e-12)
    assert src.rewards(np.array([], dtype=int)).shape == (0,)
    prov = src.provenance()
    assert prov["step"] == 3 and prov["tasks"] == ["lambada", "squad"] and prov["settings"]["preconditioner"] == "none"


def test_influence_rewards_checkpoint_only_reused_factors():
    """A selector's checkpoint holds the scorer's factors only when later refreshes reuse them; restored,
    the next refresh reuses them exactly as the uninterrupted source does."""
    model = R.tiny_llama()  # moved below: not the shared fixture
    plain = InfluenceRewards(_scorer(model, preconditioner="ekfac"), Store(DOCS))
    plain.refresh(model, step=1)
    assert plain.state_dict() == {}

    a = InfluenceRewards(_scorer(model, preconditioner="ekfac", factor_refresh_every=2), Store(DOCS))
    a.refresh(model, step=1)
    state = a.state_dict()
    assert set(state) == {"scorer"} and "ref_raw" not in state["scorer"]
    b = InfluenceRewards(_scorer(model, preconditioner="ekfac", factor_refresh_every=2), Store(DOCS))
    b.load_state_dict(state)
    with torch.no_grad():  # the model moves on; the second refresh reuses the first one's factors
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    a.refresh(model, step=2)
    b.refresh(model, step=2)
    assert not a.scorer.last_refit and not b.scorer.last_refit
    ids = np.arange(len(DOCS))
    np.testing.assert_array_equal(b.rewards(ids), a.rewards(ids))
    c = InfluenceRewards(_scorer(model, preconditioner="ekfac", factor_refresh_every=2), Store(DOCS))
    c.load_state_dict(a.scorer.state_dict())  # a full scorer state (the older checkpoint format) still loads
    np.testing.assert_array_equal(c.rewards(ids), a.rewards(ids))


def test_saved_scores_refuse_another_reference_sample_fit_sample_or_model_step(model, tmp_path):
    """Same settings, other data: the reference examples and the fit documents are part of the settings (by
    digest), and scorer.provenance() adds the model step, so saving it keeps results of two steps apart."""
    from thresher.corpus.reference import ReferenceTask

    tasks = R.reference_tasks()
    other = {n: ReferenceTask(n, t.contexts[::-1], t.continuations[::-1]) if i == 0 else t
             for i, (n, t) in enumerate(sorted(tasks.items()))}  # one task's examples reordered
    a = InfluenceScorer(model, tasks, InfluenceConfig(batch_size=4, preconditioner="kfac"), FIT)
    b = InfluenceScorer(model, other, InfluenceConfig(batch_size=4, preconditioner="kfac"), FIT)
    c = InfluenceScorer(model, tasks, InfluenceConfig(batch_size=4, preconditioner="kfac"), R.random_docs(8, seed=9))
    with pytest.raises(SettingsMismatchError, match=r"reference_sha1"):
        mix_scores([(np.zeros(2), a.settings()), (np.zeros(2), b.settings())])
    with pytest.raises(SettingsMismatchError, match=r"fit_sha1"):
        mix_scores([(np.zeros(2), a.settings()), (np.zeros(2), c.settings())])
    none = InfluenceScorer(model, tasks, InfluenceConfig(batch_size=4, preconditioner="none"), R.random_docs(8, seed=9))
    assert "fit_sha1" not in none.settings()  # no factors: the fit documents change nothing
    a.refresh(model, step=7)
    sa = a.score_docs(DOCS)
    save_scores(tmp_path / "a.npz", sa, a.provenance())
    load_scores(tmp_path / "a.npz", expect_settings=a.provenance())
    a.refresh(model, step=8)
    with pytest.raises(SettingsMismatchError, match=r"differs in: factors_step, step\)"):
        load_scores(tmp_path / "a.npz", expect_settings=a.provenance())
    with pytest.raises(SettingsMismatchError, match=r"settings\.damping"):
        mix_scores([(sa, a.provenance()), (sa, {**a.provenance(), "settings": {**a.settings(), "damping": 0.5}})])


def test_settings_saved_before_the_data_digests_still_load(model):
    a = _scorer(model, preconditioner="kfac")
    a.refresh(model, step=3)
    old = {k: v for k, v in a.settings().items() if k not in ("reference_sha1", "fit_sha1")}
    b = _scorer(model, preconditioner="kfac")
    b.load_state_dict({**a.state_dict(), "settings": old})  # unchecked on the data, as before
    np.testing.assert_array_equal(b.score_docs(DOCS), a.score_docs(DOCS))


def test_fit_docs_max_fits_a_seeded_sample_of_the_fit_docs(model):
    """fit_docs_max < len(fit_docs): the factors are those of a scorer given exactly the seeded uniform draw of that
    many docs (not the first ones), and fit_size counts the sample."""
    many = R.random_docs(12, seed=5)

    def scores(fit, seed=0, cap=256):
        s = InfluenceScorer(model, R.reference_tasks(), InfluenceConfig(batch_size=4, preconditioner="kfac", seed=seed,
                                                                        fit_docs_max=cap), fit)
        s.refresh(model)
        return s.score_docs(DOCS), s.fit_size

    got, size = scores(many, cap=5)
    assert size == (5, int(sum(min(len(d), 128) for d in _sampled(many, 5, 0))))
    np.testing.assert_allclose(got, scores(_sampled(many, 5, 0))[0], rtol=1e-6, atol=0)
    assert not np.allclose(got, scores(many[:5])[0], rtol=1e-4)  # not simply the first five
    assert scores(many, cap=12)[1][0] == 12  # a cap at the list's size keeps every doc


def _sampled(docs, k, seed):
    """The documented draw: k of the docs, uniformly without replacement from the seeded stream, in list order."""
    from thresher.utils.seeding import rng

    return [docs[i] for i in np.sort(rng(seed, "influence-fit-docs").choice(len(docs), k, replace=False))]
