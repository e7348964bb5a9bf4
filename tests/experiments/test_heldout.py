"""Held-out pool documents (data.heldout_*): the same ids for every policy and seed, never selected, their loss
per label value evaluated like the reference loss, and reported per policy."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from thresher.corpus.reference import ReferenceTask
from thresher.evaluate.heldout import heldout_groups, heldout_tasks
from thresher.evaluate.refloss import reference_loss
from thresher.evaluate.report import read_jsonl, write_report
from thresher.experiments.demo import DemoConfig, _gather, run_config
from thresher.experiments.run import build_run, run
from thresher.train.callbacks import Callback
from thresher.utils.errors import ThresherError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = DemoConfig(n_docs=1500, seed=5)
    return cfg, out, _gather(out, cfg)


def _config(world, policy, out, seed=0, **data):
    cfg, base, (w, store, labels) = world
    rc = run_config(cfg, policy, w, store, labels, base)
    rc.out, rc.seed = str(out), seed
    rc.train = dataclasses.replace(rc.train, steps=8, ckpt_every=8, eval_every=4, warmup_steps=2, seed=seed)
    rc.data = dataclasses.replace(rc.data, reference_max_examples=40, influence_fit_docs=16,
                                  **{"heldout_docs": 20, "heldout_tokens": 1500, **data})
    rc.influence = dataclasses.replace(rc.influence, fit_docs_max=16, projection_dim=128, seed=seed)
    rc.selector = dataclasses.replace(rc.selector, update_every=4, samples_per_category=6, budget_tokens=40_000,
                                      quad_stage_tokens=4 * 2048, seed=seed)
    return rc


def test_heldout_ids_are_the_same_for_every_policy_and_seed_and_never_selected(world, tmp_path):
    from thresher.labels.table import LabelTable

    _, _, (_, store_dir, labels_dir) = world
    rc = _config(world, "random", tmp_path)
    table = LabelTable.open(labels_dir)
    from thresher.corpus.store import TokenStore

    store = TokenStore.open(store_dir)
    groups = heldout_groups(rc.data, table, store.lengths, rc.train.eval_max_len)
    codes, names = table.codes("domain"), table.categories("domain")
    assert sorted(groups) == sorted(set(names))  # every domain of the pool
    for name, ids in groups.items():
        assert len(ids) <= 20 and (codes[ids] == names.index(name)).all()  # stratified by the column
        assert np.minimum(store.lengths[ids], rc.train.eval_max_len).sum() <= 1500  # the token cap
    held = np.sort(np.concatenate(list(groups.values())))
    for policy in ("random", "multi-agent", "quad", "static-mixture"):
        for seed in (0, 1):
            _, selector, _, tasks = build_run(_config(world, policy, tmp_path, seed))
            assert np.array_equal(selector.ctx.heldout, held), (policy, seed)
            assert sorted(tasks) == sorted(groups) and all(len(tasks[n]) == len(groups[n]) for n in groups)
            assert not np.isin(selector.initial_selection(), held).any(), (policy, seed)
    other = heldout_groups(dataclasses.replace(rc.data, heldout_seed=1), table, store.lengths, 1024)
    assert not all(np.array_equal(other[n], groups[n]) for n in groups)  # its own seed draws other documents


class _Selections(Callback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, run, metrics):
        self.seen.append(np.asarray(run.selector.selection()).copy())


def test_a_run_never_trains_on_heldout_docs_and_logs_their_loss_per_domain(world, tmp_path):
    """multi-agent+quad re-selects (agents' top-k and the bandit's accepted samples) through the cached cell index;
    no selection holds a held-out document, and the held-out loss is evaluated with the reference loss."""
    rc = _config(world, "multi-agent+quad", tmp_path / "run")
    rc.influence = dataclasses.replace(rc.influence, preconditioner="none")  # cheap rewards: any will do here
    rc.train = dataclasses.replace(rc.train, export=False)
    spy = _Selections()
    summary = run(rc, callbacks=[spy])
    _, selector, _, tasks = build_run(_config(world, "multi-agent+quad", tmp_path / "run"))
    held = selector.ctx.heldout
    assert len(held) and all(not np.isin(s, held).any() for s in spy.seen)
    assert len({s.tobytes() for s in spy.seen}) == 2  # the initial selection and the update at step 4
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if any(k.startswith("heldout_loss/") for k in r)]
    assert [r["step"] for r in rows] == [4, 8]
    assert all(set(r) >= {f"heldout_loss/{n}" for n in tasks} | {f"ref_loss/{t}" for t in rc.data.reference}
               for r in rows)
    assert summary["heldout_losses"] == {k.split("/", 1)[1]: v for k, v in rows[-1].items()
                                         if k.startswith("heldout_loss/")}


def test_selecting_a_heldout_doc_is_refused():
    from thresher.agents.base import Labels, RandomSelector, SelectionContext

    sel = RandomSelector()
    sel.setup(SelectionContext(np.full(10, 5), Labels(), budget_docs=4, heldout=np.array([2, 7])))
    assert not np.isin(sel.initial_selection(), [2, 7]).any()
    with pytest.raises(ThresherError, match="held-out"):
        sel._set_selection(np.array([1, 7]))


class _Store:
    eos_id = 0

    def __init__(self, docs):
        self.docs = docs

    def doc(self, i):
        return self.docs[i]


def test_heldout_loss_equals_a_per_document_float64_loop():
    """Per domain, token-weighted mean NLL over [EOS] + document + [EOS] (scored after the first EOS, cut to the
    window) equals a brute-force loop over documents in float64, for any batch size."""
    from thresher.train.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=50, dtype=torch.float64).eval()
    g = np.random.default_rng(0)
    docs = [g.integers(1, 50, size=n) for n in (3, 17, 1, 40, 9, 64, 25)]  # 64 > window: cut
    groups = {"a": np.array([0, 2, 5]), "b": np.array([1, 3, 4, 6])}
    window = 32
    tasks = heldout_tasks(_Store(docs), groups, window)
    for name, ids in groups.items():
        nll, count = 0.0, 0
        for i in ids:
            seq = torch.tensor(np.concatenate([[0], docs[i], [0]])[:window])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=seq[None]).logits[0].double(), dim=-1)
            nll -= float(logp[torch.arange(len(seq) - 1), seq[1:]].sum())
            count += len(seq) - 1
        for batch in (1, 2, 16):
            assert reference_loss(model, tasks[name], batch, window) == pytest.approx(nll / count, rel=1e-12)


def test_bad_heldout_settings_are_one_line_errors(world, tmp_path):
    from thresher.config import check_run_inputs, run_config_from_dict

    with pytest.raises(ThresherError, match="heldout_docs >= 0"):
        run_config_from_dict({"data": {"heldout_docs": -1}})
    with pytest.raises(ThresherError, match="not a category column") as e:
        check_run_inputs(_config(world, "random", tmp_path, heldout_column="nope"))
    assert "\n" not in str(e.value)


def _fake_run(d: Path, ref: float, held: dict[str, float]) -> Path:
    d.mkdir(parents=True)
    row = {"step": 10, "loss": 5.0, "tokens": 100, "ref_loss/t": ref,
           **{f"heldout_loss/{k}": v for k, v in held.items()}}
    (d / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (d / "summary.json").write_text(json.dumps({"finished": True, "step": 10, "tokens": 100}))
    return d


def test_reports_show_the_heldout_loss_per_domain(tmp_path):
    """A policy that wins on the reference task but loses on a domain: the experiment's table shows it per domain,
    with the paired difference to the baseline; the run report shows the final values."""
    from thresher.experiments.experiment import ExperimentConfig, write_results

    exp = ExperimentConfig(out=str(tmp_path / "exp"), seeds=[0, 1], policies=["random", "greedy"])
    for s in (0, 1):
        _fake_run(tmp_path / f"exp/runs/random/seed{s}", 4.0, {"web": 3.0 + s, "code": 5.0})
        _fake_run(tmp_path / f"exp/runs/greedy/seed{s}", 3.5, {"web": 3.5 + s, "code": 4.8 + 0.1 * s})
    md = write_results(exp).read_text()
    held = md.split("## Held-out pool loss per domain")[1]
    # 95% Student-t intervals over 2 seeds: t(0.975, 1 dof) x sd / sqrt(2) = 12.7062 x sd / 1.4142; web [3, 4]:
    # sd 0.70711 -> 6.353; the mean over domains per seed [4.0, 4.5]: sd 0.35355 -> 3.177; code [5, 5]: 0
    assert "| random | 2 | 100 | 5.000 ± 0.000 | 3.500 ± 6.353 | 4.250 ± 3.177 | - | 0.500 |" in held
    deltas = held.split("Δ vs random")[1]
    # code: -0.2, -0.1 paired (starred: beyond both seed ranges), sd 0.070711 -> 12.7062 x 0.05 = 0.635;
    # web: +0.5 at both seeds, inside the ranges
    assert "| greedy | -0.150 ± 0.635 * | +0.500 ± 0.000 |" in deltas
    numbers = json.loads((tmp_path / "exp" / "results.json").read_text())["heldout_loss"]
    assert numbers["greedy"]["web"]["delta"]["delta_vs_baseline"] == pytest.approx(0.5)
    report = write_report(tmp_path / "rep", {"random": tmp_path / "exp/runs/random/seed0",
                                             "greedy": tmp_path / "exp/runs/greedy/seed0"}).read_text()
    assert "| greedy | 4.8000 | 3.5000 | 4.1500 |" in report.split("held-out pool loss")[1]
