"""Pass 4 of `pipeline dedup`: group equal (or, with a radius, nearby) hash codes, and choose
the member of each group that is kept.

Equal codes are found with one sort of the codes, never by comparing all pairs. With
`radius > 0`, codes within that Hamming distance of a group's *anchor* join it (see
`group_codes` for the rule that prevents chaining).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def group_codes(codes: np.ndarray, radius: int = 0) -> np.ndarray:
    """A group id per image (-1 for images alone in their group), never comparing all pairs.

    Equal codes always share a group (one sort of the codes, np.unique). With `radius > 0` the
    distinct codes are visited from the most frequent down (ties: first seen); each code not yet
    placed becomes an *anchor* and takes every unplaced code within `radius` bits **of the
    anchor**.
    Members of a group are thus within 2 * radius of each other: near duplicates cannot chain
    into one giant group through long paths of one-bit steps, the failure union-find has. The
    neighbours come from a faiss multi-index hash (`radius + 1` exact-match substrings: by
    pigeonhole every code within `radius` shares one with the query), so the candidates checked
    grow with the number of images, not its square.
    """
    n = len(codes)
    if n == 0:
        return np.zeros(0, np.int64)
    distinct, first, inverse, counts = np.unique(
        codes, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if radius > 0 and len(distinct) > 1:
        code_group = _anchor_groups(distinct, first, counts, radius)
    else:
        code_group = np.arange(len(distinct))
    group = code_group[inverse]
    multi = np.bincount(group, minlength=len(distinct))[group] > 1
    # Renumber so group ids follow first appearance in the input (deterministic and readable).
    ids, first_row = np.unique(group[multi], return_index=True)
    renumber = np.full(len(distinct), -1, np.int64)
    renumber[ids[np.argsort(first_row)]] = np.arange(len(ids))
    return np.where(multi, renumber[group], -1)


def _anchor_groups(distinct: np.ndarray, first: np.ndarray, counts: np.ndarray,
                   radius: int) -> np.ndarray:
    lims, neighbours = hamming_neighbours(distinct, radius)
    code_group = np.full(len(distinct), -1, np.int64)
    for anchor in np.lexsort((first, -counts)):
        if code_group[anchor] >= 0:
            continue
        near = neighbours[lims[anchor] : lims[anchor + 1]]
        near = near[code_group[near] < 0]
        code_group[near] = anchor
        code_group[anchor] = anchor
    return code_group


def hamming_neighbours(codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """For each code, the indices of all codes within `radius` bits (itself included), CSR-style.

    faiss' binary range search counts distances strictly below its argument, hence radius + 1.
    On a GPU faiss, a brute-force GpuIndexBinaryFlat k-NN is used instead (fast there).
    """
    import faiss

    bits = codes.shape[1] * 8
    if faiss.get_num_gpus() > 0:
        return _gpu_neighbours(codes, radius)
    nhash = radius + 1
    if bits // nhash < 8:
        raise ValueError(f"radius {radius} is too large for {bits}-bit codes")
    index = faiss.IndexBinaryMultiHash(bits, nhash, min(64, bits // nhash))
    index.add(np.ascontiguousarray(codes))
    lims, _, labels = index.range_search(np.ascontiguousarray(codes), radius + 1)
    return lims, labels


def _gpu_neighbours(codes: np.ndarray, radius: int, k: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """k nearest codes by brute force on the GPU, cut at `radius` (a code with more than k
    neighbours that close is already in a large group through its anchor)."""
    import faiss

    index = faiss.GpuIndexBinaryFlat(faiss.StandardGpuResources(), codes.shape[1] * 8)
    index.add(np.ascontiguousarray(codes))
    dist, labels = index.search(np.ascontiguousarray(codes), min(k, len(codes)))
    keep = (dist <= radius) & (labels >= 0)
    return np.concatenate([[0], np.cumsum(keep.sum(axis=1))]), labels[keep]


def keep_order(pixels: np.ndarray) -> np.ndarray:
    """Rank images for keeping: within a group the one with the most pixels (the original, not a
    downscaled re-upload) is kept; ties go to the first in source order."""
    rows = np.arange(len(pixels))
    rank = np.empty(len(pixels), np.int64)
    rank[np.lexsort((rows, -pixels))] = rows
    return rank


@dataclass
class Groups:
    ids: np.ndarray  # group id per row, -1 alone
    kept: np.ndarray  # row kept for each group id
    count: int


def resolve_groups(group: np.ndarray, pixels: np.ndarray) -> Groups:
    """The kept row of every group, by `keep_order`."""
    count = int(group.max()) + 1 if len(group) else 0
    kept = np.full(count, -1, np.int64)
    rows = np.flatnonzero(group >= 0)
    rank = keep_order(pixels)
    ordered = rows[np.lexsort((rank[rows], group[rows]))]  # by group, best rank first
    first = np.r_[True, group[ordered][1:] != group[ordered][:-1]] if len(ordered) else []
    kept[group[ordered[first]]] = ordered[first]
    return Groups(group, kept, count)
