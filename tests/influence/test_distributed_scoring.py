"""Under torchrun, 2 gloo ranks (fit documents and candidates sharded, factor sums all-reduced, rewards
all-gathered) give every rank the rewards one process computes; also with the model FSDP-sharded, where
the uneven shards (9 and 8 fit documents, 8 and 7 candidates) would hang without spare passes."""

import datetime
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

import influence_ref as R
from thresher.influence import InfluenceConfig, InfluenceScorer

DOCS = R.random_docs(9, seed=5) + R.pattern_docs(6, seed=6)  # odd count: uneven shards
FIT = R.random_docs(11, seed=7) + R.pattern_docs(6, seed=8)


CASES = {"ekfac": {}, "ekfac-second-pass": {"lambda_keep_max_entries": 0}, "exact": {"reward_mode": "exact"}}


def _rewards(case: str = "ekfac", fsdp: bool = False) -> np.ndarray:
    model = R.tiny_llama(hidden=32, heads=4, inter=64)
    if fsdp:  # FSDP2 per decoder layer, as train.fsdp does
        from thresher.train.dist import Dist, wrap_model

        wrap_model(model, Dist(rank=int(os.environ["RANK"]), world=int(os.environ["WORLD_SIZE"])), fsdp=True)
    cfg = InfluenceConfig(preconditioner="ekfac", batch_size=4, **CASES[case])
    s = InfluenceScorer(model, R.reference_tasks(), cfg, FIT)
    s.refresh(model, step=0)
    return s.score_docs(DOCS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      THRESHER_NO_PROGRESS="1")
    torch.set_num_threads(1)
    # a collective one rank never joins (the hang this guards against) fails in 2 minutes, not never
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    np.save(os.path.join(out, f"rank{rank}.npy"), _rewards())
    for case in CASES:
        np.save(os.path.join(out, f"fsdp-{case}-rank{rank}.npy"), _rewards(case, fsdp=True))
    dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    one = _rewards()
    assert np.abs(one).max() > 0
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), one, rtol=1e-8, atol=1e-12 * np.abs(one).max())
    for case in CASES:
        ref = one if case == "ekfac" else _rewards(case)
        for rank in (0, 1):
            got = np.load(tmp_path / f"fsdp-{case}-rank{rank}.npy")
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max(), err_msg=case)
