"""Pass 4 of `pipeline dedup`: candidate pairs from the hash codes, groups without chaining, and
the member of each group that is kept.

Two ways to group, both linear in the number of images (never all pairs):
- `group_codes`, the paper's: equal codes (one sort), and with `radius > 0` codes within that
  Hamming distance of a group's *anchor* code;
- `candidate_pairs` + `group_pairs`, with verification: codes within a generous radius propose
  a bounded number of candidate pairs per image, pipeline.dedup.verify keeps the pairs whose whole
  pictures match, and groups form around anchor images from those pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from core.faiss_build import import_faiss

NEAREST_CODES = 16  # a code's candidate codes: at most this many, nearest first, mutually
IMAGES_PER_CODE = 4  # images of one code that stand for it as candidates (the first ones)
PAIR_CHUNK = 1 << 16  # images whose candidate pairs are produced at a time (bounded memory)
SUBSTRING_BITS = 16  # shortest exact-match substring of the code search (see hamming_neighbours)
QUERY_CHUNK = 1024  # codes whose neighbourhoods are searched at a time (nearest_neighbours)


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
    """For each code, the indices of codes within `radius` bits (itself included), CSR-style,
    each list in increasing index order.

    A code is found when it shares one of the query's `nhash` substrings exactly and is within
    `radius` bits. With radius + 1 substrings every code within the radius shares one
    (pigeonhole), so up to radius 128 / SUBSTRING_BITS - 1 (7) the search is exact; beyond,
    the substrings stay SUBSTRING_BITS long, so a bucket holds ~N / 2^16 codes and the search
    stays linear up to millions of codes, at the price of missing some codes near the radius.
    Always faiss' CPU multi-index hash, whatever faiss build is installed: a GPU build's
    brute-force search would compare all pairs (N^2) and give other neighbours when capped.
    """
    lims, _, labels = _range_search(_multi_hash(codes, radius), codes, radius)
    owner = np.repeat(np.arange(len(codes)), np.diff(lims))
    return lims, labels[np.lexsort((labels, owner))].astype(np.int64)


def nearest_neighbours(codes: np.ndarray, radius: int,
                       nearest: int) -> tuple[np.ndarray, np.ndarray]:
    """(owner, other) pairs: for each code, its `nearest` closest other codes within `radius`
    bits (ties: lower index), sorted by owner then distance. The same search as
    `hamming_neighbours`, run QUERY_CHUNK codes at a time and capped at once, so memory holds
    one chunk's full neighbourhoods, however many codes crowd within the radius (grey
    pictures' palette codes do)."""
    index = _multi_hash(codes, radius)
    owners, others = [], []
    for start in range(0, len(codes), QUERY_CHUNK):
        queries = np.arange(start, min(start + QUERY_CHUNK, len(codes)))
        lims, bits, labels = _range_search(index, codes[queries], radius)
        owner = np.repeat(queries, np.diff(lims))
        other = labels.astype(np.int64)
        keep = owner != other
        owner, other, bits = owner[keep], other[keep], bits[keep]
        order = np.lexsort((other, bits, owner))
        owner, other = owner[order], other[order]
        first = np.searchsorted(owner, queries)
        ranked = np.arange(len(owner)) - first[owner - start] < nearest
        owners.append(owner[ranked])
        others.append(other[ranked])
    empty = [np.zeros(0, np.int64)]
    return np.concatenate(empty + owners), np.concatenate(empty + others)


def _multi_hash(codes: np.ndarray, radius: int):
    """faiss' CPU multi-index hash over `codes` for searches within `radius` bits."""
    faiss = import_faiss()

    bits = codes.shape[1] * 8
    nhash = min(radius + 1, bits // SUBSTRING_BITS)
    index = faiss.IndexBinaryMultiHash(bits, nhash, bits // nhash if nhash > 1 else 64)
    index.add(np.ascontiguousarray(codes))
    return index


def _range_search(index, queries: np.ndarray,
                  radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lims, distances, labels) of the codes within `radius` bits of each query. faiss'
    binary range search counts distances strictly below its argument, hence radius + 1."""
    lims, distances, labels = index.range_search(np.ascontiguousarray(queries), radius + 1)
    return lims.astype(np.int64), distances, labels


@dataclass
class CodeNeighbours:
    """Which codes are candidates for each other, and which images stand for each code."""

    code_of: np.ndarray  # per image, the index of its distinct code
    lims: np.ndarray  # CSR over distinct codes: the candidate codes of code c, itself first,
    near: np.ndarray  # are near[lims[c] : lims[c + 1]]
    reps: np.ndarray  # the first IMAGES_PER_CODE images of each code, CSR by rep_lims
    rep_lims: np.ndarray

    @cached_property
    def is_rep(self) -> np.ndarray:
        flags = np.zeros(len(self.code_of), bool)
        flags[self.reps] = True
        return flags


def code_neighbours(codes: np.ndarray, radius: int, nearest: int = NEAREST_CODES,
                    per_code: int = IMAGES_PER_CODE) -> CodeNeighbours:
    """The candidate structure: distinct codes within `radius` bits, each keeping its `nearest`
    closest (ties: lower index), and only pairs that both sides keep (so the relation is
    symmetric and no code has more than `nearest` partners, however dense its neighbourhood)."""
    distinct, code_of = np.unique(codes, axis=0, return_inverse=True)
    code_of = code_of.reshape(-1)
    d = len(distinct)
    if radius > 0 and d > 1:
        owner, other = nearest_neighbours(distinct, radius, nearest)
        pair_key = owner * d + other
        mutual = np.isin(pair_key, other * d + owner)
        owner, other = owner[mutual], other[mutual]
    else:
        owner = other = np.zeros(0, np.int64)
    owner = np.concatenate([np.arange(d), owner])  # each code is its own first candidate
    other = np.concatenate([np.arange(d), other])
    order = np.lexsort((other, owner != other, owner))
    near = other[order]
    lims = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=d))])
    by_code = np.lexsort((np.arange(len(code_of)), code_of))
    code_start = np.searchsorted(code_of[by_code], np.arange(d))
    rank = np.empty(len(code_of), np.int64)
    rank[by_code] = np.arange(len(code_of)) - code_start[code_of[by_code]]
    reps = by_code[rank[by_code] < per_code]
    rep_lims = np.concatenate([[0], np.cumsum(np.bincount(code_of[reps], minlength=d))])
    return CodeNeighbours(code_of, lims, near, reps, rep_lims)


def candidate_pairs(proposers: Sequence[tuple[CodeNeighbours, np.ndarray | None]],
                    chunk: int = PAIR_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every candidate pair, as (left, right) image-row arrays with left < right, for `chunk`
    images at a time.

    Each proposer is a candidate structure (`code_neighbours`) and the image each of its codes
    belongs to (None: code k is image k's). dedup has two: the hash codes, with more than one
    code per image (the picture inside a frame, the zoomed-in crop), and the palette codes
    (pipeline.dedup.palette). A code's candidates are the images that stand for its own code
    and for its candidate codes: at most `per_code * (nearest + 1)` per code, so the number of
    pairs grows with N. Pairs never pair an image with itself, and a pair reached through
    several codes or proposers is listed once per chunk, sorted (so verification judges it
    once and reads the thumbnails in order); only one reached from two chunks may come twice.
    """
    located = [_by_owner(nb, owners) for nb, owners in proposers]
    images = max((int(ranked[-1]) + 1 for _, _, _, ranked in located if len(ranked)), default=0)
    span = max(images, 1)  # more than any row: the pair (a, b) is the number a * span + b
    for start in range(0, images, chunk):
        keys = [np.zeros(0, np.int64)]
        for nb, owners, order, ranked in located:
            rows = order[np.searchsorted(ranked, start) : np.searchsorted(ranked, start + chunk)]
            left, right = _code_pairs(nb, rows)
            left, right = owners[left], owners[right]
            keep = left != right
            keys.append(np.minimum(left, right)[keep] * span + np.maximum(left, right)[keep])
        pairs = np.unique(np.concatenate(keys))
        yield pairs // span, pairs % span


def _by_owner(nb: CodeNeighbours, owners: np.ndarray | None,
              ) -> tuple[CodeNeighbours, np.ndarray, np.ndarray, np.ndarray]:
    """The structure, each code's image, the codes in image order, and their images in it."""
    owners = np.arange(len(nb.code_of)) if owners is None else np.asarray(owners, np.int64)
    order = np.argsort(owners, kind="stable")
    return nb, owners, order, owners[order]


def _code_pairs(nb: CodeNeighbours, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs of codes `rows` as pairs of code rows. The relation between codes is
    symmetric, so a pair of two standing-for codes is produced from both sides; it is kept from
    the lower row only."""
    codes = nb.code_of[rows]
    row_of_code, partner_code = _expand(rows, nb.lims[codes], nb.lims[codes + 1], nb.near)
    left, right = _expand(row_of_code, nb.rep_lims[partner_code],
                          nb.rep_lims[partner_code + 1], nb.reps)
    keep = (left != right) & (~nb.is_rep[left] | (left < right))
    return left[keep], right[keep]


def _expand(owners: np.ndarray, starts: np.ndarray, stops: np.ndarray,
            values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each owner k, the pairs (owners[k], values[starts[k]:stops[k]]), flattened."""
    counts = stops - starts
    total = int(counts.sum())
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(owners, counts), values[np.repeat(starts, counts) + offsets]


def group_pairs(n: int, left: np.ndarray, right: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """A group id per image (-1 alone) from verified pairs, without chaining and robust to a
    single wrong link.

    First, groups form around anchors (`take_around_anchors`): images with a verified partner
    are visited from the most partners down (ties: the copy `keep_order` ranks first); each one
    not yet placed becomes an *anchor* and takes every unplaced image verified against **it**,
    so a path of pairwise matches (A~B, B~C, ...) cannot chain unrelated pictures into one
    group. That step alone trusts single links: an anchor visited first takes a look-alike that
    one wrong pair ties to it, even when the look-alike matches the members of its own group.
    So second, every image but the anchors is placed again by vote (`settle`): into the group
    holding most of its verified partners, and only when that is more than half of them. A
    wrong pair then moves nobody whose own group outvotes it, and two groups never merge
    through one pair (an image with one link into each is ambiguous: alone). Last, the images
    left alone form groups among themselves the same way, anchors then vote, in rounds until
    one places nobody (`regroup_leftovers`): two copies that a wrong link pulled apart find
    each other again, but a look-alike left alone is not taken by the first leftover anchor it
    matches once (on the quality set, a rotated copy whose other partners were in its own
    group joined a leftover pair of another tile that way). Group ids follow first appearance
    in the input.
    """
    if len(left) == 0:
        return np.full(n, -1, np.int64)
    ends = np.concatenate([left, right])
    partners = np.concatenate([right, left])
    order = np.argsort(ends, kind="stable")
    ends, partners = ends[order], partners[order]
    degree = np.bincount(ends, minlength=n)
    lims = np.concatenate([[0], np.cumsum(degree)])
    linked = np.flatnonzero(degree)
    visits = linked[np.lexsort((keep_order(pixels)[linked], -degree[linked]))]
    formed = np.full(n, -1, np.int64)
    take_around_anchors(formed, visits, partners, lims)
    group = settle(formed, ends, partners)
    while regroup_leftovers(group, visits, ends, partners, lims):
        pass
    return _renumber(group)


def regroup_leftovers(group: np.ndarray, visits: np.ndarray, ends: np.ndarray,
                      partners: np.ndarray, lims: np.ndarray) -> bool:
    """One round for the images still alone in `group`: anchors take their partners among
    them (`take_around_anchors`), then the new members vote (`settle`) against the groups
    already settled. In place; whether any image found a group (a member voted out may pair
    with another image left alone in the next round)."""
    alone = group < 0
    take_around_anchors(group, visits, partners, lims)
    regrouped = alone & (group >= 0)
    group[regrouped] = settle(np.where(regrouped, group, -1), ends, partners)[regrouped]
    return bool((alone & (group >= 0)).any())


def take_around_anchors(group: np.ndarray, visits: np.ndarray, partners: np.ndarray,
                        lims: np.ndarray) -> None:
    """In `visits` order, each image still unplaced in `group` (-1) that has unplaced partners
    (`partners[lims[i]:lims[i + 1]]`) becomes an anchor and takes them; a group's id is its
    anchor's row. In place."""
    for anchor in visits:
        if group[anchor] >= 0:
            continue
        members = partners[lims[anchor] : lims[anchor + 1]]
        members = members[group[members] < 0]
        if len(members):
            group[members] = anchor
            group[anchor] = anchor


def settle(formed: np.ndarray, ends: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """Place every image again but the anchors, by vote: `formed` holds each image's anchor row
    (-1 unplaced), (`ends`, `partners`) the verified pairs both ways round. An image goes to the
    group holding more than half of its verified partners (a partner elsewhere, or alone, is a
    vote against), when it was also verified against that group's anchor or at least half of
    its other members; else it stays alone, as does an anchor left without members. Votes count
    the groups as formed, so the result does not depend on the order images are settled in."""
    n = len(formed)
    is_anchor = formed == np.arange(n)
    settled = np.where(is_anchor, formed, -1)
    partner_group = formed[partners]
    keep = (partner_group >= 0) & ~is_anchor[ends]
    partner, partner_group = partners[keep], partner_group[keep]
    key, inverse, votes = np.unique(ends[keep] * n + partner_group, return_inverse=True,
                                    return_counts=True)
    image, group = key // n, key % n
    via_anchor = np.bincount(inverse.reshape(-1), weights=partner == partner_group,
                             minlength=len(key)) > 0
    size = np.bincount(formed[formed >= 0], minlength=n)[group] - (formed[image] == group)
    majority = 2 * votes > np.bincount(ends, minlength=n)[image]
    chosen = majority & (via_anchor | (2 * votes >= size))
    settled[image[chosen]] = group[chosen]
    alone = np.bincount(settled[settled >= 0], minlength=n) == 1
    settled[is_anchor & alone[np.maximum(settled, 0)]] = -1
    return settled


def _renumber(group: np.ndarray) -> np.ndarray:
    """Group ids 0, 1, ... in order of first appearance in the input (deterministic and
    readable); a group left with one image is no group (-1)."""
    placed = group >= 0
    placed[placed] = np.bincount(group[placed], minlength=len(group))[group[placed]] > 1
    ids, first_row = np.unique(group[placed], return_index=True)
    renumber = np.full(len(group), -1, np.int64)
    renumber[ids[np.argsort(first_row)]] = np.arange(len(ids))
    return np.where(placed, renumber[np.maximum(group, 0)], -1)


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
