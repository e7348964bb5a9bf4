"""The selector log as a user reads it: every agent update (Eq. 4-5) and theta update (Eq. 8-9) recomputed
by hand from the log alone, per-task rewards kept apart, and the selection's digest for replay checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents_helpers import FakeRewards, make_ctx
from thresher.agents.base import selection_digest
from thresher.agents.config import SelectorConfig
from thresher.agents.policies import build_selector

TASK_WEIGHTS = {"cloze": 3.0, "qa": 1.0}


class TaskRewards(FakeRewards):
    """Two reference tasks: cloze = the fake reward, qa = its negative plus 1e-4; combined by TASK_WEIGHTS
    as InfluenceScorer combines them (a weighted mean)."""

    def task_rewards(self, doc_ids):
        cloze = super().rewards(doc_ids)
        per_task = {"cloze": cloze, "qa": 1e-4 - cloze}
        w = sum(TASK_WEIGHTS.values())
        return sum(TASK_WEIGHTS[t] * r for t, r in per_task.items()) / w, per_task

    def rewards(self, doc_ids):
        return self.task_rewards(doc_ids)[0]


def _run(policy="multi-agent", seed=0, updates=3, source=FakeRewards, **kw):
    ctx = make_ctx(3000, seed=0, budget_docs=400)
    ctx.rewards = source(ctx.labels, seed=0)
    cfg = SelectorConfig(policy=policy, update_every=10, samples_per_category=16, seed=seed,
                         init={"quality": "quality-ascending"}, **kw)
    sel = build_selector(cfg, ctx)
    sel.initial_selection()
    for step in range(10, 10 * updates + 1, 10):
        sel.on_step(step, None)
    return sel, cfg, [json.loads(json.dumps(e)) for e in sel.log]  # as written to selector_log.jsonl


@pytest.mark.parametrize("share", [False, True])
def test_every_update_recomputes_by_hand_from_the_log_alone(share):
    _, cfg, log = _run(share_samples=share, eta_agents={"domain": 0.3})
    first = log[0]
    assert first["step"] == 0
    # the initial weights (Eq. 5 adds to them): a preset here, so not uniform
    w = {a["agent"]: np.array(a["weights"]) for a in first["agents"]}
    np.testing.assert_allclose(w["quality"], np.arange(1, 6) / 15)
    theta = np.array(first["theta"])
    for e in log[1:]:
        r_a = []
        for a in e["agents"]:
            m = np.array([np.nan if x is None else x for x in a["mean_rewards"]])
            ok = ~np.isnan(m)
            w[a["agent"]][ok] += a["eta"] * m[ok]  # Eq. 5, eta from the entry itself
            np.testing.assert_allclose(w[a["agent"]], a["weights"], rtol=0, atol=1e-15)
            r_a.append((w[a["agent"]][ok] * m[ok]).sum() / ok.sum())  # Eq. 8
            assert r_a[-1] == pytest.approx(a["agent_reward"], abs=1e-15)
        assert [a["eta"] for a in e["agents"]] == [cfg.eta_agent, 0.3, cfg.eta_agent]
        theta = theta + cfg.eta_console * (np.array(r_a) - np.mean(r_a))  # Eq. 9
        np.testing.assert_allclose(theta, e["theta"], rtol=0, atol=1e-15)


@pytest.mark.parametrize("share", [False, True])
def test_per_task_means_are_logged_and_combine_by_the_task_weights(share):
    _, _, log = _run(source=TaskRewards, normalization="raw", share_samples=share)
    for e in log[1:]:
        for a in e["agents"]:
            per_task = a["task_mean_rewards"]
            assert sorted(per_task) == ["cloze", "qa"]
            for j, mean in enumerate(a["mean_rewards"]):  # raw rewards: Eq. 4's means are the weighted task means
                if mean is None:
                    assert per_task["cloze"][j] is None
                    continue
                combined = sum(TASK_WEIGHTS[t] * per_task[t][j] for t in per_task) / sum(TASK_WEIGHTS.values())
                assert combined == pytest.approx(mean, rel=1e-12, abs=1e-18)
                assert per_task["qa"][j] == pytest.approx(1e-4 - per_task["cloze"][j], rel=1e-12)


def test_a_source_without_tasks_logs_no_task_means():
    _, _, log = _run()
    assert all("task_mean_rewards" not in a for e in log[1:] for a in e["agents"])


@pytest.mark.parametrize("policy", ["multi-agent", "quad", "multi-agent+quad", "random", "static-mixture"])
def test_the_log_names_each_selection_by_its_digest(policy):
    kw = {"quad_stage_tokens": 0, "threshold_mode": "quantile"} if "quad" in policy else {}
    sel, _, log = _run(policy, **kw)
    assert all("selection_sha1" in e for e in log)
    assert log[-1]["selection_sha1"] == selection_digest(sel.selection())
    again = _run(policy, **kw)[2]
    assert [e["selection_sha1"] for e in again] == [e["selection_sha1"] for e in log]  # a replay: same ids
    other = _run(policy, seed=1, **kw)[2]  # another seed: another first stage
    assert other[0]["selection_sha1"] != log[0]["selection_sha1"]


def test_selection_digest_is_order_and_value_sensitive_but_not_dtype_sensitive():
    ids = np.array([5, 1, 9], dtype=np.int64)
    assert selection_digest(ids) == selection_digest(ids.astype(np.int32))
    assert selection_digest(ids) == selection_digest(ids, chunk=2)
    assert selection_digest(ids) != selection_digest(np.sort(ids))
    assert selection_digest(ids) != selection_digest(np.array([5, 1, 8]))


@pytest.mark.parametrize("unvisited", ["inf", "initial-visit"])
def test_quad_log_holds_the_bandit_increments_thresholds_and_task_means(unvisited):
    """Eq. 2's sums and counts follow from the log's per-stage increments of the arms played; every round's
    threshold is there; per-task raw means of the sampled and the above-threshold docs are kept apart."""
    sel, cfg, log = _run("quad", source=TaskRewards, threshold_mode="quantile", unvisited=unvisited)
    sums, counts = np.zeros(len(sel.bandit.sums)), np.zeros(len(sel.bandit.counts), dtype=np.int64)
    for e in log[1:]:
        arms = e["arms"]
        np.add.at(sums, arms["played"], arms["reward_sum"])
        np.add.at(counts, arms["played"], arms["n"])
        assert len(e["thresholds"]) == e["rounds"] + (unvisited == "initial-visit" and e is log[1])
        assert sum(arms["n"]) == e["sampled"]
        assert sorted(e["task_mean_rewards"]["sampled"]) == ["cloze", "qa"]
        above = e["task_mean_rewards"]["above_threshold"]
        assert above["qa"] == pytest.approx(1e-4 - above["cloze"], rel=1e-9)
    np.testing.assert_array_equal(counts, sel.bandit.counts)
    np.testing.assert_allclose(sums, sel.bandit.sums, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("norm", ["raw", "rank"])
def test_the_console_bandit_logs_its_increments_and_task_means_as_quad_does(norm):
    """multi-agent+quad: the bandit agent's entries hold Eq. 2's increments (summing to its sums and counts) and
    per-task raw means of its sampled docs, as Quad's stages (no threshold: the console selects by score)."""
    sel, cfg, log = _run("multi-agent+quad", source=TaskRewards, bandit_normalization=norm)
    bandit = sel.console.agents[-1].bandit
    sums, counts = np.zeros(len(bandit.sums)), np.zeros(len(bandit.counts), dtype=np.int64)
    for e in log[1:]:
        a = e["agents"][-1]
        assert a["agent"] == "bandit" and "thresholds" not in a
        np.add.at(sums, a["arms"]["played"], a["arms"]["reward_sum"])
        np.add.at(counts, a["arms"]["played"], a["arms"]["n"])
        # its Eq. 7 weights are Eq. 1's CS from the sums and counts so far, an unvisited (or empty) cluster at the
        # highest finite CS; its Eq. 8 reward is mean_j CS_j x Rbar_j over the clusters it sampled this update
        visited = counts > 0
        assert visited.any() and (e is not log[1] or not visited.all())  # the first update leaves some unvisited
        cs = np.full(len(counts), np.nan)
        cs[visited] = sums[visited] / counts[visited] + cfg.alpha * np.sqrt(2 * np.log(counts.sum()) / counts[visited])
        cs[~visited] = cs[visited].max()
        np.testing.assert_allclose(a["weights"], cs, rtol=1e-12, atol=0)
        sampled = [j for j, m in enumerate(a["mean_rewards"]) if m is not None]
        assert len(sampled) > 1
        assert a["agent_reward"] == pytest.approx(np.mean([cs[j] * a["mean_rewards"][j] for j in sampled]), rel=1e-12)
        assert a["arms"]["n"] == [a["n_samples"][j] for j in a["arms"]["played"]]
        means = a["task_mean_rewards"]
        assert list(means) == ["sampled"] and sorted(means["sampled"]) == ["cloze", "qa"]
        assert means["sampled"]["qa"] == pytest.approx(1e-4 - means["sampled"]["cloze"], rel=1e-9)
        if norm == "raw":  # the bandit saw the combined raw rewards: their mean is the task-weighted mean
            combined = sum(TASK_WEIGHTS[t] * m for t, m in means["sampled"].items()) / sum(TASK_WEIGHTS.values())
            assert sum(a["arms"]["reward_sum"]) / sum(a["arms"]["n"]) == pytest.approx(combined, rel=1e-9)
    np.testing.assert_array_equal(counts, bandit.counts)
    np.testing.assert_allclose(sums, bandit.sums, rtol=1e-12, atol=1e-18)
    assert log[0]["agents"][-1] == {"agent": "bandit", "column": "cluster"}
