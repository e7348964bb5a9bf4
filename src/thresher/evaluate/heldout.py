"""Held-out pool documents: a label-stratified sample of the pool that no policy may select, whose loss per
label value (e.g. per domain) the trainer evaluates next to the reference loss (``heldout_loss/<value>``).

The sample depends on the token store, the label table and the ``data.heldout_*`` settings only (its own
seed, not the run's), so every policy and seed of an experiment holds out the same ids and the per-domain
losses compare paired, as DoReMi and RegMix report per-domain validation perplexity.
"""

from __future__ import annotations

import numpy as np

from thresher.corpus.reference import ReferenceTask
from thresher.utils.errors import ThresherError
from thresher.utils.seeding import rng


def heldout_groups(data_cfg, table, lengths: np.ndarray, window: int) -> dict[str, np.ndarray]:
    """Label value -> its held-out doc ids (sorted int64); {} when ``data.heldout_docs`` is 0.

    Per value of the category column ``data.heldout_column``: a uniform draw (``data.heldout_seed``) of
    ``heldout_docs`` of its documents, cut to the prefix of the draw whose evaluated tokens (each document's
    tokens up to the evaluation ``window``) fit ``heldout_tokens``. Documents without a label are never held out."""
    if data_cfg.heldout_docs <= 0:
        return {}
    check_heldout_column(data_cfg, table)
    col = data_cfg.heldout_column
    codes, names = np.asarray(table.codes(col)), table.categories(col)
    lengths = np.asarray(lengths)
    groups = {}
    for v, name in enumerate(names):
        ids = np.flatnonzero(codes == v)
        if not len(ids):
            continue
        g = rng(data_cfg.heldout_seed, "heldout", col, name)
        pick = ids[g.choice(len(ids), size=min(data_cfg.heldout_docs, len(ids)), replace=False)]
        n = int(np.searchsorted(np.cumsum(np.minimum(lengths[pick], window)), data_cfg.heldout_tokens, side="right"))
        if n:
            groups[str(name)] = np.sort(pick[:n]).astype(np.int64)
    if not groups:
        raise ThresherError(f"data.heldout_docs = {data_cfg.heldout_docs}: no document fits data.heldout_tokens = "
                            f"{data_cfg.heldout_tokens} in any value of {col!r}; raise it or set heldout_docs = 0")
    return groups


def check_heldout_column(data_cfg, table) -> None:
    """With held-out documents on, ``data.heldout_column`` must be a category column of the label table."""
    col = data_cfg.heldout_column
    if data_cfg.heldout_docs > 0 and (col not in table.columns or table.kind(col) != "category"):
        kinds = ", ".join(c for c in table.columns if table.kind(c) == "category")
        raise ThresherError(f"data.heldout_column = {col!r} is not a category column of the label table "
                            f"(category columns: {kinds or 'none'}); set it, or data.heldout_docs = 0")


def heldout_tasks(store, groups: dict[str, np.ndarray], window: int) -> dict[str, ReferenceTask]:
    """One ReferenceTask per label value: context EOS, continuation the document and its EOS, as the trainer packs
    it (every token after the EOS is scored, the closing EOS included), cut to the first ``window`` - 1 tokens."""
    eos = np.array([store.eos_id], dtype=np.int64)
    tasks = {}
    for name, ids in groups.items():
        conts = [np.concatenate([np.asarray(store.doc(int(i))[: window - 1], dtype=np.int64), eos])[: window - 1]
                 for i in ids]
        tasks[name] = ReferenceTask(name, [eos] * len(conts), conts)
    return tasks
