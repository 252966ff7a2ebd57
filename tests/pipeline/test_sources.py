"""Source detection and iteration for every input kind."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pytest
import webdataset as wds
from hypothesis import given
from hypothesis import strategies as st

from pipeline import demo
from pipeline.geometry import encode_image
from pipeline.sinks import write_image_shards
from pipeline.sources import (
    FolderSource,
    ListSource,
    LmdbSource,
    MultiSource,
    ShardSource,
    SourceError,
    open_source,
    open_sources,
    safe_key,
)


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
    with pytest.raises(OSError):
        records[2].read()


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
