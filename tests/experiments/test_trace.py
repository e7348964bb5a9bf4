"""`thresher trace` on a tiny multi-agent+quad run: per stage, whether a document was in D_k (its saved
selection), its labels, and the Eq. 7 score, theta and weights that chose D_k; bad input is one line."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from run_helpers import cli_run as _main, tiny_demo_run

from thresher.agents.select import gumbel_inclusion
from thresher.corpus.store import TokenStore
from thresher.evaluate.report import read_jsonl
from thresher.evaluate.trace import PROVENANCE, render, trace
from thresher.experiments.run import run
from thresher.labels.table import LabelTable
from thresher.utils.io import atomic_write_jsonl


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory.mktemp("trace"), "multi-agent+quad", n_docs=1500, seed=0,
                         reference_max_examples=60)


@pytest.fixture(scope="module")
def reuse_run(tiny_run):
    """The same tiny run under selector.reuse_penalty: at step 12 the docs of D_0 rank reuse_penalty lower."""
    out, rc = tiny_run
    rc = dataclasses.replace(rc, out=str(out.parent / "reuse"),
                             selector=dataclasses.replace(rc.selector, reuse_penalty=0.05))
    run(rc)
    return Path(rc.out), rc


def test_the_traced_scores_are_those_that_selected_each_stage(tiny_run):
    """Every stage's traced selection is its saved D_k; at every update D_k is the top of the traced Eq. 7 scores
    (top-k: no document left out scores above one selected); labels and reward provenance are the run's."""
    out, rc = tiny_run
    table = LabelTable.open(rc.data.labels)
    traces = trace(out, list(range(table.n_docs)))
    log = read_jsonl(out / "selector_log.jsonl")
    assert [s["step"] for s in traces[0]["stages"]] == [e["step"] for e in log] == [0, 12]
    for k, e in enumerate(log):
        selected = np.array([t["stages"][k]["selected"] for t in traces])
        np.testing.assert_array_equal(np.flatnonzero(selected), np.sort(np.load(out / e["selection_file"])))
        if k == 0:
            assert traces[0]["stages"][0]["initial"] == "random"
            continue
        score = np.array([t["stages"][k]["score"] for t in traces])
        assert score[selected].min() >= score[~selected].max()
        assert all(t["stages"][k]["cut"] == pytest.approx(score[selected].min(), rel=1e-12) for t in traces)
        assert all(t["stages"][k]["rewards"] == {key: e["rewards"][key] for key in PROVENANCE if key in e["rewards"]}
                   for t in traces)
        assert e["rewards"]["step"] == e["step"] and e["rewards"]["tasks"] == sorted(rc.data.reference)
        assert list(traces[0]["stages"][k]["theta"]) == ["quality", "domain", "topic", "bandit"]
    for col in ("domain", "topic"):
        names, codes = table.categories(col), table.codes(col)
        assert [t["labels"][col] for t in traces[:50]] == [names[c] for c in codes[:50]]


def test_the_command_prints_text_or_json(tiny_run, monkeypatch, capsys):
    out, _ = tiny_run
    code, text, _ = _main(monkeypatch, capsys, "trace", out, 3, 7)
    lines = text.splitlines()
    assert code == 0 and len(lines) == 2 * 3  # per doc: its labels, then a line per stage
    assert lines[0].startswith("doc 3: quality=") and lines[3].startswith("doc 7: ")
    assert "initial stage: random" in lines[1] and "rewards: model step 12" in lines[2]
    assert f"D_k's lowest {trace(out, [3])[0]['stages'][1]['cut']:.4g})" in lines[2]
    code, text, _ = _main(monkeypatch, capsys, "trace", out, 3, 7, "--json")
    assert code == 0 and json.loads(text) == trace(out, [3, 7])


def test_quad_stages_say_whether_the_documents_cluster_was_played(tiny_run, tmp_path):
    out, rc = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    cluster = LabelTable.open(rc.data.labels).codes("cluster")
    played = int(cluster[5])
    other = int(np.flatnonzero(cluster != played)[0])
    np.save(copy / "selections" / "q.npy", np.array([5, 9], dtype=np.int32))
    np.save(copy / "selections" / "q0.npy", np.array([5, 7], dtype=np.int32))
    atomic_write_jsonl(copy / "selector_log.jsonl", [
        {"step": 0, "policy": "quad", "selected": 2, "initial": "random", "selection_file": "selections/q0.npy"},
        {"step": 12, "policy": "quad", "selected": 2, "arms": {"played": [played], "n": [3], "reward_sum": [0.1]},
         "rewards": {"step": 12, "tasks": ["a"], "settings": {}}, "selection_file": "selections/q.npy"}])
    traced = trace(copy, [5, other])
    assert traced[0]["stages"][0] == {"step": 0, "selected": True, "initial": "random"}
    assert "initial stage: random" in render(traced).splitlines()[1]
    stages = [t["stages"][1] for t in traced]
    assert stages == [{"step": 12, "selected": True, "arm_played": True, "rewards": {"step": 12, "tasks": ["a"]}},
                      {"step": 12, "selected": other == 9, "arm_played": False, "rewards": {"step": 12, "tasks": ["a"]}}]


def test_bad_input_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    out, rc = tiny_run
    unsaved = tmp_path / "unsaved"
    shutil.copytree(out, unsaved)
    log = read_jsonl(out / "selector_log.jsonl")
    atomic_write_jsonl(unsaved / "selector_log.jsonl", [{k: v for k, v in e.items() if k != "selection_file"}
                                                        for e in log])
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    np.save(cut / log[1]["selection_file"], np.load(out / log[1]["selection_file"])[:-1])
    swapped = tmp_path / "swapped"  # same length, other ids: only --verify notices
    shutil.copytree(out, swapped)
    np.save(swapped / log[1]["selection_file"], np.load(out / log[1]["selection_file"])[::-1].copy())
    assert trace(swapped, [3]) == trace(out, [3])
    n = LabelTable.open(rc.data.labels).n_docs
    for args, message in (([swapped, 3, "--verify"], f"{swapped / log[1]['selection_file']} does not hash to"),([tmp_path, 3], f"{tmp_path} is not a run folder"),
                          ([out, n], f"doc ids [{n}] are not in the pool (0 .. {n - 1})"),
                          ([unsaved, 3], f"{unsaved} saved no selections"),
                          ([cut, 3], f"{cut / log[1]['selection_file']} holds {log[1]['selected'] - 1} doc ids"),
                          ([out, 3, "--labels", tmp_path / "nowhere"], f"no label table at {tmp_path / 'nowhere'}")):
        code, _, err = _main(monkeypatch, capsys, "trace", *args)
        assert code == 2 and err.startswith(f"error: {message}") and len(err.splitlines()) == 1


def test_the_reuse_penalty_is_traced_as_the_ranking_used_it(reuse_run, monkeypatch, capsys):
    """With selector.reuse_penalty, a stage's D_k is the top of S - p for the docs of an earlier D_k (here D_0), not
    of S: the trace says which docs were reused, their penalised score, and the cut on penalised scores."""
    out, rc = reuse_run
    traces = trace(out, list(range(LabelTable.open(rc.data.labels).n_docs)))
    log = read_jsonl(out / "selector_log.jsonl")
    d0 = np.load(out / log[0]["selection_file"])
    stage = [t["stages"][1] for t in traces]
    reused = np.array([s["reused"] for s in stage])
    np.testing.assert_array_equal(np.flatnonzero(reused), np.sort(d0))
    assert "reused" not in traces[0]["stages"][0]  # D_0: nothing trained before
    score = np.array([s["score"] for s in stage])
    penalised = np.array([s["penalised"] for s in stage])
    np.testing.assert_allclose(penalised, score - 0.05 * reused, rtol=0, atol=1e-12)
    selected = np.array([s["selected"] for s in stage])
    assert penalised[selected].min() >= penalised[~selected].max()
    assert score[selected].min() < score[~selected].max()  # the penalty changed the ranking: S alone does not explain it
    assert stage[0]["cut"] == pytest.approx(penalised[selected].min(), rel=1e-12)
    doc = int(d0[0])
    code, text, _ = _main(monkeypatch, capsys, "trace", out, doc)
    assert code == 0 and f"trained before: S - p {stage[doc]['penalised']:.4g}" in text.splitlines()[2]


@pytest.fixture(scope="module")
def heldout_run(tiny_run):
    """The same tiny run holding 30 documents per domain out of its pool (data.heldout_docs)."""
    out, rc = tiny_run
    rc = dataclasses.replace(rc, out=str(out.parent / "heldout"), data=dataclasses.replace(rc.data, heldout_docs=30))
    run(rc)
    return Path(rc.out), rc


def test_held_out_documents_are_named_as_such(heldout_run, tmp_path, monkeypatch, capsys):
    """A document the run held out for evaluation scores like any other but no stage could select it: the trace
    says so (a '-' beside a score above D_k's cut read as a selection bug); D_k is still the top of the scores of
    the documents that were selectable."""
    from thresher.corpus.store import TokenStore
    from thresher.evaluate.heldout import heldout_groups

    out, rc = heldout_run
    table = LabelTable.open(rc.data.labels)
    groups = heldout_groups(rc.data, table, TokenStore.open(rc.data.store).lengths, rc.train.eval_max_len)
    held = np.concatenate(list(groups.values()))
    traces = trace(out, list(range(table.n_docs)))
    flags = np.array([t["heldout"] for t in traces])
    np.testing.assert_array_equal(np.flatnonzero(flags), np.sort(held))
    selected = np.array([t["stages"][1]["selected"] for t in traces])
    score = np.array([t["stages"][1]["score"] for t in traces])
    assert not selected[flags].any()
    assert score[selected].min() >= score[~selected & ~flags].max()

    doc = int(held[0])
    code, text, _ = _main(monkeypatch, capsys, "trace", out, doc)
    lines = text.splitlines()
    assert code == 0 and lines[0].endswith("(held out for evaluation: no stage could select it)")
    assert all(line.split()[2:4] == ["held", "out"] for line in lines[1:])
    moved = tmp_path / "run"
    shutil.copytree(out, moved)
    (moved / "config.toml").write_text((out / "config.toml").read_text().replace(str(rc.data.store), "nowhere"))
    code, _, err = _main(monkeypatch, capsys, "trace", moved, doc)
    assert code == 2 and err.startswith("error: no token store at nowhere") and len(err.splitlines()) == 1
    code, text, _ = _main(monkeypatch, capsys, "trace", moved, doc, "--store", rc.data.store)
    assert code == 0 and text.splitlines() == lines


def test_a_run_without_held_out_documents_traces_no_heldout_flag(tiny_run):
    out, _ = tiny_run
    assert "heldout" not in trace(out, [3])[0]


def test_a_gumbel_selection_is_traced_as_a_draw(tiny_run, monkeypatch, capsys):
    """Under selector.selection = "gumbel" D_k is drawn by S / tau + Gumbel noise: a selected document may score below
    one left out, and the trace says so instead of presenting D_k's lowest S as a threshold."""
    out, rc = tiny_run
    rc = dataclasses.replace(rc, out=str(out.parent / "gumbel"),
                             selector=dataclasses.replace(rc.selector, selection="gumbel", temperature=0.5))
    run(rc)
    gumbel = Path(rc.out)
    traces = trace(gumbel, list(range(LabelTable.open(rc.data.labels).n_docs)))
    stage = [t["stages"][1] for t in traces]
    score, selected = np.array([s["score"] for s in stage]), np.array([s["selected"] for s in stage])
    assert score[selected].min() < score[~selected].max()  # a draw: S alone does not order D_k
    assert all(s["gumbel_temperature"] == 0.5 for s in stage)
    # the chance of being drawn: rises with S, one value per S, and over the pool adds up to D_k's size
    p = np.array([s["inclusion_probability"] for s in stage])
    order = np.argsort(score, kind="stable")
    assert np.all((0 <= p) & (p <= 1)) and np.all(np.diff(p[order]) >= -1e-12) and p.max() - p.min() > 0.1
    assert all(len(set(p[score == v])) == 1 for v in np.unique(score))
    assert p[selected].mean() > p[~selected].mean()
    lengths = TokenStore.open(rc.data.store).lengths
    chosen = np.load(gumbel / read_jsonl(gumbel / "selector_log.jsonl")[1]["selection_file"])
    assert rc.selector.budget_tokens is not None
    assert (p * lengths).sum() == pytest.approx(lengths[chosen].sum(), rel=1e-6)
    values, inverse = np.unique(score, return_inverse=True)  # from each traced S, the pool's draw at D_k's tokens
    want = gumbel_inclusion(values, np.bincount(inverse, lengths), 0.5, lengths[chosen].sum())[inverse]
    np.testing.assert_allclose(p, want, rtol=1e-9, atol=1e-12)
    assert "gumbel_temperature" not in traces[0]["stages"][0]  # D_0: a uniform draw, not scored
    assert all("gumbel_temperature" not in s for t in trace(out, [0, 1]) for s in t["stages"])  # top-k: none
    capsys.readouterr()  # the run's own output
    code, text, _ = _main(monkeypatch, capsys, "trace", gumbel, 0)
    assert code == 0 and "Gumbel-top-k at tau 0.5: a draw" in text.splitlines()[2]
    assert f"in D_k with p {p[0]:.3g}" in text.splitlines()[2]


def test_a_gumbel_run_gives_held_out_documents_no_chance(heldout_run):
    """Under gumbel with held-out documents, the race runs over the selectable documents only: a held-out
    document's inclusion probability is 0 whatever its S, and the others' add up to D_k's tokens as the draw
    over the pool without the held-out documents gives them."""
    out, rc = heldout_run
    rc = dataclasses.replace(rc, out=str(out.parent / "gumbel-heldout"),
                             selector=dataclasses.replace(rc.selector, selection="gumbel", temperature=0.5))
    run(rc)
    traces = trace(rc.out, list(range(LabelTable.open(rc.data.labels).n_docs)))
    held = np.array([t["heldout"] for t in traces])
    stage = [t["stages"][1] for t in traces]
    score, selected = np.array([s["score"] for s in stage]), np.array([s["selected"] for s in stage])
    p = np.array([s["inclusion_probability"] for s in stage])
    assert held.sum() > 0 and not selected[held].any()
    assert np.all(p[held] == 0) and score[held].max() > score[~held].min()  # some held-out S would have had a chance
    lengths = TokenStore.open(rc.data.store).lengths
    chosen = np.load(Path(rc.out) / read_jsonl(Path(rc.out) / "selector_log.jsonl")[1]["selection_file"])
    assert (p * lengths).sum() == pytest.approx(lengths[chosen].sum(), rel=1e-6)
    values, inverse = np.unique(score[~held], return_inverse=True)
    want = gumbel_inclusion(values, np.bincount(inverse, lengths[~held]), 0.5, lengths[chosen].sum())[inverse]
    np.testing.assert_allclose(p[~held], want, rtol=1e-9, atol=1e-12)
