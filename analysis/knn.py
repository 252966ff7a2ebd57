"""Exact k nearest neighbours of a set of queries over a database too big to hold: stream it.

`StreamingKnn` keeps, for every query, the running k best (squared L2) of all database chunks
seen so far; each chunk is searched with faiss's brute-force kernel (BLAS on CPU, `knn_gpu` when
faiss sees a GPU), so memory is queries + one chunk whatever the database size. On a GPU the
queries are uploaded once and stay there, each database chunk crosses PCIe once, chunks are
searched DATABASE_BATCH vectors at a time and the running best stay on the GPU (re-sending small
chunks per query block, with a host sync and sort per call, made the search transfer-bound).

`IvfKnn` is the option for millions of training images when one exact pass is too slow: an
inverted-file index of 8-bit scalar-quantized codes (one byte per dimension, a quarter of the
float vectors) proposes RERANK * k candidates per query, and a second pass over the same
chunks replaces their approximate distances by exact ones, so every reported distance is exact;
only a neighbour the index failed to propose can be missed.
"""

from __future__ import annotations

import numpy as np
import torch

from core.faiss_build import import_faiss

faiss = import_faiss()

QUERY_BLOCK = 8192  # queries searched at once: bounds the distance tile of one chunk
DATABASE_BATCH = 65536  # database vectors searched at once on a GPU (chunks gathered up to it)
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
        self._gpu = GpuKnn(self.queries, k) if gpu_search_available() else None

    def add(self, xb: np.ndarray) -> None:
        xb = _f32(xb)
        self.ntotal += len(xb)
        if self._gpu is not None:
            self._gpu.add(xb)
            return
        kk = min(self.k, len(xb))
        for start in range(0, len(self.queries), QUERY_BLOCK):
            rows = slice(start, start + QUERY_BLOCK)
            d, i = faiss.knn(self.queries[rows], xb, kk)
            self._merge(rows, d, i + self.ntotal - len(xb))

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
        if self._gpu is not None:
            self.dist, self.ids = self._gpu.result()
        return np.sqrt(np.maximum(self.dist, 0)), self.ids


def gpu_search_available() -> bool:
    """Both faiss (its GPU build) and torch see a GPU."""
    return (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
            and torch.cuda.is_available())


class GpuKnn:
    """StreamingKnn's search on the GPU: the queries are uploaded once; database chunks are
    uploaded as they come and searched DATABASE_BATCH vectors at a time (one small chunk per
    call left the GPU idle between uploads); the running k best are merged on the GPU and
    copied to the host once, by `result`. faiss's torch bridge lets `knn_gpu` read tensors
    that are already on the GPU."""

    def __init__(self, queries: np.ndarray, k: int):
        from faiss.contrib import torch_utils  # noqa: F401  (knn_gpu then takes GPU tensors)

        self.resources = faiss.StandardGpuResources()
        self.queries = torch.from_numpy(queries).cuda()
        self.k = k
        self.dist = torch.full((len(queries), k), float("inf"), device="cuda")
        self.ids = torch.full((len(queries), k), -1, dtype=torch.int64, device="cuda")
        self.pending: list[torch.Tensor] = []
        self.searched = 0  # database vectors merged so far (the id of the next one)

    def add(self, xb: np.ndarray) -> None:
        self.pending.append(torch.from_numpy(xb).cuda())
        if sum(len(chunk) for chunk in self.pending) >= DATABASE_BATCH:
            self._search_pending()

    def _search_pending(self) -> None:
        if not self.pending:
            return
        xb = torch.cat(self.pending)
        self.pending = []
        kk = min(self.k, len(xb))
        for start in range(0, len(self.queries), QUERY_BLOCK):
            rows = slice(start, start + QUERY_BLOCK)
            d, i = faiss.knn_gpu(self.resources, self.queries[rows], xb, kk)
            d = torch.cat([self.dist[rows], d], dim=1)
            i = torch.cat([self.ids[rows], i + self.searched], dim=1)
            best = torch.sort(d, dim=1, stable=True).indices[:, : self.k]
            self.dist[rows], self.ids[rows] = d.gather(1, best), i.gather(1, best)
        self.searched += len(xb)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(squared L2 distances, database ids) on the host."""
        self._search_pending()
        return self.dist.cpu().numpy(), self.ids.cpu().numpy()


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
