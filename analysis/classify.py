"""Does D learn features that are useful beyond telling real from fake? The paper's
representation test (sections 5.1 and 5.2): a linear classifier on D's features.

Features: every conv layer of D (eval mode: running BatchNorm statistics), each layer's output
max-pooled to a 4x4 grid, flattened and concatenated: for the paper's 32x32 D (width 1024:
256, 512 and 1024 channels) that is (256 + 512 + 1024) x 16 = 28,672 dimensions, the paper's
figure; the compact 32x32 D (128, 256, 512) gives 14,336. They are streamed to float16 memory
maps in OUT/features/ (50,000 x 28,672 is 2.9 GB there, and never held in RAM twice).

Classifier: a linear SVM with L2 regularization and the squared hinge loss (the objective of
liblinear's L2-loss SVM, scikit-learn's LinearSVC), one-vs-rest, on standardized features
(mean and scale from the training rows). It is fitted by SGD (`SGDClassifier`, alpha = 1 /
(C n)) over chunks of the memory map, because liblinear copies a dense matrix into 16-byte
(index, value) nodes: 50,000 x 28,672 would need 23 GB on top of the features. With `C="auto"`
each C of `C_GRID` is fitted on (at most `SEARCH_ROWS` of) the training rows and scored on a
validation split held out of the training shards, as the paper chose its model on 10,000
held-out SVHN images.

Baselines through the same SVM in the same run: raw pixels, and a freshly initialized D of the
same architecture (the paper's init): the difference is what training added.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from analysis.data import AnalysisError, check_image_size, load_run
from analysis.guided_backprop import random_discriminator
from analysis.hooks import captured_outputs, layer_module
from core.devices import resolve_device
from core.files import write_figure_atomic, write_json_atomic
from core.outputs import own_output
from gan.data import image_samples, open_shards, sample_tensor
from gan.models import Discriminator

POOL_SIDE = 4  # each layer's map is max-pooled to POOL_SIDE x POOL_SIDE (the paper's 4x4)
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
EPOCHS = 5  # SGD passes over the training rows (within ~2 % of LinearSVC's accuracy)
# SGD step x the feature dimension. A standardized row has |x|^2 ~ dim, and the squared hinge's
# gradient grows with it: scikit-learn's default schedule diverges on it (weights ~1e11), a
# constant step well below 1 / |x|^2, averaged (ASGD), does not.
STEP = 0.1
SEARCH_ROWS = 10_000  # training rows the C search fits on
CHUNK = 2048  # rows per SGD step batch and per standardization read
DEFAULT_VALIDATION = 10_000  # the paper's SVHN validation split (capped at a fifth of the data)
FEATURE_DTYPE = np.float16
METHODS = ("trained_D", "random_D", "pixels")
LABEL_HINT = "make labelled shards with `pipeline shards --label-from folder`"

Featurize = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Labels and images from shards


def sample_label(sample: dict) -> int:
    """A shard sample's class index: its `.cls` member (the WebDataset convention), else
    `"label"` in its `.json`."""
    if "cls" in sample:
        text = sample["cls"].decode("ascii", errors="replace").strip()
    else:
        text = str(json.loads(sample["json"]).get("label", "")) if "json" in sample else ""
    if not text.isdigit():
        raise AnalysisError(f"sample {sample['__key__']} in {sample.get('__url__')} has no class "
                            f"index (a .cls member or \"label\" in its .json): {LABEL_HINT}")
    return int(text)


def read_labels(spec: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[int, str]]:
    """The shard files of `spec`, every image's class index (one pass, nothing decoded) and the
    class names the samples' .json carry ({} if none)."""
    urls = open_shards(spec)[0]
    labels, names = [], {}
    for sample in image_samples(urls):
        label = sample_label(sample)
        labels.append(label)
        if label not in names and "json" in sample:
            name = json.loads(sample["json"]).get("class")
            if name is not None:
                names[label] = str(name)
    return urls, np.asarray(labels, np.int64), names


def selected_images(urls: list[str], rows: np.ndarray, image_size: int,
                    batch_size: int = 256) -> Iterator[torch.Tensor]:
    """The images at the sorted indices `rows`, in that order, as float batches in [-1, 1];
    the others are skipped undecoded."""
    wanted = iter(rows.tolist())
    target = next(wanted, None)
    batch: list[torch.Tensor] = []
    for index, sample in enumerate(image_samples(urls)):
        if index != target:
            continue
        batch.append(sample_tensor(sample, image_size))
        target = next(wanted, None)
        if len(batch) == batch_size or target is None:
            yield torch.stack(batch)
            batch = []
        if target is None:
            return


def split_rows(labels: np.ndarray, validation: int, per_class: int | None,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of the training shards, both sorted: `validation` random
    images held out, then `per_class` random images of each class from the rest (all without
    `per_class`): the paper's SVHN protocol (10,000 validation, 100 labels per class).

    The held-out images are stratified: each class gives its share, and keeps at least one image
    for training, so a small class never vanishes into validation. A class with fewer than 2
    images cannot be both learnt and checked: refused."""
    classes, counts = np.unique(labels, return_counts=True)
    if validation and counts.min() < 2:
        raise AnalysisError(f"class {classes[counts.argmin()]} has {counts.min()} training image;"
                            " every class needs 2 or more (one to learn from, one to validate "
                            "--C auto), or pass --C")
    order = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels))  # each row's place within its class, in the random order
    for c, count in zip(classes, counts, strict=True):
        rows = order[labels[order] == c]
        rank[rows] = (np.arange(count) + 0.5) / count
        rank[rows[-1]] = np.inf  # the last of each class stays for training
    stratified = np.argsort(rank, kind="stable")
    held = stratified[:min(validation, len(labels) - len(classes))]
    rest = np.setdiff1d(order, held, assume_unique=True)
    rest = order[np.isin(order, rest)]  # in the random order, for `per_class`
    if per_class is not None:
        rest = np.concatenate([rest[labels[rest] == c][:per_class] for c in np.unique(labels)])
    return np.sort(rest), np.sort(held)


def check_labels(train: np.ndarray, test: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """The classes to learn (sorted), or the reason the test cannot be run: fewer than two
    classes, or a class on one side only, named with how many images each side has (a test
    class never learnt cannot be scored; a class never tested would show a per-class accuracy
    of 0 it never earned)."""
    classes = np.unique(train)
    if len(classes) < 2:
        raise AnalysisError(f"the training images hold one class only ({_name(classes[0], names)})"
                            f": a classifier needs two or more; {LABEL_HINT}")
    tested = np.unique(test)
    one_side = [("test", c) for c in np.setdiff1d(tested, classes)] + [
        ("training", c) for c in np.setdiff1d(classes, tested)]
    if one_side:
        side, label = one_side[0]
        raise AnalysisError(f"{side} class {_name(label, names)} has "
                            f"{int((train == label).sum())} training images and "
                            f"{int((test == label).sum())} test images; the training and test "
                            "shards must hold the same classes")
    return classes


def match_classes(y_train: np.ndarray, train: dict[int, str], y_test: np.ndarray,
                  test: dict[int, str]) -> tuple[dict[int, str], np.ndarray]:
    """The class names of both sets, and the test labels as training indices. When both sets
    name every class they hold, classes are matched by name: an index is only a place in one
    set's sorted class list (test shards made without one class number the later ones
    differently). A test class the training set lacks gets an index of its own, for
    `check_labels` to name. Otherwise by index, and an index that names different classes in
    the two sets would silently score nonsense: an error."""
    if set(y_train.tolist()) <= train.keys() and set(y_test.tolist()) <= test.keys():
        index = {name: label for label, name in train.items()}
        for name in sorted(set(test.values()) - index.keys()):
            index[name] = max(index.values()) + 1
        mapping = np.zeros(max(test) + 1, np.int64)
        for label, name in test.items():
            mapping[label] = index[name]
        return {label: name for name, label in index.items()}, mapping[y_test]
    for label in sorted(train.keys() & test.keys()):
        if train[label] != test[label]:
            raise AnalysisError(f"class {label} is {train[label]!r} in the training shards but "
                                f"{test[label]!r} in the test shards; {LABEL_HINT} for both")
    return {**test, **train}, y_test


def _name(label: int, names: dict[int, str]) -> str:
    """A class as the user knows it: its name, or its index when the shards name none."""
    return repr(names[label]) if label in names else str(label)


# ---------------------------------------------------------------------------------------------
# Features


def disc_layers(D: Discriminator, layers: str) -> dict[str, torch.nn.Module]:
    """D's conv layers by name: "all", or a comma list of names ("16x16,8x8", "last")."""
    if layers == "all":
        return D.feature_layers()
    return dict(layer_module(D, name.strip()) for name in layers.split(","))


def feature_dim(modules: dict[str, torch.nn.Module]) -> int:
    """Length of the concatenated features: each layer's channels x POOL_SIDE^2."""
    return sum(block[0].out_channels for block in modules.values()) * POOL_SIDE**2


def disc_features(D: Discriminator, modules: dict[str, torch.nn.Module]) -> Featurize:
    """Images -> every chosen layer's output max-pooled to 4x4, flattened and concatenated."""
    device = next(D.parameters()).device
    D.eval()

    def featurize(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), ExitStack() as stack:
            outs = [stack.enter_context(captured_outputs(m)) for m in modules.values()]
            D(images.to(device))
        return torch.cat([F.adaptive_max_pool2d(o[0], POOL_SIDE).flatten(1) for o in outs], 1)

    return featurize


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline: the image itself, flattened (3 x S x S values)."""
    return images.flatten(1)


def write_features(path: Path, featurize: Featurize, batches: Iterator[torch.Tensor],
                   rows: int, dim: int, desc: str, progress: bool) -> np.ndarray:
    """Stream features into a float16 .npy memory map, renamed into place when complete."""
    tmp = path.with_name(path.name + ".tmp")
    out = np.lib.format.open_memmap(tmp, "w+", FEATURE_DTYPE, (rows, dim))
    filled = 0
    with tqdm(total=rows, desc=desc, unit="img", leave=False, disable=not progress) as bar:
        for batch in batches:
            out[filled:filled + len(batch)] = featurize(batch).float().cpu().numpy()
            filled += len(batch)
            bar.update(len(batch))
    if filled != rows:
        raise AnalysisError(f"expected {rows} images, the shards gave {filled}")
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# The linear SVM on a memory map


def _chunks(rows: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start:start + CHUNK]


def fit_scaler(X: np.ndarray, rows: np.ndarray) -> StandardScaler:
    """Mean and scale of the training rows, accumulated chunk by chunk in float32."""
    scaler = StandardScaler()
    for chunk in _chunks(rows):
        scaler.partial_fit(X[chunk].astype(np.float32))
    return scaler


def fit_svm(X: np.ndarray, rows: np.ndarray, y: np.ndarray, classes: np.ndarray, C: float,
            scaler: StandardScaler, seed: int) -> SGDClassifier:
    """Squared-hinge, L2-regularized linear SVM (one-vs-rest) on X[rows] with labels y (one per
    row of X), by EPOCHS passes of averaged SGD over shuffled chunks; alpha = 1 / (C n) is
    liblinear's C for n training rows."""
    svm = SGDClassifier(loss="squared_hinge", penalty="l2", alpha=1.0 / (C * len(rows)),
                        learning_rate="constant", eta0=STEP / X.shape[1], average=True,
                        random_state=seed)
    rng = np.random.default_rng(seed)
    for _ in range(EPOCHS):
        for chunk in _chunks(rng.permutation(rows)):
            chunk = np.sort(chunk)  # a memory map reads sorted rows fastest
            svm.partial_fit(scaler.transform(X[chunk].astype(np.float32)), y[chunk],
                            classes=classes)
    return svm


def predict(svm: SGDClassifier, scaler: StandardScaler, X: np.ndarray,
            rows: np.ndarray) -> np.ndarray:
    return np.concatenate([svm.predict(scaler.transform(X[c].astype(np.float32)))
                           for c in _chunks(rows)]) if len(rows) else np.empty(0, np.int64)


def choose_svm(X: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray,
               classes: np.ndarray, C: float | str, seed: int
               ) -> tuple[SGDClassifier, StandardScaler, float, dict[str, float]]:
    """The SVM for `C`, or with C="auto" the one whose C (of C_GRID, fitted on at most
    SEARCH_ROWS training rows) scores best on the validation rows (ties: the smaller C);
    returns it, its scaler, the C and every C's validation accuracy."""
    scaler = fit_scaler(X, train)
    if C != "auto":
        return fit_svm(X, train, y, classes, float(C), scaler, seed), scaler, float(C), {}
    search = train if len(train) <= SEARCH_ROWS else np.sort(
        np.random.default_rng(seed).choice(train, SEARCH_ROWS, replace=False))
    scores, fitted = {}, {}
    for c in C_GRID:
        fitted[c] = fit_svm(X, search, y, classes, c, scaler, seed)
        scores[c] = float(np.mean(predict(fitted[c], scaler, X, val) == y[val]))
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    svm = fitted[best] if len(search) == len(train) else fit_svm(X, train, y, classes, best,
                                                                 scaler, seed)
    return svm, scaler, best, {f"{c:g}": s for c, s in scores.items()}


# ---------------------------------------------------------------------------------------------
# The test


def confusion(truth: np.ndarray, guess: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """counts[i, j]: test images of class classes[i] classified as classes[j]."""
    index = {c: i for i, c in enumerate(classes.tolist())}
    counts = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(counts, ([index[t] for t in truth.tolist()], [index[g] for g in guess.tolist()]), 1)
    return counts


def evaluate(name: str, featurize: Featurize, dim: int, data: dict, C: float | str, seed: int,
             folder: Path, progress: bool) -> dict:
    """One method: features of the training and test images, the SVM, its test results."""
    X = write_features(folder / f"{name}-train.npy", featurize,
                       selected_images(data["train_urls"], data["rows"], data["size"]),
                       len(data["rows"]), dim, f"{name} train features", progress)
    T = write_features(folder / f"{name}-test.npy", featurize,
                       selected_images(data["test_urls"], np.arange(len(data["y_test"])),
                                       data["size"]),
                       len(data["y_test"]), dim, f"{name} test features", progress)
    y = data["y_rows"]
    svm, scaler, chosen, scores = choose_svm(X, y, data["train"], data["val"], data["classes"],
                                             C, seed)
    guess = predict(svm, scaler, T, np.arange(len(T)))
    counts = confusion(data["y_test"], guess, data["classes"])
    per_class = counts.diagonal() / np.maximum(counts.sum(1), 1)
    return {
        "accuracy": float(np.mean(guess == data["y_test"])),
        "feature_dim": dim,
        "C": chosen,
        "validation_accuracy": scores,
        "per_class_accuracy": {n: float(a) for n, a in zip(data["names"], per_class,
                                                            strict=True)},
        "confusion": counts.tolist(),
    }


def _write_confusion(path: Path, report: dict) -> None:
    """One confusion matrix per method, rows = true class, normalized per row."""
    methods = report["methods"]
    names = report["classes"]
    fig = Figure(figsize=(4.5 * len(methods), 4.5), dpi=100)
    for i, (method, result) in enumerate(methods.items()):
        ax = fig.add_subplot(1, len(methods), i + 1)
        counts = np.asarray(result["confusion"], float)
        ax.imshow(counts / np.maximum(counts.sum(1, keepdims=True), 1), vmin=0, vmax=1,
                  cmap="Blues")
        ax.set_title(f"{method}: {result['accuracy']:.1%}")
        ticks = range(len(names))
        ax.set_xticks(ticks, names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, names if i == 0 else [], fontsize=7)
        ax.set_xlabel("predicted")
    fig.axes[0].set_ylabel("true class")
    fig.tight_layout()
    write_figure_atomic(path, fig)


def classify(
    ckpt: str | os.PathLike,
    train: str | os.PathLike,
    test: str | os.PathLike,
    out: str | os.PathLike,
    labels_per_class: int | None = None,
    validation: int | None = None,
    C: float | str = "auto",
    layers: str = "all",
    baselines: bool = True,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """`analysis classify`: D's features (and the baselines') + a linear SVM trained on the
    labelled `train` shards, tested on `test`. Writes OUT/features/*.npy, confusion.png and
    report.json (last: a finished analysis); returns the report. Inputs are checked (labels,
    classes, image size) before `out` is claimed."""
    device = resolve_device(device)
    _, D, config = load_run(ckpt, device)
    size = config["image_size"]
    check_image_size(train, size)
    check_image_size(test, size)
    train_urls, labels, names = read_labels(train)
    test_urls, y_test, test_names = read_labels(test)
    names, y_test = match_classes(labels, names, y_test, test_names)
    classes = check_labels(labels, y_test, names)  # the split keeps every class for training
    if validation is None:
        validation = min(DEFAULT_VALIDATION, len(labels) // 5) if C == "auto" else 0
    if C == "auto" and not 0 < validation < len(labels):
        raise AnalysisError(f"--validation {validation}: --C auto needs between 1 and "
                            f"{len(labels) - 1} of the {len(labels)} training images held out")
    train_rows, val_rows = split_rows(labels, validation, labels_per_class, seed)
    rows = np.union1d(train_rows, val_rows)
    data = {
        "train_urls": train_urls, "test_urls": test_urls, "size": size, "rows": rows,
        "y_rows": labels[rows], "train": np.searchsorted(rows, train_rows),
        "val": np.searchsorted(rows, val_rows), "y_test": y_test, "classes": classes,
        "names": [names.get(c, str(c)) for c in classes.tolist()],
    }
    modules = disc_layers(D, layers)
    dim = feature_dim(modules)
    with own_output(out, command="analysis classify", overwrite=overwrite,
                    finished="report.json") as out:
        folder = out / "features"
        folder.mkdir(exist_ok=True)
        featurizers = {"trained_D": (disc_features(D, modules), dim)}
        if baselines:
            random_D = random_discriminator(config, seed, device)
            featurizers["random_D"] = (disc_features(random_D, disc_layers(random_D, layers)), dim)
            featurizers["pixels"] = (pixel_features, 3 * size * size)
        methods = {name: evaluate(name, featurize, d, data, C, seed, folder, progress)
                   for name, (featurize, d) in featurizers.items()}
        report = {
            "methods": methods,
            "classes": data["names"],
            "class_ids": classes.tolist(),
            "layers": list(modules),
            "feature_dim": dim,
            "feature_dtype": np.dtype(FEATURE_DTYPE).name,
            "counts": {
                "train": len(train_rows),
                "validation": len(val_rows),
                "test": len(y_test),
                "train_per_class": {n: int(np.sum(labels[train_rows] == c))
                                    for n, c in zip(data["names"], classes.tolist(), strict=True)},
            },
            "svm": {"loss": "squared_hinge", "penalty": "l2", "solver": "SGD", "epochs": EPOCHS,
                    "C_grid": list(C_GRID) if C == "auto" else None, "standardized": True},
            "arch": config["arch"],
            "image_size": size,
            "seed": seed,
            "device": str(device),
        }
        _write_confusion(out / "confusion.png", report)
        write_json_atomic(out / "report.json", report)
    return report
