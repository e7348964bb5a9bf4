"""EK-FAC rewards against kronfluence on the same tiny model, data and (absolute) damping.

kronfluence conventions matched here: the per-sample loss is the SUM of token NLLs (doc_loss="sum"),
the Fisher is the empirical one (use_empirical_fisher=True), damping is added to the EK-FAC eigenvalue
correction Lambda (damping_factor, absolute), each Linear is its own block (grouping="independent").
Its pairwise scores are g_query^T (EK-FAC + d)^-1 g_train per (query, train) pair; our task reward uses
the mean query gradient, i.e. the mean over query rows.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import influence_ref as R
from thresher.corpus.batching import pad_docs, pad_examples
from thresher.influence import InfluenceConfig, InfluenceScorer

kronfluence = pytest.importorskip("kronfluence")
from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.task import Task  # noqa: E402

DAMPING = 1e-3
T = 24


class SumNLLTask(Task):
    def _loss(self, batch, model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )

    def compute_train_loss(self, batch, model, sample=False):
        assert not sample
        return self._loss(batch, model)

    def compute_measurement(self, batch, model):
        return self._loss(batch, model)

    def get_influence_tracked_modules(self):
        return self.names

    def get_attention_mask(self, batch):
        return batch["attention_mask"]


class Rows(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def _pad_to(batch, t):
    out = {}
    for k, v in batch.items():
        fill = -100 if k == "labels" else 0
        out[k] = F.pad(v, (0, t - v.shape[1]), value=fill)
    return out


def test_ekfac_matches_kronfluence(tmp_path):
    model = R.tiny_llama(hidden=16, heads=2, inter=32)
    fit = R.random_docs(16, seed=3, hi=T) + R.pattern_docs(8, seed=4)
    docs = R.random_docs(10, seed=0, hi=T) + R.pattern_docs(6)
    task = R.reference_tasks()["lambada"]
    cfg = InfluenceConfig(projection="none", grouping="independent", preconditioner="ekfac", damping=DAMPING,
                          damping_mode="absolute", doc_loss="sum", batch_size=8)
    ours = InfluenceScorer(model, {"lambada": task}, cfg, fit_docs=fit)
    ours.refresh(model)
    got = ours.score_docs(docs)

    kmodel = copy.deepcopy(model)
    ktask = SumNLLTask()
    ktask.names = [n for b in ours.feats.blocks for n in b.module_names]
    kmodel = prepare_model(kmodel, ktask)
    an = Analyzer("thresher", kmodel, ktask, output_dir=str(tmp_path), disable_tqdm=True, disable_model_save=True)
    f64 = torch.float64
    fargs = FactorArguments(strategy="ekfac", use_empirical_fisher=True, activation_covariance_dtype=f64,
                            gradient_covariance_dtype=f64, eigendecomposition_dtype=f64, per_sample_gradient_dtype=f64,
                            lambda_dtype=f64)
    an.fit_all_factors("f", Rows(_pad_to(pad_docs(fit, T), T)), per_device_batch_size=8, factor_args=fargs)
    sargs = ScoreArguments(damping_factor=DAMPING, per_sample_gradient_dtype=f64, precondition_dtype=f64, score_dtype=f64)
    an.compute_pairwise_scores("s", "f", Rows(_pad_to(pad_examples(task.examples(), T), T)), Rows(_pad_to(pad_docs(docs, T), T)),
                               per_device_query_batch_size=8, per_device_train_batch_size=8, score_args=sargs)
    want = an.load_pairwise_scores("s")["all_modules"].mean(0).numpy()
    assert np.corrcoef(got, want)[0, 1] >= 0.99
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
