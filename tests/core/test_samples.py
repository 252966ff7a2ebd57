"""One rule decides which tar members form a sample and which member is its image, and every
reader of shards in the project gives the same answer on the same odd shard."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from core.samples import image_extension, is_image, split_member
from gan.data import _count_samples, build_cache, image_samples, training_dataset
from pipeline.geometry import encode_image
from pipeline.runner import _first_images
from pipeline.sinks import shard_keys
from pipeline.sources import ReadError, open_source


@pytest.mark.parametrize("name, parts", [
    ("a.png", ("a", "png")),
    ("a.PNG", ("a", "png")),
    ("x.b.c.png", ("x", "b.c.png")),
    ("dir.v/d.x.png", ("dir.v/d", "x.png")),
    ("__meta__", None),
    ("__key__/a.png", None),
    ("no_suffix", None),
])
def test_a_member_name_is_a_sample_key_and_an_extension(name, parts):
    assert split_member(name) == parts


def test_the_image_is_the_preferred_image_extension():
    assert is_image("png") and is_image("b.c.png") and not is_image("json")
    assert not is_image("png.json")
    assert image_extension(["json", "jpg", "png"]) == "png"
    assert image_extension(["json", "cls"]) is None
    assert image_extension(["x.jpg", "jpg"]) == "jpg"


def _image(value: int) -> bytes:
    return encode_image(np.full((8, 8, 3), value, np.uint8), "png")


ODD = [  # (member name, bytes): what a shard from another tool may hold
    ("__meta__", b"m"),
    ("a.PNG", _image(10)),  # an upper-case suffix
    ("a.json", b"{}"),
    ("x.b.c.png", _image(20)),  # sample "x", image member "b.c.png"
    ("j.json", b"{}"),  # a sample with only a .json
    ("d/e.jpg", encode_image(np.full((8, 8, 3), 30, np.uint8), "jpg")),
    ("f.txt", b"text"),  # a sample without an image
]
IMAGE_KEYS = ["a", "x", "d/e"]


@pytest.fixture
def odd_shard(tmp_path: Path) -> Path:
    path = tmp_path / "odd-000000.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in ODD:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_every_reader_sees_the_same_image_samples(odd_shard: Path, tmp_path: Path):
    url = str(odd_shard)
    images = [data for name, data in ODD if name in ("a.PNG", "x.b.c.png", "d/e.jpg")]

    records = list(open_source(odd_shard))  # the pipeline's shard source
    assert [r.key for r in records] == ["a", "x", "j", "d/e", "f"]
    readable = {}
    for rec in records:
        try:
            readable[rec.key] = rec.read()
        except ReadError as err:
            assert "no image member" in str(err)
    assert list(readable) == IMAGE_KEYS and list(readable.values()) == images

    assert _count_samples(url) == 3  # training: counting from the tar headers
    assert [s["__key__"] for s in image_samples([url])] == IMAGE_KEYS  # training, classify
    assert len(list(training_dataset([url], shuffle=0))) == 3  # training: decoded tensors
    cache = build_cache([url], [3], tmp_path / "cache", image_size=8, workers=0,
                        progress=False)  # the uint8 cache
    assert [int(c[0, 0, 0]) for c in cache][:2] == [10, 20]

    assert _first_images(odd_shard.parent, [{"name": odd_shard.name}], 10) == images  # sheets
    assert shard_keys(odd_shard.parent, [{"name": odd_shard.name}]) == \
        {"a", "x", "j", "d/e", "f"}  # the writer's key check: every sample key is taken
