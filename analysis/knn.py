"""Exact k nearest neighbours of a set of queries over a database too big to hold: stream it.

`StreamingKnn` keeps, for every query, the running k best (squared L2) of all database chunks
seen so far; each chunk is searched with faiss's brute-force kernel (BLAS on CPU, `knn_gpu` when
faiss sees a GPU), so memory is queries + one chunk whatever the database size. On a GPU the
queries are uploaded once and stay there: only each database chunk crosses PCIe (re-sending the
queries with every small chunk made the search transfer-bound).

`IvfKnn` is the option for millions of training images when one exact pass is too slow: an
inverted-file index of 8-bit scalar-quantized codes (one byte per dimension, a quarter of the
float vectors) proposes RERANK * k candidates per query, and a second pass over the same
chunks replaces their approximate distances by exact ones, so every reported distance is exact;
only a neighbour the index failed to propose can be missed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.faiss_build import import_faiss

faiss = import_faiss()

QUERY_BLOCK = 8192  # queries searched at once: bounds the distance tile of one chunk
RERANK = 8  # IvfKnn's candidates per query, as a multiple of k, re-ranked exactly


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class StreamingKnn:
    """Exact k-NN; call `add` with consecutive database chunks, then `result`."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = _f32(queries)
        self.k = k
        self.dist = np.full((len(queries), k), np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)
        self.ntotal = 0
        self._gpu_search = _resident_gpu_search(self.queries)

    def _search(self, rows: slice, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu_search is not None:
            return self._gpu_search(rows, xb, k)
        return faiss.knn(self.queries[rows], xb, k)

    def add(self, xb: np.ndarray) -> None:
        xb = _f32(xb)
        kk = min(self.k, len(xb))
        for start in range(0, len(self.queries), QUERY_BLOCK):
            rows = slice(start, start + QUERY_BLOCK)
            d, i = self._search(rows, xb, kk)
            self._merge(rows, d, i + self.ntotal)
        self.ntotal += len(xb)

    def _merge(self, rows: slice, d: np.ndarray, i: np.ndarray) -> None:
        d = np.concatenate([self.dist[rows], d], axis=1)
        i = np.concatenate([self.ids[rows], i], axis=1)
        best = np.argsort(d, axis=1, kind="stable")[:, : self.k]
        self.dist[rows] = np.take_along_axis(d, best, axis=1)
        self.ids[rows] = np.take_along_axis(i, best, axis=1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(L2 distances, database ids), closest first; [nq, k]."""
        if self.ntotal < self.k:
            raise ValueError(f"the database holds {self.ntotal} vectors, fewer than k={self.k}")
        return np.sqrt(np.maximum(self.dist, 0)), self.ids


Search = Callable[[slice, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _resident_gpu_search(queries: np.ndarray) -> Search | None:
    """A k-NN search of `queries[rows]` against a database chunk with the queries uploaded to
    the GPU once, or None unless both faiss and torch see a GPU. faiss's torch bridge lets
    `knn_gpu` read tensors that are already on the GPU."""
    if faiss.get_num_gpus() == 0 or not torch.cuda.is_available():
        return None
    from faiss.contrib import torch_utils  # noqa: F401  (knn_gpu then takes GPU tensors)

    resources = faiss.StandardGpuResources()
    resident = torch.from_numpy(queries).cuda()

    def search(rows: slice, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d, i = faiss.knn_gpu(resources, resident[rows], torch.as_tensor(xb, device="cuda"), k)
        return d.cpu().numpy(), i.cpu().numpy()

    return search


class IvfKnn:
    """Candidates from IVF + 8-bit scalar quantization, exact re-ranking in a second pass.

    Pass 1: `add` every chunk (the first chunk also trains the index, so it should be a fair
    sample: at least a few thousand vectors). Then `propose()`. Pass 2: `rerank` the same chunks
    in the same order. Then `result`.
    """

    def __init__(self, queries: np.ndarray, k: int, nlist: int = 1024, nprobe: int = 32):
        self.queries = _f32(queries)
        self.k, self.nlist, self.nprobe = k, nlist, nprobe
        self.index: faiss.Index | None = None
        self.candidates: np.ndarray | None = None
        self.exact: np.ndarray | None = None
        self._offset = 0

    def _train(self, xb: np.ndarray) -> faiss.Index:
        d = xb.shape[1]
        nlist = max(1, min(self.nlist, len(xb) // 39))
        index = faiss.index_factory(d, f"IVF{nlist},SQ8")
        index.train(xb)
        index.nprobe = min(self.nprobe, nlist)
        return index

    def add(self, xb: np.ndarray) -> None:
        xb = _f32(xb)
        if self.index is None:
            self.index = self._train(xb)
        self.index.add(xb)

    def propose(self) -> None:
        if self.index is None or self.index.ntotal < self.k:
            raise ValueError(f"the database holds fewer than k={self.k} vectors")
        _, self.candidates = self.index.search(self.queries, self.k * RERANK)
        self.exact = np.full(self.candidates.shape, np.inf, np.float32)
        self._offset = 0

    def rerank(self, xb: np.ndarray, pair_block: int = 65536) -> None:
        xb = _f32(xb)
        lo, hi = self._offset, self._offset + len(xb)
        q, c = np.nonzero((self.candidates >= lo) & (self.candidates < hi))
        for s in range(0, len(q), pair_block):
            qs, cs = q[s : s + pair_block], c[s : s + pair_block]
            diff = self.queries[qs] - xb[self.candidates[qs, cs] - lo]
            self.exact[qs, cs] = np.einsum("ij,ij->i", diff, diff)
        self._offset = hi

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(exact L2 distances, database ids) of the best re-ranked candidates, closest first."""
        best = np.argsort(self.exact, axis=1, kind="stable")[:, : self.k]
        dist = np.take_along_axis(self.exact, best, axis=1)
        return np.sqrt(np.maximum(dist, 0)), np.take_along_axis(self.candidates, best, axis=1)
