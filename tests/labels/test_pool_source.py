"""The pool adapter on the shared data (skips cleanly when /work/shared/data is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("THRESHER_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "pool").exists(), reason="shared pool data not available")
def test_pool_source_domains(tmp_path):
    import pyarrow.parquet as pq

    from thresher.labels import ParquetSource, run_labelers
    from thresher.labels.domain import DOMAINS, DomainLabeler

    src = ParquetSource(SHARED / "pool", per_file_limit=3)
    files = sorted((SHARED / "pool").rglob("*.parquet"))
    assert src.n_docs == 3 * len(files)
    first = pq.read_table(files[0]).slice(0, 3)
    assert src.texts(np.arange(3)) == first.column("text").to_pylist()
    table = run_labelers(src, [DomainLabeler()], tmp_path / "t", shard_size=8)
    want = [DOMAINS.index(d) for f in files for d in pq.read_table(f, columns=["domain"]).column("domain").to_pylist()[:3]]
    assert np.asarray(table.codes("domain")).tolist() == want
