"""Packed LM batches drawn from the selector's current selection.

The stream: the selected documents in a seeded permutation (one per selection version and epoch),
each followed by EOS, concatenated and cut into rows of ``seq_len + 1`` tokens (inputs are
``row[:-1]``, targets ``row[1:]``). A document longer than what is left of a row continues at the
start of the next row; no token is dropped or padded.

Rows are planned from ``store.lengths`` alone (no token is read to decide a layout), so every DDP
rank plans the same GLOBAL stream and reads only its own rows: global micro-batch ``k`` is rows
``[k*B*W, (k+1)*B*W)``, rank ``r`` takes ``B`` consecutive rows of it. The rows of one optimizer
step are therefore the same for any world size at equal global batch, and the loader state is the
same on every rank (a checkpoint from rank 0 resumes any world size).

Selection changes: before planning each global micro-batch the loader compares ``selector.version``
with the version it draws from; on a change it starts a fresh permutation of the new selection
(the document in progress is finished first, so no token is lost).

Prefetch: a background thread plans and materialises micro-batches ahead. Each queued batch carries
the packer state after it; on a selection change the queue is discarded and the packer rewound to
the state after the last CONSUMED batch, so the order is identical to the synchronous loader.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from thresher.utils.errors import ThresherError
from thresher.utils.seeding import rng

Piece = tuple[int, int, int]  # (doc id, start, end) in the doc's token range [0, len + 1); len = EOS


@dataclass
class PackerState:
    version: int = -1  # selection version drawn from (-1: none yet)
    epoch: int = 0  # passes completed over this selection
    cursor: int = 0  # next position in this epoch's permutation
    doc: int = -1  # document in progress (-1: none)
    offset: int = 0  # tokens of ``doc`` (+EOS) already packed
    n_selected: int = 0  # size of the selection, checked on resume


class Packer:
    """Cuts the seeded stream of selected documents (+EOS) into rows of ``row_len`` tokens."""

    def __init__(self, lengths: np.ndarray, row_len: int, seed: int = 0):
        self.lengths = np.asarray(lengths)  # the store's own array (int32), shared with the selector: no copy
        if self.lengths.dtype.kind not in "iu":
            raise ThresherError(f"document lengths must be integers, got {self.lengths.dtype}")
        self.row_len, self.seed = int(row_len), int(seed)
        self.state = PackerState()
        self._selection: np.ndarray | None = None
        self._order: np.ndarray | None = None  # selection in this epoch's permuted order

    def set_selection(self, selection: np.ndarray, version: int, restored: bool = False) -> None:
        """Draw from ``selection`` from now on (``restored``: keep epoch/cursor of a loaded state)."""
        sel = np.asarray(selection)
        if sel.dtype.kind not in "iu":
            raise ThresherError(f"selection must hold integer doc ids, got {sel.dtype}")
        if sel.flags.writeable:  # the selector's own arrays are read-only and shared; anything else is copied
            sel = sel.copy()
            sel.flags.writeable = False
        if len(sel) == 0:
            raise ThresherError("the selector selected no documents; nothing to train on")
        if sel.min() < 0 or sel.max() >= len(self.lengths):
            raise ThresherError(f"selection has doc ids outside [0, {len(self.lengths)})")
        if restored and len(sel) != self.state.n_selected:
            raise ThresherError("checkpoint mismatch: the selector's selection is not the one the loader drew from")
        if not restored:
            self.state.version, self.state.epoch, self.state.cursor = int(version), 0, 0
            self.state.n_selected = len(sel)
        self._selection, self._order = sel, None

    def next_row(self) -> list[Piece]:
        st, pieces, need = self.state, [], self.row_len
        while need:
            if st.doc < 0:
                st.doc, st.offset = self._next_doc(), 0
            total = int(self.lengths[st.doc]) + 1
            take = min(need, total - st.offset)
            pieces.append((st.doc, st.offset, st.offset + take))
            st.offset += take
            need -= take
            if st.offset == total:
                st.doc = -1
        return pieces

    def _next_doc(self) -> int:
        st = self.state
        if st.cursor == len(self._selection):
            st.epoch, st.cursor, self._order = st.epoch + 1, 0, None
        if self._order is None:  # = selection[permutation(len)] of this generator, without the int64 permutation
            self._order = self._selection.copy()
            rng(self.seed, "loader", st.version, st.epoch).shuffle(self._order)
        st.cursor += 1
        return int(self._order[st.cursor - 1])

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, state: dict) -> None:
        keep_order = self._selection is not None and state["version"] == self.state.version
        keep_order = keep_order and state["epoch"] == self.state.epoch
        self.state = PackerState(**{k: int(v) for k, v in state.items()})
        if not keep_order:
            self._order = None


class PackedLoader:
    """Micro-batches for one rank: ``{"input_ids": (B, T), "targets": (B, T)[, "position_ids": (B, T)]}``.

    ``store`` is duck-typed: ``.doc(i) -> np.ndarray``, ``.lengths``, ``.n_docs``, ``.eos_id``.
    ``doc_positions``: position_ids restart at 0 at every document piece (for padding-free
    attention kernels that read document boundaries from position_ids, e.g. flash_attention_2).
    """

    def __init__(self, store, selector, seq_len: int, micro_batch: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, prefetch: int = 2, pin_memory: bool = False, doc_positions: bool = False):
        self.store, self.selector = store, selector
        self.B, self.T = int(micro_batch), int(seq_len)
        self.rank, self.world = int(rank), int(world_size)
        self.prefetch, self.pin, self.doc_positions = int(prefetch), pin_memory, doc_positions
        self.packer = Packer(np.asarray(store.lengths), seq_len + 1, seed)
        self._consumed = self.packer.state_dict()
        self._restored = False
        self._q: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None  # a prefetch failure, raised again on every later call

    # --- the one public step -------------------------------------------------------------------
    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._error is not None:
            raise self._error
        self._sync_selection()
        if self.prefetch <= 0:
            batch = self._produce()
            self._consumed = self.packer.state_dict()
            return batch
        if self._thread is None:
            self._start()
        item = self._q.get()
        if isinstance(item, BaseException):  # the worker has stopped
            self._error = item
            raise item
        batch, self._consumed = item
        return batch

    def _sync_selection(self) -> None:
        version = int(self.selector.version)
        if self._restored and version == self._consumed["version"]:
            self.packer.set_selection(self.selector.selection(), version, restored=True)
        elif version != self._consumed["version"]:
            self._halt()
            self.packer.load_state_dict(self._consumed)
            self.packer.set_selection(self.selector.selection(), version)
            self._consumed = self.packer.state_dict()
        self._restored = False

    # --- producing micro-batches -----------------------------------------------------------------
    def _produce(self) -> dict[str, torch.Tensor]:
        rows = [self.packer.next_row() for _ in range(self.B * self.world)]  # the global micro-batch
        mine = rows[self.rank * self.B : (self.rank + 1) * self.B]
        toks = np.stack([self._row_tokens(r) for r in mine])  # (B, T+1)
        t = torch.from_numpy(toks)
        batch = {"input_ids": t[:, :-1], "targets": t[:, 1:]}
        if self.doc_positions:
            pos = np.stack([np.concatenate([np.arange(e - s) for _, s, e in r]) for r in mine])
            batch["position_ids"] = torch.from_numpy(pos[:, :-1])
        batch = {k: v.contiguous() for k, v in batch.items()}
        return {k: v.pin_memory() for k, v in batch.items()} if self.pin else batch

    def _row_tokens(self, pieces: list[Piece]) -> np.ndarray:
        out, pos = np.empty(self.T + 1, dtype=np.int64), 0
        for d, s, e in pieces:
            n = int(self.packer.lengths[d])
            toks = self.store.doc(d)
            if len(toks) != n:
                raise ThresherError(f"token store is inconsistent: doc {d} has {len(toks)} tokens, lengths say {n}")
            part = toks[s : min(e, n)]
            out[pos : pos + len(part)] = part
            pos += len(part)
            if e == n + 1:  # the piece ends with this document's EOS
                out[pos] = self.store.eos_id
                pos += 1
        return out

    # --- background prefetch ----------------------------------------------------------------------
    def _start(self) -> None:
        self._stop.clear()
        self._q = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._work, name="thresher-loader", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                item = (self._produce(), self.packer.state_dict())
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced in the training thread by next_batch
            self._q.put(e)

    def _halt(self) -> None:
        """Stop the worker and drop what it prepared; the packer is rewound by the caller."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread, self._q = None, None

    def close(self) -> None:
        self._halt()

    # --- resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The state after the last batch returned by next_batch (not the prefetcher's)."""
        return dict(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self._halt()
        self.packer.load_state_dict(state)
        self._consumed = self.packer.state_dict()
        self._restored = state["version"] >= 0
