"""The k-NN step of `analysis memorization` against a blocked numpy matmul search, same vectors,
same run.

Both stream the same database chunks and keep a running top-k per query; the baseline computes
|q|^2 - 2 q.b + |b|^2 with one BLAS matmul per chunk and np.argpartition, which is what one
writes without faiss. The default shape is the issue's: 100k training images x 3072 (32x32x3
pixels). Results must agree (same neighbours, same distances) or the run fails.

    python benchmarks/bench_knn.py [--database 100000] [--queries 1000] [--dim 3072] [--k 5]
"""

from __future__ import annotations

import time

import click
import numpy as np

from analysis.knn import StreamingKnn


def numpy_knn(queries: np.ndarray, database: np.ndarray, k: int,
              chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocked exact search: squared L2 by matmul, per-chunk top-k, merged."""
    q_norm = (queries.astype(np.float64) ** 2).sum(1, dtype=np.float64)[:, None]
    best_d = np.full((len(queries), k), np.inf)
    best_i = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(database), chunk):
        block = database[start : start + chunk]
        d = q_norm - 2.0 * (queries @ block.T) + (block.astype(np.float64) ** 2).sum(1)[None]
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        d = np.concatenate([best_d, np.take_along_axis(d, part, 1)], 1)
        i = np.concatenate([best_i, part + start], 1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return np.sqrt(np.maximum(best_d, 0)), best_i


def faiss_knn(queries: np.ndarray, database: np.ndarray, k: int,
              chunk: int) -> tuple[np.ndarray, np.ndarray]:
    knn = StreamingKnn(queries, k)
    for start in range(0, len(database), chunk):
        knn.add(database[start : start + chunk])
    return knn.result()


@click.command()
@click.option("--database", default=100_000, show_default=True, help="Training vectors.")
@click.option("--queries", default=1000, show_default=True,
              help="Generated + held-out vectors searched.")
@click.option("--dim", default=3072, show_default=True, help="32x32x3 pixels.")
@click.option("--k", default=5, show_default=True)
@click.option("--chunk", default=16_384, show_default=True, help="Database vectors per chunk.")
@click.option("--seed", default=0, show_default=True)
def main(database: int, queries: int, dim: int, k: int, chunk: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Pixel-like vectors in [-1, 1]; queries near database points so neighbours are distinct.
    xb = rng.random((database, dim), dtype=np.float32) * 2 - 1
    xq = xb[rng.integers(0, database, queries)] + rng.normal(0, 0.3, (queries, dim)).astype(
        np.float32)
    timings, results = {}, {}
    for name, search in (("numpy matmul (baseline)", numpy_knn), ("faiss StreamingKnn", faiss_knn)):
        start = time.perf_counter()
        results[name] = search(xq, xb, k, chunk)
        timings[name] = time.perf_counter() - start
        click.echo(f"{name:24s} {timings[name]:7.2f} s  {database / timings[name]:10.0f} "
                   f"database images/s  {queries / timings[name]:8.1f} queries/s")
    (d0, i0), (d1, i1) = results.values()
    agree = float((i0 == i1).mean())
    if agree < 0.999 or not np.allclose(d0, d1, rtol=1e-3, atol=1e-2):
        raise SystemExit(f"results differ: {agree:.4f} of neighbour ids agree")
    ratio = timings["numpy matmul (baseline)"] / timings["faiss StreamingKnn"]
    click.echo(f"{queries} queries x {database} x {dim}, k={k}: faiss is {ratio:.2f}x the "
               f"numpy baseline; neighbours agree ({agree:.4f})")


if __name__ == "__main__":
    main()
