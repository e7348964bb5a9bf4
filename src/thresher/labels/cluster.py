"""k-means clusters of the embeddings (Quad 4.1: 10,000 clusters of bge-large embeddings).

A two-pass step after embedding: train faiss k-means on a seeded sample, then assign every document
to its nearest centroid in chunks (memory-mapped embeddings never load whole). Rows without an
embedding (NaN) get cluster -1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from thresher.utils.errors import ThresherError
from thresher.utils.log import progress
from thresher.utils.seeding import derive_seed, rng


class KMeansClusterer:
    name = "cluster"
    column = "cluster"

    def __init__(self, k: int = 10_000, sample_size: int = 1_000_000, niter: int = 20, seed: int = 0,
                 spherical: bool = True, chunk: int = 65_536):
        if not 1 <= k <= np.iinfo(np.int16).max:
            raise ThresherError(f"k-means k must be in [1, 32767] (int16 codes), got {k}")
        self.k, self.sample_size, self.niter, self.seed = k, sample_size, niter, seed
        self.spherical, self.chunk = spherical, chunk

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "sample_size": self.sample_size, "niter": self.niter, "seed": self.seed,
                "spherical": self.spherical}

    def provenance(self, embed_provenance: dict | None = None) -> dict[str, Any]:
        return {"labeler": type(self).__name__, "name": self.name, "settings": self.settings(),
                "embedding": embed_provenance}

    def train(self, emb: np.ndarray) -> np.ndarray:
        """(k, d) float32 centroids from a sample of the valid rows of ``emb`` (N, d)."""
        import faiss

        valid = np.flatnonzero(~np.isnan(emb[:, 0]))
        if len(valid) < self.k:
            raise ThresherError(f"k-means needs at least k={self.k} embedded docs, got {len(valid)}")
        take = np.sort(rng(self.seed, "kmeans-sample").permutation(valid)[: self.sample_size])
        x = np.ascontiguousarray(emb[take], dtype=np.float32)
        km = faiss.Kmeans(x.shape[1], self.k, niter=self.niter, seed=derive_seed(self.seed, "kmeans") % (2**31),
                          spherical=self.spherical, max_points_per_centroid=max(256, len(x) // self.k + 1))
        km.train(x)
        return np.asarray(km.centroids, dtype=np.float32)

    def assign(self, emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """(N,) int16 nearest-centroid (L2) ids; -1 for NaN rows."""
        import faiss

        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(centroids)
        out = np.full(len(emb), -1, dtype=np.int16)
        for s in progress(range(0, len(emb), self.chunk), desc="k-means assign", unit="chunk"):
            x = np.asarray(emb[s : s + self.chunk], dtype=np.float32)
            ok = ~np.isnan(x[:, 0])
            if ok.any():
                out[s : s + len(x)][ok] = index.search(np.ascontiguousarray(x[ok]), 1)[1][:, 0]
        return out

    def categories(self) -> list[str]:
        return [str(i) for i in range(self.k)]
