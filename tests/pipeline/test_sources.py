"""Source detection and iteration for every input kind."""

from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing as mp
import os
import pickle
import shutil
import tarfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import webdataset as wds
from hypothesis import given
from hypothesis import strategies as st

from core.samples import image_extension, safe_key
from pipeline import demo
from pipeline.geometry import encode_image
from pipeline.sinks import write_image_shards
from pipeline.sources import (
    FolderSource,
    ListSource,
    LmdbSource,
    MultiSource,
    ReadError,
    Record,
    ShardSource,
    SourceError,
    open_source,
    open_sources,
    read_shards,
)
from pipeline.statuses import TOO_LARGE, UNREADABLE


@pytest.fixture(scope="module")
def small_photo() -> np.ndarray:
    return demo.photo("coffee.png")[::8, ::8].copy()


@pytest.fixture(scope="module")
def png(small_photo) -> bytes:
    return demo.encode(small_photo, "PNG")


def test_folder_is_recursive_sorted_and_ignores_extensions(tmp_path, png):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.jpg").write_bytes(png)  # a PNG named .jpg
    (tmp_path / "a.dat").write_bytes(png)
    (tmp_path / "b" / "notes.txt").write_text("hello")
    source = open_source(tmp_path)
    assert isinstance(source, FolderSource)
    records = list(source)
    assert [r.key for r in records] == ["a.dat", "b/notes.txt", "b/z.jpg"]
    assert source.count() == 3
    assert records[2].read() == png


def test_lmdb_in_lsun_layout_is_detected_from_folder_parent_and_file(tmp_path, png):
    webp = demo.encode(demo.photo("coffee.png")[::8, ::8].copy(), "WEBP")
    keys = [hashlib.sha1(str(i).encode()).hexdigest().encode() for i in range(3)]
    folder = tmp_path / "lsun" / "bedroom_train_lmdb"
    demo.write_lmdb(folder, [(k, webp) for k in keys])
    for spec in (folder, tmp_path / "lsun", folder / "data.mdb"):
        source = open_source(spec)
        assert isinstance(source, LmdbSource), spec
        records = list(source)
        assert [r.key for r in records] == sorted(k.decode() for k in keys)
        assert all(len(r.key) == 40 and r.read() == webp for r in records)
        assert source.count() == 3


def test_parent_with_several_lmdbs_asks_to_choose(tmp_path, png):
    demo.write_lmdb(tmp_path / "a_lmdb", [(b"k", png)])
    demo.write_lmdb(tmp_path / "b_lmdb", [(b"k", png)])
    with pytest.raises(SourceError, match="several LMDB"):
        open_source(tmp_path)


def write_shards(folder, n_shards: int, per_shard: int, rgb: np.ndarray) -> list[str]:
    """`n_shards` shards part-000000.tar, ... of `per_shard` copies of `rgb` each."""
    shards = write_image_shards(folder, [rgb] * (n_shards * per_shard), prefix="part",
                                per_shard=per_shard)
    return [str(folder / s["name"]) for s in shards]


def test_shards_by_path_glob_and_brace_pattern(tmp_path, small_photo):
    names = write_shards(tmp_path / "sh", 3, 2, small_photo)
    assert len(names) == 3
    for spec in (names[0], str(tmp_path / "sh" / "*.tar"),
                 str(tmp_path / "sh" / "part-{000000..000002}.tar")):
        source = open_source(spec)
        assert isinstance(source, ShardSource), spec
    records = list(open_source(str(tmp_path / "sh" / "part-{000000..000002}.tar")))
    assert [r.key for r in records] == [f"{i:06d}" for i in range(6)]
    assert all(r.read() == encode_image(small_photo, "png") for r in records)


def test_missing_shards_in_a_pattern_are_named(tmp_path, small_photo):
    write_shards(tmp_path / "sh", 2, 1, small_photo)
    with pytest.raises(SourceError, match="missing"):
        open_source(str(tmp_path / "sh" / "part-{000000..000004}.tar"))
    with pytest.raises(SourceError, match="matches no shard"):
        open_source(str(tmp_path / "nothing-*.tar"))


def test_text_list_of_paths(tmp_path, png):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "one.png").write_bytes(png)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\nimg/one.png\n\n{tmp_path / 'img' / 'one.png'}\nmissing.png\n")
    source = open_source(listing)
    assert isinstance(source, ListSource)
    records = list(source)
    assert len(records) == 3 and source.count() == 3
    assert records[0].read() == png and records[1].read() == png
    with pytest.raises(ReadError, match="No such file"):
        records[2].read()


# ---- LMDB and shard records are read by the worker, not by the process that lists them ------

def read_elsewhere(records: list[Record]) -> list[bytes]:
    """`Record.read()` of each record in a fresh process, as a worker of a stage reads them."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(Record.read, records))


def bytes_read_by_this_process() -> int:
    """Bytes this process has read through read() calls so far (Linux's /proc accounting)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_lmdb_records_carry_a_key_and_the_worker_reads_the_value(tmp_path):
    values = [bytes([i]) * 50_000 for i in range(6)]
    demo.write_lmdb(tmp_path / "db", [(f"k{i}", v) for i, v in enumerate(values)])
    records = list(open_source(tmp_path / "db"))
    assert [r.key for r in records] == [f"k{i}" for i in range(6)]
    assert all(r.data is None for r in records)
    assert all(len(pickle.dumps(r)) < 1000 for r in records)  # what a task carries
    assert read_elsewhere(records) == values
    assert [r.read() for r in records] == values  # and in the listing process too (1 worker)


def test_shard_records_come_from_the_headers_and_the_worker_reads_the_member(tmp_path):
    images = [os.urandom(1_000_000) for _ in range(8)]
    with tarfile.open(tmp_path / "big.tar", "w") as tar:
        for i, image in enumerate(images):
            for name, data in ((f"{i:03d}.png", image), (f"{i:03d}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    source = open_source(tmp_path / "big.tar")
    before = bytes_read_by_this_process()
    records = list(source)
    assert bytes_read_by_this_process() - before < 100_000  # 8 MB of images, unread
    assert [r.key for r in records] == [f"{i:03d}" for i in range(8)]
    assert all(r.data is None and len(pickle.dumps(r)) < 1000 for r in records)
    assert read_elsewhere(records) == images


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
               ) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type = len(data), kind
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_odd_shard(path, fmt: int = tarfile.GNU_FORMAT) -> None:
    """A shard with what WebDataset readers skip or group in their own way."""
    with tarfile.open(path, "w", format=fmt) as tar:
        add_member(tar, "__meta__", b"m")  # metadata, not a sample
        add_member(tar, "a.PNG", b"a-png")  # suffixes are lower-cased
        add_member(tar, "a.json", b"{}")
        add_member(tar, "b.json", b"{}")  # a sample without an image
        add_member(tar, "folder", kind=tarfile.DIRTYPE)
        add_member(tar, "c.jpg", b"c-jpg")  # png is preferred to jpg
        add_member(tar, "c.png", b"c-png")
        add_member(tar, "no_suffix", b"x")
        add_member(tar, "dir.v/d.x.png", b"d")  # sample "dir.v/d", image member "x.png"
        add_member(tar, "long" * 40 + "/e.png", b"e-long")  # a name over 100 characters
        add_member(tar, "ü/f.webp", b"f-webp")
        add_member(tar, "g.png", b"g" * 5000)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_shard_samples_are_those_every_webdataset_reader_sees(tmp_path, fmt):
    write_odd_shard(tmp_path / "odd.tar", fmt)
    records = list(open_source(tmp_path / "odd.tar"))
    samples = list(read_shards([str(tmp_path / "odd.tar")]))
    assert [r.key for r in records] == [s["__key__"] for s in samples]
    for rec, sample in zip(records, samples, strict=True):
        extension = image_extension(k for k in sample if not k.startswith("__"))
        image = sample[extension] if extension else None
        if image is None:
            with pytest.raises(ReadError, match="no image member"):
                rec.read()
        else:
            assert rec.read() == image
    assert [k for k, _ in open_source(tmp_path / "odd.tar").record_keys()] == \
        [r.key for r in records]


def test_a_compressed_shard_gives_the_same_records(tmp_path):
    write_odd_shard(tmp_path / "odd.tar")
    (tmp_path / "odd.tar.gz").write_bytes(gzip.compress((tmp_path / "odd.tar").read_bytes()))
    plain, packed = (list(open_source(tmp_path / name)) for name in ("odd.tar", "odd.tar.gz"))
    assert [r.key for r in packed] == [r.key for r in plain]
    assert read_elsewhere([r for r in packed if r.path]) == [r.read() for r in plain if r.path]


def test_too_large_lmdb_values_and_shard_members_are_refused_unread(tmp_path):
    demo.write_lmdb(tmp_path / "db", [(b"small", b"s" * 100), (b"big", b"b" * 5000)])
    write_odd_shard(tmp_path / "odd.tar")
    big_lmdb = next(r for r in open_source(tmp_path / "db", max_bytes=1000) if r.key == "big")
    big_member = list(open_source(tmp_path / "odd.tar", max_bytes=1000))[-1]
    for rec in (big_lmdb, big_member):
        with pytest.raises(ReadError, match="5000 bytes") as info:
            rec.read()
        assert info.value.status == TOO_LARGE


def test_a_shard_changed_or_gone_after_listing_is_unreadable(tmp_path):
    write_odd_shard(tmp_path / "odd.tar")
    records = [r for r in open_source(tmp_path / "odd.tar") if r.path]
    write_odd_shard(tmp_path / "odd.tar", tarfile.PAX_FORMAT)  # other offsets, same samples
    with pytest.raises(ReadError, match="changed since it was listed") as info:
        records[0].read()
    (tmp_path / "odd.tar").unlink()
    with pytest.raises(ReadError, match="No such file") as gone:
        records[0].read()
    assert info.value.status == gone.value.status == UNREADABLE


def test_an_lmdb_key_or_folder_gone_after_listing_is_unreadable(tmp_path):
    demo.write_lmdb(tmp_path / "db", [(b"a", b"1"), (b"b", b"2")])
    first, second = open_source(tmp_path / "db")
    assert first.read() == b"1"
    shutil.rmtree(tmp_path / "db")
    demo.write_lmdb(tmp_path / "db", [(b"b", b"two")])  # rewritten without "a"
    with pytest.raises(ReadError, match="no longer in the LMDB") as info:
        first.read()
    assert info.value.status == UNREADABLE
    assert second.read() == b"two"
    shutil.rmtree(tmp_path / "db")
    with pytest.raises(ReadError, match="No such file"):
        second.read()


def test_a_truncated_shard_is_one_error(tmp_path):
    write_odd_shard(tmp_path / "odd.tar")
    data = (tmp_path / "odd.tar").read_bytes()
    (tmp_path / "odd.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="odd.tar: not a readable tar shard"):
        list(open_source(tmp_path / "odd.tar"))


def test_a_sample_with_two_members_of_one_suffix_is_one_error(tmp_path):
    with tarfile.open(tmp_path / "dup.tar", "w") as tar:
        add_member(tar, "a.png", b"1")
        add_member(tar, "a.png", b"2")
    with pytest.raises(SourceError, match="sample 'a' has two .png members"):
        list(open_source(tmp_path / "dup.tar"))


def test_unknown_paths_get_one_line_naming_what_was_expected(tmp_path):
    with pytest.raises(SourceError, match="no such file") as info:
        open_source(tmp_path / "nope")
    assert "LMDB" in str(info.value) and "\n" not in str(info.value)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(SourceError, match="not a recognised source"):
        open_source(binary)


def test_several_sources_get_prefixed_unique_keys(tmp_path, png):
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "same.png").write_bytes(png)
    source = open_sources([tmp_path / "x", tmp_path / "y"])
    assert isinstance(source, MultiSource)
    assert [r.key for r in source] == ["x/same.png", "y/same.png"]


@pytest.mark.parametrize(
    "key, expected",
    [("photo.jpg", "photo_jpg"), ("dir.v2/a.b.png", "dir_v2/a_b_png"),
     ("e1f2" * 10, "e1f2" * 10), ("people/face0", "people/face0")],
)
def test_safe_key_has_no_dots(key, expected):
    assert safe_key(key) == expected


def test_safe_key_keeps_odd_keys_distinct_and_tar_safe(tmp_path):
    odd = ["../up.jpg", "up.jpg", "a b.jpg", "a_b.jpg", "ü.jpg", "/abs/x.png"]
    keys = [safe_key(k) for k in odd]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert "." not in k and not k.startswith("/") and ".." not in k.split("/")
    with wds.TarWriter(str(tmp_path / "t.tar")) as w:
        for k in keys:
            w.write({"__key__": k, "png": b"x"})
    with tarfile.open(tmp_path / "t.tar") as tar:
        assert len(tar.getnames()) == len(keys)
    assert [s["__key__"] for s in wds.WebDataset(str(tmp_path / "t.tar"), shardshuffle=False)] \
        == keys


@given(st.text(min_size=1, max_size=60))
def test_safe_key_is_always_a_valid_webdataset_key(key):
    safe = safe_key(key)
    assert safe and "." not in safe and not safe.startswith("/")
    assert all(part not in ("", "..") for part in safe.split("/"))
    assert safe == safe_key(key)  # deterministic: reruns and resumes agree
    assert safe.isascii()


def test_a_folder_of_tar_files_without_an_index_is_read_as_shards(tiles, tmp_path):
    """img2dataset's layout: NNNNN.tar with .parquet and _stats.json beside it, no index.json."""
    from gan.data import open_shards
    from tests.conftest import write_photos

    folder = tmp_path / "img2dataset"
    shards = write_image_shards(folder, tiles[:5], per_shard=2)
    (folder / "index.json").unlink()
    (folder / "00000.parquet").write_bytes(b"PAR1")
    (folder / "00000_stats.json").write_text("{}")
    source = open_source(folder)
    assert source.kind == "shards" and source.urls == [str(folder / s["name"]) for s in shards]
    assert open_shards(folder) == (source.urls, [2, 2, 1])  # what `gan train --data` reads
    write_photos(folder, ["photo.png"], tiles)  # with an image beside them: a folder of files
    assert open_source(folder).kind == "folder"
