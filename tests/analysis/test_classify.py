"""`analysis classify`: D's features + a linear L2-SVM, against pixels and a random-init D."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from analysis.classify import (
    AnalysisError,
    check_labels,
    classify,
    disc_features,
    disc_layers,
    feature_dim,
    fit_svm,
    match_classes,
    predict,
    split_rows,
)
from analysis.cli import main as cli
from gan.models import Discriminator
from gan.train import train
from pipeline import demo
from pipeline.shards import make_shards
from pipeline.sinks import write_image_shards

# Texture classes: each is 32x32 tiles of one photograph shipped with scikit-image.
PHOTOS = ("brick.png", "grass.png", "gravel.png", "astronaut.png", "coffee.png", "chelsea.png")


def write_texture_folders(root: Path, photos: tuple[str, ...], per_class: int, side: tuple[float,
                          float], seed: int) -> Path:
    """root/<photo>/<i>.png: random (mirrored) 32x32 tiles of each photo at half size, taken
    from the horizontal band `side` (fractions of the width), so train and test tiles are
    cut from different parts of the photographs."""
    rng = np.random.default_rng(seed)
    for name in photos:
        img = demo.photo(name)
        img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        folder = root / name.split(".")[0]
        folder.mkdir(parents=True)
        for i in range(per_class):
            y = rng.integers(0, h - 32)
            x = rng.integers(int(side[0] * w), int(side[1] * w) - 32)
            tile = img[y:y + 32, x:x + 32]
            tile = tile[:, ::-1] if rng.random() < 0.5 else tile
            (folder / f"{i}.png").write_bytes(demo.encode(np.ascontiguousarray(tile), "PNG"))
    return root


def labelled_shards(tmp: Path, name: str, photos: tuple[str, ...] = PHOTOS, per_class: int = 150,
                    side: tuple[float, float] = (0.0, 0.6), seed: int = 0) -> Path:
    src = write_texture_folders(tmp / f"{name}-src", photos, per_class, side, seed)
    make_shards([src], tmp / name, size=32, workers=1, label_from="parent", progress=False)
    return tmp / name


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> dict[str, Path]:
    """Labelled train (left 60 % of each photo) and test (right 40 %) shards, and a compact
    32x32 DCGAN trained briefly (300 steps) on the training images, labels unused."""
    tmp = tmp_path_factory.mktemp("textures")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sets = {"train": labelled_shards(tmp, "train"),
                "test": labelled_shards(tmp, "test", per_class=60, side=(0.6, 1.0), seed=1)}
        train(sets["train"], tmp / "gan", image_size=32, arch="compact", width=64, steps=300,
              batch_size=64, workers=0, device="cpu", progress=False, sample_every=10**6,
              ckpt_every=10**6)
    finally:
        torch.set_num_threads(before)
    return {**sets, "ckpt": tmp / "gan" / "checkpoints" / "last.pt", "tmp": tmp}


@pytest.mark.parametrize(("arch", "size", "dim"), [
    ("paper", 32, 28_672),   # (256 + 512 + 1024) x 16: the paper's figure
    ("compact", 32, 14_336),  # (128 + 256 + 512) x 16
    ("paper", 64, 30_720),   # (128 + 256 + 512 + 1024) x 16
])
def test_feature_dimension_of_every_conv_layer_pooled_to_4x4(arch, size, dim):
    D = Discriminator(size, arch=arch)
    modules = disc_layers(D, "all")
    assert feature_dim(modules) == dim
    assert disc_features(D, modules)(torch.zeros(2, 3, size, size)).shape == (2, dim)


def test_chosen_layers_only():
    D = Discriminator(32, arch="paper")
    assert feature_dim(disc_layers(D, "last")) == 1024 * 16
    assert feature_dim(disc_layers(D, "16x16,8x8")) == (256 + 512) * 16


def test_streaming_svm_is_as_accurate_as_liblinear():
    """The SGD fit over chunks solves LinearSVC's problem (squared hinge, L2, same C) to within
    a few points of test accuracy."""
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    train_rows, test_rows = np.arange(1000), np.arange(1000, len(X))
    scaler = StandardScaler().fit(X[train_rows])
    for C in (1e-3, 1e-1):
        exact = LinearSVC(C=C).fit(scaler.transform(X[train_rows]), y[train_rows])
        exact_acc = exact.score(scaler.transform(X[test_rows]), y[test_rows])
        svm = fit_svm(X, train_rows, y, np.arange(10), C, scaler, seed=0)
        acc = np.mean(predict(svm, scaler, X, test_rows) == y[test_rows])
        assert acc > exact_acc - 0.03, (C, acc, exact_acc)


def test_trained_d_beats_pixels_but_not_clearly_its_random_twin(textures):
    """The honest result at this scale (300 steps on 900 tiles): D's features beat raw pixels
    by a wide margin, and a randomly initialized D of the same shape does nearly as well as the
    trained one (random conv features are strong on texture); training does not make it worse."""
    out = textures["tmp"] / "classify"
    r = classify(textures["ckpt"], textures["train"], textures["test"], out, device="cpu",
                 progress=False)
    acc = {m: v["accuracy"] for m, v in r["methods"].items()}
    assert acc["trained_D"] > acc["pixels"] + 0.10, acc
    assert acc["trained_D"] > acc["random_D"] - 0.05, acc
    assert acc["trained_D"] > 0.6, acc  # six classes: chance is 1/6
    saved = json.loads((out / "report.json").read_text())
    assert saved["feature_dim"] == (16 + 32 + 64) * 16
    assert saved["classes"] == sorted(p.split(".")[0] for p in PHOTOS)
    assert saved["counts"]["test"] == 6 * 60
    assert saved["counts"]["train"] + saved["counts"]["validation"] == 6 * 150
    trained = saved["methods"]["trained_D"]
    assert np.asarray(trained["confusion"]).sum() == 6 * 60
    assert trained["C"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert set(trained["per_class_accuracy"]) == set(saved["classes"])
    assert (out / "confusion.png").is_file()
    features = np.load(out / "features" / "trained_D-train.npy", mmap_mode="r")
    assert features.shape == (6 * 150, saved["feature_dim"]) and features.dtype == np.float16


def test_cli_labels_per_class_and_summary_line(textures):
    out = textures["tmp"] / "cli"
    result = CliRunner().invoke(cli, [
        "classify", "--ckpt", str(textures["ckpt"]), "--train", str(textures["train"]),
        "--test", str(textures["test"]), "--out", str(out), "--labels-per-class", "20",
        "--validation", "200", "--no-baselines", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "trained_D" in result.output and "1,792-d" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["train_per_class"] == dict.fromkeys(report["classes"], 20)
    assert list(report["methods"]) == ["trained_D"]


def _refused(textures, train: Path, test: Path, tmp: Path, *extra: str) -> str:
    result = CliRunner().invoke(cli, [
        "classify", "--ckpt", str(textures["ckpt"]), "--train", str(train), "--test", str(test),
        "--out", str(tmp / "out"), "--device", "cpu", "--no-progress", *extra])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp / "out").exists()
    return result.output


def test_shards_without_labels_are_one_line(textures, tiles, tmp_path):
    plain = tmp_path / "plain"
    write_image_shards(plain, [cv2.resize(t, (32, 32), interpolation=cv2.INTER_AREA)
                               for t in tiles[:10]], image_size=32)
    assert "has no class index" in _refused(textures, plain, textures["test"], tmp_path)


def test_one_class_only_is_one_line(textures, tmp_path):
    one = labelled_shards(tmp_path, "one", photos=("brick.png",), per_class=10)
    assert "one class only ('brick')" in _refused(textures, one, one, tmp_path,
                                                    "--C", "0.01")


def test_test_class_missing_from_training_is_one_line(textures, tmp_path):
    two = labelled_shards(tmp_path, "two", photos=("brick.png", "grass.png"), per_class=10)
    three = labelled_shards(tmp_path, "three", photos=("brick.png", "grass.png", "gravel.png"),
                            per_class=5, seed=1)
    assert ("test class 'gravel' has 0 training images and 5 test images; the training and test "
            "shards must hold the same classes" in _refused(textures, two, three, tmp_path))


def test_training_class_missing_from_the_test_set_is_one_line(textures, tmp_path):
    """The test shards were made from class folders one of which held no images: the class is
    named, with its counts, instead of advice to use the same class folders (an empty folder
    is no class) or a per-class accuracy of 0 for a class never tested."""
    three = labelled_shards(tmp_path, "three", photos=("brick.png", "grass.png", "gravel.png"),
                            per_class=10)
    two = labelled_shards(tmp_path, "two", photos=("brick.png", "gravel.png"), per_class=5,
                          seed=1)
    assert ("training class 'grass' has 10 training images and 0 test images; the training and "
            "test shards must hold the same classes" in _refused(textures, three, two, tmp_path))


def test_classes_are_matched_by_name_across_sets():
    """An index is a place in one set's class list; the name is the class."""
    names, y_test = match_classes(np.array([0, 1, 2]), {0: "a.b", 1: "a_b", 2: "ü"},
                                  np.array([0, 1, 2, 1]), {0: "ü", 1: "a.b", 2: "a_b"})
    assert names == {0: "a.b", 1: "a_b", 2: "ü"}
    assert y_test.tolist() == [2, 0, 1, 0]
    names, y_test = match_classes(np.array([0, 1]), {0: "a", 1: "b"}, np.array([0, 0, 1]),
                                  {0: "a", 1: "c"})
    with pytest.raises(AnalysisError, match="test class 'c' has 0 training images and 1 test"):
        check_labels(np.array([0, 1]), y_test, names)
    # shards that name no class are matched by index
    names, y_test = match_classes(np.array([0, 1, 2]), {}, np.array([0, 1]), {})
    with pytest.raises(AnalysisError, match="training class 2 has 1 training images and 0 test"):
        check_labels(np.array([0, 1, 2]), y_test, names)


def test_the_validation_split_is_stratified_and_keeps_every_class_for_training():
    labels = np.array([0] * 60 + [1] * 2 + [2] * 18)
    for seed in range(20):  # a plain random split loses class 1 to validation in some seeds
        train_rows, val_rows = split_rows(labels, 20, None, seed)
        assert np.bincount(labels[val_rows], minlength=3).tolist() == [15, 1, 4]
        assert np.bincount(labels[train_rows]).tolist() == [45, 1, 14]
    with pytest.raises(AnalysisError, match="class 1 has 1 training image; every class needs 2"):
        split_rows(np.array([0, 0, 0, 1]), 1, None, 0)


def test_classes_named_differently_in_train_and_test_are_one_line(textures, tmp_path):
    ab = labelled_shards(tmp_path, "ab", photos=("brick.png", "grass.png"), per_class=10)
    bc = labelled_shards(tmp_path, "bc", photos=("grass.png", "gravel.png"), per_class=5)
    assert "test class 'gravel' has 0 training images and 5 test images" in _refused(
        textures, ab, bc, tmp_path)


def test_classes_whose_names_a_tar_key_would_merge_stay_apart_through_resharding(textures,
                                                                                  tmp_path):
    """Folders `a.b`, `a_b` and `ünïcødé` (tar keys `a_b`, `a_b`, `_n_c_d_`) -> labelled shards
    -> shards re-made from those: classify sees the three classes by their exact names."""
    src = write_texture_folders(tmp_path / "src", ("brick.png", "grass.png", "gravel.png"), 12,
                                (0.0, 1.0), 0)
    for old, new in (("brick", "a.b"), ("grass", "a_b"), ("gravel", "ünïcødé")):
        (src / old).rename(src / new)
    make_shards([src], tmp_path / "first", size=32, workers=1, label_from="folder",
                progress=False)
    make_shards([tmp_path / "first"], tmp_path / "again", size=32, workers=1,
                label_from="folder", progress=False)
    report = classify(textures["ckpt"], tmp_path / "again", tmp_path / "again",
                      tmp_path / "out", C=0.01, baselines=False, device="cpu", progress=False)
    assert report["classes"] == ["a.b", "a_b", "ünïcødé"]
    assert report["counts"]["train_per_class"] == {"a.b": 12, "a_b": 12, "ünïcødé": 12}
