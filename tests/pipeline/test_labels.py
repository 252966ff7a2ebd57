"""`pipeline shards --label-from folder|parent`: class labels from class folders."""

from __future__ import annotations

import io
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


def nested(root: Path, paths: list[str]) -> Path:
    """Photos at `paths` (relative) under `root`."""
    img = demo.photo("chelsea.png")
    for i, path in enumerate(paths):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(demo.encode(img[i * 30:i * 30 + 100, :100], "PNG"))
    return root


def test_label_from_folder_takes_the_first_folder_under_the_source(tmp_path):
    """Tiny-ImageNet's layout: SRC/<class>/images/<image>; `parent` would call every class
    'images'."""
    src = nested(tmp_path / "tiny", ["cat/images/1.png", "cat/images/2.png", "dog/images/3.png"])
    result = CliRunner().invoke(cli, ["shards", str(src), "--out", str(tmp_path / "out"),
                                      "--size", "16", "--workers", "1", "--label-from", "folder",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == ["cat", "dog"]
    assert [json.loads(s["json"])["class"] for s in samples(tmp_path / "out")] == [
        "cat", "cat", "dog"]
    assert "warning" not in result.output


@pytest.mark.parametrize(("label_from", "paths", "warning"), [
    ("parent", ["cat/images/1.png", "dog/images/2.png"],
     "--label-from parent: every image has the same class 'images'"),
    ("parent", ["nest/cat/2020/1.png", "nest/dog/2020/2.png", "nest/dog/2021/3.png"],
     "--label-from parent: class '2020' is the folder name of 2 folders at different paths "
     "(nest/cat/2020, nest/dog/2020)"),
    ("folder", ["nest/cat/1.png", "nest/dog/2.png"],
     "--label-from folder: every image has the same class 'nest'"),
])
def test_a_suspicious_labelling_is_a_warning_and_in_the_summary(tmp_path, label_from, paths,
                                                                 warning):
    src = nested(tmp_path / "src", paths)
    result = CliRunner().invoke(cli, ["shards", str(src), "--out", str(tmp_path / "out"),
                                      "--size", "16", "--workers", "1", "--label-from",
                                      label_from, "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert any(line.startswith(f"warning: {warning}") for line in lines)  # said at the start
    assert any(line.startswith("shards: ") and f"; warning: {warning}" in line for line in lines)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["label_warning"].startswith(warning)


# Class names that the tar-safe key (core.samples.safe_key) would merge or rename: `a.b` and
# `a_b` both give `a_b`, a backslash splits `a\b` into folders `a/b`, `ünïcødé` gives `_n_c_d_`.
AWKWARD = ["a.b", "a_b", "ünïcødé", "a\\b"]


def labelled(out: Path) -> tuple[list[str], list[tuple[str, int, str]]]:
    """labels.json of `out`, and (source key, .cls index, .json class) of every sample."""
    got = [(json.loads(s["json"])["source_key"], int(s["cls"]), json.loads(s["json"])["class"])
           for s in samples(out)]
    return json.loads((out / "labels.json").read_text(encoding="utf-8")), got


def shards_cli(*args) -> None:
    result = CliRunner().invoke(cli, ["shards", *map(str, args), "--size", "16", "--workers",
                                      "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


@pytest.mark.parametrize("label_from", ["folder", "parent"])
def test_class_names_are_kept_exactly_through_resharding(tmp_path, label_from):
    """Labels are data: folder names the key sanitizer would merge or rename stay four exact,
    distinct classes in the shards, in shards re-made from them, and for `analysis classify`."""
    from analysis.classify import read_labels

    src = nested(tmp_path / "src", [f"{name}/{i}.png" for name in AWKWARD for i in range(2)])
    shards_cli(src, "--out", tmp_path / "first", "--label-from", "folder")
    classes, first = labelled(tmp_path / "first")
    assert classes == sorted(AWKWARD)
    assert [(c, name) for _, c, name in first] == [
        (classes.index(key.split("/")[0]), key.split("/")[0]) for key, _, _ in first]
    # re-sharded: the shards' keys are sanitized (`a_b/0_png`, `a/b/0_png`, `_n_c_d_/0_png`)
    shards_cli(tmp_path / "first", "--out", tmp_path / "again", "--label-from", label_from)
    again_classes, again = labelled(tmp_path / "again")
    assert again_classes == classes
    written = {key: (c, name) for key, c, name in
               ((s["__key__"], int(s["cls"]), json.loads(s["json"])["class"])
                for s in samples(tmp_path / "first"))}
    assert all(written[key] == (c, name) for key, c, name in again)
    _, indices, names = read_labels(tmp_path / "again")
    assert names == dict(enumerate(classes))
    assert sorted(indices.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_cls_index_is_named_by_the_labels_json_beside_the_shards(tmp_path):
    """Shards holding only a .cls index per sample (no class in the .json), with the class
    names in labels.json beside them: re-sharded, the samples keep those classes."""
    shards = tmp_path / "cls_only"
    shards.mkdir()
    photo = demo.encode(demo.photo("coffee.png")[:100, :100], "PNG")
    with tarfile.open(shards / "data-000000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i, label in enumerate([1, 0, 1]):
            for ext, data in (("cls", str(label).encode()), ("png", photo)):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (shards / "labels.json").write_text(json.dumps(["x.y", "ü"]), encoding="utf-8")
    shards_cli(shards, "--out", tmp_path / "out", "--label-from", "folder")
    classes, got = labelled(tmp_path / "out")
    assert classes == ["x.y", "ü"]
    assert [(c, name) for _, c, name in got] == [(1, "ü"), (0, "x.y"), (1, "ü")]


def test_resharding_labelled_shards_without_label_from_warns(class_folders, tmp_path):
    """Labelled shards re-made without --label-from lose their classes: said, not silent."""
    shards_cli(class_folders, "--out", tmp_path / "first", "--label-from", "parent")
    result = CliRunner().invoke(cli, ["shards", str(tmp_path / "first"), "--out",
                                      str(tmp_path / "again"), "--size", "16", "--workers", "1",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "holds labelled shards (labels.json) but the output is unlabelled" in result.output
    assert "--label-from folder" in result.output
    assert not (tmp_path / "again" / "labels.json").exists()
