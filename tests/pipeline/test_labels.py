"""`pipeline shards --label-from parent`: class labels from the one-folder-per-class layout."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import demo
from pipeline.cli import main as cli
from pipeline.shards import make_shards
from pipeline.sources import read_shards

CLASSES = {"dog": "chelsea.png", "cup": "coffee.png", "rocket": "rocket.jpg"}


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory) -> Path:
    """SRC/<class>/<image>: three crops of one photo per class."""
    root = tmp_path_factory.mktemp("classes")
    for name, photo in CLASSES.items():
        img = demo.photo(photo)
        (root / name).mkdir()
        for i in range(3):
            crop = img[i * 40:i * 40 + 120, i * 40:i * 40 + 120]
            (root / name / f"{i}.png").write_bytes(demo.encode(crop, "PNG"))
    return root


def samples(out: Path) -> list[dict]:
    return list(read_shards(sorted(str(p) for p in out.glob("shards-*.tar"))))


def test_each_sample_carries_its_folder_as_class(class_folders, tmp_path):
    out = tmp_path / "out"
    summary = make_shards([class_folders], out, size=16, workers=1, label_from="parent",
                          progress=False)
    names = sorted(CLASSES)
    assert json.loads((out / "labels.json").read_text()) == names
    assert summary["classes"] == 3
    got = samples(out)
    assert len(got) == 9
    for sample in got:
        meta = json.loads(sample["json"])
        folder = meta["source_key"].split("/")[0]
        assert int(sample["cls"].decode("ascii")) == names.index(folder) == meta["label"]
        assert meta["class"] == folder


def test_unlabelled_shards_hold_only_image_and_json(class_folders, tmp_path):
    make_shards([class_folders], tmp_path / "out", size=16, workers=1, progress=False)
    assert not (tmp_path / "out" / "labels.json").exists()
    with tarfile.open(tmp_path / "out" / "shards-000000.tar") as tar:
        exts = {m.name.split(".", 1)[1] for m in tar}
    assert exts == {"png", "json"}
    assert all("label" not in json.loads(s["json"]) for s in samples(tmp_path / "out"))


def test_image_outside_a_class_folder_is_one_line_error(class_folders, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "cup").mkdir()
    (src / "cup" / "0.png").write_bytes((class_folders / "cup" / "0.png").read_bytes())
    (src / "loose.png").write_bytes((class_folders / "dog" / "0.png").read_bytes())
    result = CliRunner().invoke(cli, ["shards", str(src), "--out", str(tmp_path / "out"),
                                      "--size", "16", "--workers", "1", "--label-from", "parent"])
    assert result.exit_code == 1
    assert "loose.png is not inside a class folder" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_writes_labels(class_folders, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["shards", str(class_folders), "--out", str(out),
                                      "--size", "16", "--workers", "1",
                                      "--label-from", "parent"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "labels.json").read_text()) == sorted(CLASSES)
