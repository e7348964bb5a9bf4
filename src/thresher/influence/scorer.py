"""InfluenceScorer: reward(x) = g_ref^T P^-1 g_x for candidate documents under the current model.

refresh(model): estimate the factors on a seeded sample of training documents, take each reference
task's mean gradient (continuation tokens only) and precondition it once. score(batch): one forward +
one backward to the tracked outputs, then

  reward_mode="exact"     per block U_k = H^-1 g_ref,k (d_out, d_in) in the full space, and a document's
                          reward sum_blocks sum_t delta_t^T U_k a_t, contracted in a tensor hook as the
                          backward produces delta (features.exact_contract): exact, no projection, no
                          per-document gradient; memory one copy of the tracked weights per task.
  reward_mode="features"  a (B, D) @ (D, n_tasks) product of (projected) per-document features.
                          With projection="reference" the projections are rebuilt at every refresh from
                          the full-space P^-1 g_ref (features.reference_subspaces).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from torch import nn

from thresher.corpus.batching import pad_docs, pad_examples
from thresher.corpus.reference import ReferenceTask
from thresher.influence import distributed as hdist
from thresher.influence.config import SPEED_ONLY, InfluenceConfig
from thresher.influence.features import GradientFeatures, reference_subspaces
from thresher.influence.fused import FusedFeatures
from thresher.influence.modules import build_blocks
from thresher.influence.precondition import FactorStats, build_preconditioner
from thresher.influence.results import check_same_settings, token_digest
from thresher.utils.errors import ThresherError
from thresher.utils.log import progress
from thresher.utils.seeding import rng


def full_space_entries(blocks, cfg: InfluenceConfig, n_tasks: int) -> int:
    """Numbers held in the full space by the exact path / projection="reference": per block the factors
    A (d_in^2), G (d_out^2), EK-FAC's Lambda (d_out d_in) and one (d_out, d_in) target per task."""
    n = 0
    for b in blocks:
        n += n_tasks * b.d_in * b.d_out
        if cfg.preconditioner != "none":
            n += b.d_in**2 + b.d_out**2 + (b.d_in * b.d_out if cfg.preconditioner == "ekfac" else 0)
    return n


class InfluenceScorer:
    def __init__(
        self,
        model: nn.Module,
        reference: dict[str, ReferenceTask],
        cfg: InfluenceConfig | None = None,
        fit_docs: list[np.ndarray] | None = None,
    ):
        self.cfg = cfg or InfluenceConfig()
        if not reference or any(len(t) == 0 for t in reference.values()):
            raise ThresherError("influence: need at least one reference task with at least one example")
        missing = set(self.cfg.task_weights) ^ set(reference) if self.cfg.task_weights else set()
        if missing:
            raise ThresherError(f"influence.task_weights must name exactly the reference tasks; differs on {missing}")
        # tasks in name order: rows of saved reference gradients mean the same task whatever the caller's dict order
        self.model, self.reference, self.fit_docs = model, dict(sorted(reference.items())), fit_docs
        if self.cfg.projection == "auto":  # resolved once, so settings() records what ran
            fits = full_space_entries(build_blocks(model, self.cfg), self.cfg, len(reference)) <= self.cfg.full_space_max_entries
            self.cfg = dataclasses.replace(self.cfg, projection="reference" if fits else "orthogonal")
        self.feats = GradientFeatures(model, self.cfg)
        self.fused = (FusedFeatures(self.feats, compile=self.cfg.compile_scoring, seq_multiple=self.cfg.compile_seq_multiple)
                      if self.cfg.scoring_impl == "fused" else None)  # the scoring path; refresh uses feats' hooks
        self.pre = build_preconditioner(self.cfg)
        if self.cfg.factor_reuse == "eigenbasis" and not self.pre.needs_lambda:
            raise ThresherError("influence.factor_reuse = 'eigenbasis' re-estimates EK-FAC's Lambda; it needs preconditioner = 'ekfac'")
        if self.pre.needs_factors and not fit_docs:
            raise ThresherError(f"influence: preconditioner {self.cfg.preconditioner!r} needs fit_docs")
        self.ref_pre: torch.Tensor | None = None  # (n_tasks, D) preconditioned reference gradients
        self.ref_raw: torch.Tensor | None = None  # (n_tasks, D)
        self.ref_exact: list[list[torch.Tensor]] | None = None  # per block, per member (n_tasks, d_out_m, d_in)
        self.step: int | None = None
        self.refreshes = 0  # refreshes done; factors are refit when refreshes % factor_refresh_every == 0
        self.last_refit = False  # whether the last refresh re-estimated the factors
        self.last_fit_passes = 0  # forward/backward passes over the fit documents in the last refresh
        self.fit_size = (0, 0)  # (documents, tokens) of the fit sample, all ranks together
        self.ref_tokens = 0  # tokens of the reference examples the last refresh passed through (all ranks)
        self.factor_step: int | None = None  # the model step the current factors were fit at
        self.last_lambda = False  # whether the last refresh re-estimated EK-FAC's Lambda
        self.last_lambda_kept = False  # ... from per-document gradients kept in the factor pass
        self.lambda_step: int | None = None  # the model step EK-FAC's Lambda was estimated at
        self._whiteners: list | None = None  # of the current factors (full space), computed once per refit
        # what the rewards are computed from besides the settings: each reference task's examples and the fit
        # documents (factors only); in settings(), so results of another reference sample or fit sample are refused
        self.data_digests = {"reference_sha1": {n: token_digest(c for pair in t.examples() for c in pair)
                                                for n, t in self.reference.items()},
                             **({"fit_sha1": token_digest(fit_docs)} if self.pre.needs_factors else {})}

    # ---- refresh ----------------------------------------------------------------------------
    def refresh(self, model: nn.Module | None = None, step: int | None = None) -> None:
        """Re-estimate what rewards depend on under the current model (``step`` goes into provenance): the
        (E)K-FAC factors at every factor_refresh_every-th refresh (_refresh_factors), then the reference
        gradients, preconditioned, and for projection="reference" their subspaces (_refresh_reference)."""
        if model is not None and model is not self.model:
            self.feats.attach(model)
            self.model = model
        full = self._full_space_refresh()
        self.feats.set_whitening(None)
        self.ref_pre = self.ref_raw = self.ref_exact = None  # a refresh that fails leaves nothing to score with
        try:
            self._refresh_factors(full, step)
        except BaseException:
            self.pre.state, self._whiteners = {}, None  # and no half-fit factors for a later refresh to reuse
            raise
        self._refresh_reference(full)
        self.step = step
        self.refreshes += 1

    def _refresh_factors(self, full: bool, step: int | None) -> None:
        """Refit the factors (A, G, eigenbases) when due: at every factor_refresh_every-th refresh, and at
        every refresh before model step factor_reuse_from_step (without a step, always). EK-FAC's Lambda is
        refit with them or, under factor_reuse="eigenbasis", alone in the kept eigenbases. As few passes over
        the fit documents as possible: Lambda comes from the per-document gradients kept in the factor pass
        when they hold <= lambda_keep_max_entries numbers, else from a second pass. Records what ran
        (last_refit, last_lambda, last_lambda_kept, last_fit_passes) for provenance and the FLOP count."""
        early = self.cfg.factor_reuse_from_step > 0 and (step is None or step < self.cfg.factor_reuse_from_step)
        self.last_refit = self.pre.needs_factors and (self.refreshes % self.cfg.factor_refresh_every == 0
                                                      or not self.pre.state or early)
        self.last_lambda = self.pre.needs_lambda and (self.last_refit or self.cfg.factor_reuse == "eigenbasis")
        self.last_lambda_kept, self.last_fit_passes = False, 0
        if not (self.last_refit or self.last_lambda):
            return
        names, sample = [b.name for b in self.feats.blocks], self._fit_sample()
        self.last_lambda_kept = self.last_lambda and self._keeps_doc_grads(full, len(sample))
        doc_grads = None
        if self.last_refit or self.last_lambda_kept:  # the factor pass: sums and/or per-document gradients
            stats, doc_grads = self._factor_stats(full, sample, self.last_lambda_kept, sums=self.last_refit)
            self.last_fit_passes += 1
            if self.last_refit:
                self.pre.fit(names, stats, hdist.all_reduce_sum)
                self._whiteners, self.factor_step = None, step
        if self.last_lambda:  # in the eigenbases just fit, or kept from the last refit
            if doc_grads is not None:
                sums = self._lambda_from_doc_grads(doc_grads, full)
            else:
                sums = self._lambda_sums(full, sample)
                self.last_fit_passes += 1
            self.pre.fit_lambda(names, *sums, hdist.all_reduce_sum)
            self.lambda_step = step

    def _refresh_reference(self, full: bool) -> None:
        """The reference gradients under the current model, preconditioned: full-space targets for exact
        rewards; for full-space factors the projected whitened reference (and with projection="reference"
        new subspaces); else projected, then preconditioned in the projected space."""
        self.ref_tokens = 0  # tokens through the reference passes of this refresh (all ranks together)
        refs = [self._reference_gradient(t, project=not full) for t in self.reference.values()]  # per block (n, r, c)
        refs = [torch.stack(parts) for parts in zip(*refs)]
        if self.exact():
            self.ref_exact = self._member_targets(self.pre.apply(refs))
        elif full:  # documents: P W_G g_x W_A P^T (whitened); reference: P R P^T, see _Eigen.whiteners
            white = self.pre.apply_for_whitened(refs) if self.pre.needs_factors else refs
            if self.cfg.projection == "reference":  # P = top singular subspaces of the whitened reference R
                self.feats.set_projections([reference_subspaces(u, ki, ko) for u, (ki, ko) in zip(white, self.feats.dims)])
            self.ref_raw = self._flat(self.feats.project_blocks(refs))
            self.ref_pre = self._flat(self.feats.project_blocks(white))
            if self.pre.needs_factors:
                self.feats.set_whitening(self.whiteners())
        else:
            self.ref_raw = self._flat(refs)
            self.ref_pre = self._precondition(self.ref_raw)

    def whiteners(self):
        """The preconditioner's whiteners, computed once per set of factors."""
        if self._whiteners is None:
            self._whiteners = self.pre.whiteners()
        return self._whiteners

    def _full_space_refresh(self) -> bool:
        """Whether refresh works on full-space sequences: exact rewards, the reference projection (both
        need P^-1 g_ref in the full space) or full-space (E)K-FAC."""
        return self.exact() or self.cfg.projection == "reference" or self.full_space()

    def full_space(self) -> bool:
        """Whether (E)K-FAC runs in the full space of each block (see InfluenceConfig.precondition_space)."""
        space = self.cfg.precondition_space
        if self.cfg.projection == "reference":
            return self.pre.needs_factors
        if not self.pre.needs_factors or self.cfg.projection == "none" or space == "projected":
            return space == "full" and self.pre.needs_factors
        if space == "full":
            return True
        n = sum(b.d_in**2 + b.d_out**2 + (b.d_in * b.d_out if self.pre.needs_lambda else 0) for b in self.feats.blocks)
        return n <= self.cfg.full_space_max_entries

    def exact(self) -> bool:
        """Whether rewards take the exact path (see InfluenceConfig.reward_mode): under "auto", when the
        full factors and one (d_out, d_in) target per task and block hold <= full_space_max_entries."""
        if self.cfg.reward_mode != "auto":
            return self.cfg.reward_mode == "exact"
        return full_space_entries(self.feats.blocks, self.cfg, len(self.reference)) <= self.cfg.full_space_max_entries

    def linalg_flops(self, fit_tokens: int, fit_docs: int = 0, replicas: int = 1) -> float:
        """Estimated FLOPs of one refresh beyond its forward/backward passes (those are the caller's to
        count): when the last refresh refit the factors, factor sums 2 (c^2 + r^2) per fit token and block,
        EK-FAC's per-document products and rotations (of the kept per-document gradients, ``fit_docs`` of
        them, or of every token's sequences in a second pass) and ~10 n^3 per symmetric
        eigendecomposition; always projection="reference"'s Gram matrices of the smaller side, their
        eigendecompositions and the map back to the larger side; (c, r) = the factor space's block sizes.
        Under torchrun the per-token work is split across the ranks but every rank repeats the
        eigendecompositions and the subspaces: ``replicas`` (the world size) counts those once per rank."""
        exact, reference = self.exact(), self.cfg.projection == "reference"
        k, total = len(self.reference), 0.0
        for (c, r), (k_in, k_out) in zip(self._dims(self._full_space_refresh()), self.feats.dims):
            if self.last_refit:  # implies needs_factors
                total += fit_tokens * 2.0 * (c * c + r * r) + replicas * 10.0 * (c**3 + r**3)
            if self.last_lambda:
                if self.last_lambda_kept:  # per-document gradients kept: (B, r, c) products, then rotated
                    total += fit_tokens * 2.0 * c * r + fit_docs * 2.0 * c * r * (c + r)
                else:  # a second pass rotating every token's sequences
                    total += fit_tokens * 2.0 * (c * c + r * r + c * r)
            if reference and not exact:  # Gram matrices of the smaller side and their eigendecompositions
                for d, n, k_side in ((r, k * c, k_out), (c, k * r, k_in)):
                    m = min(d, n)
                    if k_side < d:  # a side with k >= d is not projected
                        total += replicas * (2.0 * d * n * m + 10.0 * m**3 + (2.0 * d * n * k_side if d > n else 0.0))
        return total

    def _member_targets(self, blocks: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per block (K, d_out, d_in) -> per member (K, d_out_m, d_in), contiguous, on the model's device in
        the feature dtype (float64 for a float64 model, else float32)."""
        p = next(self.model.parameters())
        dt = torch.float64 if p.dtype == torch.float64 else torch.float32
        return [[m.to(device=p.device, dtype=dt).contiguous() for m in u.split(b.d_outs, dim=1)]
                for u, b in zip(blocks, self.feats.blocks)]

    def _fit_sample(self) -> list[np.ndarray]:
        """This rank's share of the seeded fit sample; records the whole sample's size (fit_size)."""
        docs = self.fit_docs or []
        if len(docs) > self.cfg.fit_docs_max:
            idx = np.sort(rng(self.cfg.seed, "influence-fit-docs").choice(len(docs), self.cfg.fit_docs_max, replace=False))
            docs = [docs[i] for i in idx]
        self.fit_size = (len(docs), int(sum(min(len(d), self.cfg.max_len) for d in docs)))
        return hdist.shard(docs)

    def _dims(self, full: bool) -> list[tuple[int, int]]:
        return [(b.d_in, b.d_out) for b in self.feats.blocks] if full else self.feats.dims

    def _factor_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        """Where factor sums and Lambda accumulate: cfg.factor_dtype on the model's device."""
        return (torch.float64 if self.cfg.factor_dtype == "float64" else torch.float32), next(self.model.parameters()).device

    def _keeps_doc_grads(self, full: bool, n_docs: int) -> bool:
        """Whether EK-FAC's Lambda comes from per-document gradients kept from the factor pass (one pass
        over the fit documents) rather than a second pass: when they hold <= lambda_keep_max_entries numbers,
        as the projected space's (n_fit x projection_dim) does at the defaults."""
        return n_docs * sum(c * r for c, r in self._dims(full)) <= self.cfg.lambda_keep_max_entries

    def _factor_stats(self, full: bool, sample: list[np.ndarray], keep_doc_grads: bool = False, sums: bool = True):
        """Per block token sums of a a^T, d d^T over the fit documents (full or projected space; skipped
        without ``sums``), and with ``keep_doc_grads`` per block the documents' gradients
        V_doc = sum_t d_t a_t^T (list of (B, r, c))."""
        fdt, dev = self._factor_dtype_device()
        zeros = lambda *shape: torch.zeros(*shape, dtype=fdt, device=dev)  # noqa: E731
        stats = [FactorStats(zeros(ki, ki), zeros(ko, ko), zeros(())) for ki, ko in self._dims(full)]
        doc_grads = [[] for _ in stats] if keep_doc_grads else None
        for batch, real in progress(self._batches(sample, self.fit_docs), desc="influence factors", unit="batch",
                                    total=self._n_batches(sample), leave=False):
            seqs = self.feats.sequences(self.model, batch, project=not full)
            if not real:  # a pass that only keeps FSDP's collectives in step
                continue
            n_tok = batch["attention_mask"].sum().to(device=dev, dtype=fdt)
            for bi, (st, s) in enumerate(zip(stats, seqs)):
                a, d = s.a.to(fdt), s.delta.to(fdt)
                if sums:
                    st.A += a.flatten(0, 1).T @ a.flatten(0, 1)
                    st.G += d.flatten(0, 1).T @ d.flatten(0, 1)
                    st.n_tokens += n_tok
                if doc_grads is not None:
                    doc_grads[bi].append(torch.bmm(d.transpose(1, 2), a))  # (B, r, c)
        return stats, doc_grads

    def _lambda_from_doc_grads(self, doc_grads: list[list[torch.Tensor]], full: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """EK-FAC's Lambda sums from the kept per-document gradients: sum over docs of (Q_G^T V_doc Q_A)^2."""
        fdt, dev = self._factor_dtype_device()
        sums = [(self.pre.rotate_grads(bi, torch.cat(vs)) ** 2).sum(0) if vs else torch.zeros(r, c, dtype=fdt, device=dev)
                for bi, (vs, (c, r)) in enumerate(zip(doc_grads, self._dims(full)))]
        n = sum(v.shape[0] for v in doc_grads[0]) if doc_grads else 0  # a rank may hold no fit document
        return sums, torch.tensor(float(n), dtype=fdt, device=dev)

    def _lambda_sums(self, full: bool, sample: list[np.ndarray]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """EK-FAC second pass: per block sum over fit documents of (Q_G^T V_doc Q_A)^2, and the count."""
        fdt, dev = self._factor_dtype_device()
        sums = [torch.zeros(ko, ki, dtype=fdt, device=dev) for ki, ko in self._dims(full)]
        n_docs = torch.zeros((), dtype=fdt, device=dev)
        for batch, real in progress(self._batches(sample, self.fit_docs), desc="influence eigenvalues", unit="batch",
                                    total=self._n_batches(sample), leave=False):
            seqs = self.feats.sequences(self.model, batch, project=not full)
            if not real:
                continue
            for bi, s in enumerate(seqs):
                a, d = self.pre.rotate_sequences(bi, s.a.to(fdt), s.delta.to(fdt))
                sums[bi] += (torch.bmm(d.transpose(1, 2), a) ** 2).sum(0)  # (r, c)
            n_docs += batch["input_ids"].shape[0]
        return sums, n_docs

    def _reference_gradient(self, task: ReferenceTask, project: bool) -> list[torch.Tensor]:
        """Per block (r, c) float64 mean over the task's examples of each example's gradient."""
        ex = task.examples()
        if 0 < self.cfg.ref_max_examples < len(ex):  # a seeded uniform sample (multi-agent A.4), the same every refresh
            keep = np.sort(rng(self.cfg.seed, "influence-reference", task.name).choice(len(ex), self.cfg.ref_max_examples, replace=False))
            ex = [ex[i] for i in keep]
        self.ref_tokens += sum(min(len(c) + len(t), self.cfg.max_len) for c, t in ex)
        # under torchrun each rank passes its share of the batches (r, r + W, ...) and the sums are all-reduced
        mine = hdist.shard(list(range(0, len(ex), self.cfg.batch_size)))
        spare = self._spare_passes(len(mine))
        dev = next(self.model.parameters()).device
        total = [torch.zeros(r, c, dtype=torch.float64, device=dev) for c, r in self._dims(not project)]
        for i in progress(mine, desc=f"influence reference {task.name}", unit="batch", leave=False):
            batch = pad_examples(ex[i : i + self.cfg.batch_size], self.cfg.max_len, self.cfg.pad_id)
            seqs = self.feats.sequences(self.model, batch, project=project)
            total = [t + s.delta.flatten(0, 1).double().T @ s.a.flatten(0, 1).double()  # sum over examples
                     for t, s in zip(total, seqs)]
        for _ in range(spare):
            self.feats.sequences(self.model, pad_examples(ex[:1], 8, self.cfg.pad_id), project=project)
        return [hdist.all_reduce_sum(t) / len(ex) for t in total]

    @staticmethod
    def _flat(blocks: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([b.flatten(1) for b in blocks], dim=1)

    def _precondition(self, flat: torch.Tensor) -> torch.Tensor:
        return self._flat(self.pre.apply(self.feats.split(flat)))

    # ---- scoring ----------------------------------------------------------------------------
    def features(self, batch: dict) -> torch.Tensor:
        """(B, D) projected per-document gradients (unpreconditioned)."""
        if self.cfg.projection == "reference" and self.exact() and not self.feats.built:
            raise ThresherError("influence: features() needs projections; exact rewards with projection='reference' "
                                "build none (its subspaces come from the features path): set projection='orthogonal'")
        if batch["input_ids"].shape[0] == 0:
            return torch.zeros(0, self.feats.dim)
        return (self.fused or self.feats).features(self.model, batch)

    def _task_matrix(self, batch: dict) -> torch.Tensor:
        """(B, n_tasks) float64 per-task rewards."""
        if batch["input_ids"].shape[0] == 0:
            if self.ref_exact is None and self.ref_pre is None:
                raise ThresherError("influence: call refresh(model) before scoring")
            return torch.zeros(0, len(self.reference), dtype=torch.float64)
        if self.ref_exact is not None:
            return (self.fused or self.feats).exact_rewards(self.model, batch, self._member_targets_on_device())
        if self.ref_pre is None:
            raise ThresherError("influence: call refresh(model) before scoring")
        f = self.features(batch).double()
        return f @ self.ref_pre.to(f.device).T

    def _member_targets_on_device(self) -> list[list[torch.Tensor]]:
        p = next(self.model.parameters())
        if self.ref_exact[0][0].device != p.device:  # e.g. after load_state_dict: move once, keep one copy
            self.ref_exact = [[m.to(p.device) for m in ms] for ms in self.ref_exact]
        return self.ref_exact

    def _combine(self, per_task: torch.Tensor) -> torch.Tensor:
        names = list(self.reference)
        w = torch.tensor([self.cfg.task_weights.get(n, 1.0) for n in names], dtype=torch.float64, device=per_task.device)
        return per_task @ (w / w.sum())

    def score(self, batch: dict) -> torch.Tensor:
        """(B,) float64 combined rewards; positive = a step on the document lowers the reference loss."""
        return self._combine(self._task_matrix(batch))

    def per_task_scores(self, batch: dict) -> dict[str, torch.Tensor]:
        m = self._task_matrix(batch)
        return {n: m[:, i] for i, n in enumerate(self.reference)}

    def score_docs(self, docs: Sequence[np.ndarray], batch_size: int | None = None, max_len: int | None = None) -> np.ndarray:
        """(N,) float64 combined rewards of token arrays; sharded across ranks under torchrun."""
        return self.combine(self.per_task_score_matrix(docs, batch_size, max_len))

    def combine(self, per_task: np.ndarray) -> np.ndarray:
        """(N,) combined rewards of a (N, n_tasks) ``per_task_score_matrix``: the mean, or the
        ``task_weights`` mean, over tasks (what ``score_docs`` returns)."""
        return self._combine(torch.from_numpy(np.asarray(per_task))).numpy()

    def per_task_score_docs(self, docs, batch_size=None, max_len=None) -> dict[str, np.ndarray]:
        m = self.per_task_score_matrix(docs, batch_size, max_len)
        return {n: m[:, i] for i, n in enumerate(self.reference)}

    def per_task_score_matrix(self, docs, batch_size=None, max_len=None) -> np.ndarray:
        """(N, n_tasks); documents are length-sorted into batches (less padding), results in input order."""
        idx = hdist.shard(list(range(len(docs))))
        out = np.zeros((len(idx), len(self.reference)))
        order = sorted(range(len(idx)), key=lambda j: len(docs[idx[j]]))
        bs = batch_size or self.cfg.batch_size
        spare = self._spare_passes(-(-len(order) // bs))  # agreed before any pass
        for i in progress(range(0, len(order), bs), desc="influence scoring", unit="batch", leave=False):
            js = order[i : i + bs]
            batch = pad_docs([docs[idx[j]] for j in js], max_len or self.cfg.max_len, self.cfg.pad_id)
            out[js] = self._task_matrix(batch).cpu().numpy()
        for _ in range(spare):
            self._task_matrix(self._spare_batch(docs))
        return hdist.gather_rows(idx, out, len(docs))

    def _n_batches(self, docs: list[np.ndarray]) -> int:
        """Batches ``_batches`` yields for this rank's ``docs`` (its own; FSDP's spare passes come on top)."""
        return -(-len(docs) // self.cfg.batch_size)

    def _batches(self, docs: list[np.ndarray], every_doc: Sequence[np.ndarray] | None = None):
        """(batch, True) for this rank's ``docs``, then under FSDP (batch, False) for the spare passes."""
        bs = self.cfg.batch_size
        spare = self._spare_passes(-(-len(docs) // bs))  # agreed before any pass (every rank is here)
        for i in range(0, len(docs), bs):
            yield pad_docs(docs[i : i + bs], self.cfg.max_len, self.cfg.pad_id), True
        for _ in range(spare):
            yield self._spare_batch(every_doc), False

    def _spare_passes(self, n_batches: int) -> int:
        """Passes this rank runs beyond its ``n_batches``: under FSDP as many as the busiest rank has more
        (every pass all-gathers the sharded weights on every rank); 0 otherwise."""
        if not (hdist.active() and hdist.is_fsdp(self.model)):
            return 0
        return hdist.max_count(n_batches, next(self.model.parameters()).device) - n_batches

    def _spare_batch(self, every_doc: Sequence[np.ndarray]) -> dict:
        """A one-document batch (the first 8 tokens of the first of all ranks' documents); results dropped."""
        return pad_docs([np.asarray(every_doc[0])[:8]], self.cfg.max_len, self.cfg.pad_id)

    # ---- settings & state -------------------------------------------------------------------
    def settings(self) -> dict:
        """Everything that changes the numbers (not batch size): config, blocks, projection sizes, tasks."""
        s = self.cfg.to_dict()
        for speed_only in SPEED_ONLY:
            s.pop(speed_only)
        s["blocks"] = [[b.name, ki, ko] for b, (ki, ko) in zip(self.feats.blocks, self.feats.dims)]
        s["full_space"] = self.full_space()
        s["reward_mode"] = "exact" if self.exact() else "features"
        s["tasks"] = {n: len(t) for n, t in self.reference.items()}
        s.update(self.data_digests)
        if s["factor_refresh_every"] == 1:  # the behaviour before the options existed: older states still load
            del s["factor_refresh_every"], s["factor_reuse"], s["factor_reuse_from_step"]
        elif s["factor_reuse_from_step"] == 0:
            del s["factor_reuse_from_step"]
        return s

    def state_dict(self) -> dict:
        return {
            "settings": self.settings(),
            "step": self.step,
            "refreshes": self.refreshes,
            "factor_step": self.factor_step,
            "lambda_step": self.lambda_step,
            "preconditioner": self.pre.state_dict(),
            "ref_raw": None if self.ref_raw is None else self.ref_raw.cpu(),
            "ref_pre": None if self.ref_pre is None else self.ref_pre.cpu(),
            "ref_exact": None if self.ref_exact is None else [[m.cpu() for m in ms] for ms in self.ref_exact],
            "projections": self.feats.raw_projections if self.cfg.projection == "reference" and self.feats.built else None,
        }

    def factor_state_dict(self) -> dict:
        """What a later refresh reuses under factor_refresh_every > 1: the settings, the refresh count and
        the preconditioner (a checkpoint needs no more: every refresh recomputes the reference side)."""
        return {"settings": self.settings(), "refreshes": self.refreshes, "factor_step": self.factor_step,
                "lambda_step": self.lambda_step, "preconditioner": self.pre.state_dict()}

    def load_factor_state_dict(self, state: dict) -> None:
        check_same_settings(state["settings"], self.settings(), "influence factor state")
        self.refreshes, self.factor_step, self.lambda_step = int(state["refreshes"]), state["factor_step"], state["lambda_step"]
        self.pre.load_state_dict(state["preconditioner"])
        self._whiteners = None

    def load_state_dict(self, state: dict) -> None:
        check_same_settings(state["settings"], self.settings(), "influence scorer state")
        self.step = state["step"]
        self.refreshes = int(state.get("refreshes", 1 if state["step"] is not None else 0))
        self.factor_step = state.get("factor_step", state["step"])
        self.lambda_step = state.get("lambda_step", self.factor_step)
        self.pre.load_state_dict(state["preconditioner"])
        self._whiteners = None
        self.ref_raw, self.ref_pre, self.ref_exact = state["ref_raw"], state["ref_pre"], state.get("ref_exact")
        if state.get("projections") is not None:
            self.feats.set_projections(state["projections"])
        self.feats.set_whitening(self.whiteners() if self.full_space() and self.ref_pre is not None else None)

    def provenance(self) -> dict:
        """The model step of the reference gradients (``step``), of the (E)K-FAC factors and eigenbases
        (``factors_step``; earlier under factor_refresh_every > 1, None without factors) and of EK-FAC's
        Lambda (``lambda_step``; None without EK-FAC)."""
        return {"step": self.step, "factors_step": self.factor_step if self.pre.needs_factors else None,
                "lambda_step": self.lambda_step if self.pre.needs_lambda else None,
                "tasks": list(self.reference), "settings": self.settings()}
