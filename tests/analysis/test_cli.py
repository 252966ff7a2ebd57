"""The `analysis` CLI: end to end on a small checkpoint and room shards, and its user errors."""

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from analysis.cli import main
from analysis.drawing import DrawnWith
from gan.checkpoint import save_checkpoint
from gan.models import Discriminator, Generator
from gan.sample import sample_z

CONFIG = {"image_size": 32, "nz": 100, "width": 32, "arch": "compact", "prior": "uniform"}


@pytest.fixture(scope="module")
def files(tmp_path_factory, rooms):
    """An (untrained) 32x32 checkpoint, 32x32 and 64x64 room shards, a boxes file."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    G, D = Generator(32, 100, 32, "compact"), Discriminator(32, 32, "compact")
    save_checkpoint(root / "last.pt", {"config": CONFIG, "G": G.state_dict(),
                                       "D": D.state_dict()})
    np.save(root / "z.npy", sample_z(40, 100, "uniform", torch.Generator().manual_seed(0)).numpy())
    samples = [{"index": i, "boxes": [[0, 0, 16, 16]] if i % 2 else []} for i in range(40)]
    (root / "boxes.json").write_text(json.dumps({"z": "z.npy", "samples": samples}))
    return {"root": root, "ckpt": root / "last.pt", "boxes": root / "boxes.json",
            "shards32": rooms.write_room_shards(root / "rooms32", 300, 32, seed=1),
            "shards64": rooms.write_room_shards(root / "rooms64", 20, 64, seed=2)}


def _run(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().split("\r")[-1]  # after any progress bar (stderr)
    assert last.startswith("Error: ") and "\n" not in last
    for word in words:
        assert word in last


def test_help_lists_the_layer_choices_and_defaults():
    result = _run("remove-windows", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # as read, whatever the wrapping
    assert "8x8" in text and "second highest" in text
    assert "[default: batch]" in text


def test_guided_backprop_writes_features_by_top_images_panels(files, tmp_path):
    result = _run("guided-backprop", "--ckpt", files["ckpt"], "--data", files["shards32"],
                  "--out", tmp_path, "--features", "0-2", "--top", "4")
    assert result.exit_code == 0, result.output
    for name in ("trained_filters.png", "random_filters.png", "top_images.png"):
        sheet = cv2.imread(str(tmp_path / name))
        assert sheet.shape[:2] == (2 + 3 * 66, 2 + 4 * 66)  # 3 features x 4 images, 64px tiles
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["layer"] == "4x4" and report["features"] == [0, 1, 2]
    responses = np.array(report["top_responses"])
    assert (np.diff(responses, axis=1) <= 0).all()  # highest first


def test_remove_windows_writes_mask_comparison_and_report(files, tmp_path):
    result = _run("remove-windows", "--ckpt", files["ckpt"], "--boxes", files["boxes"],
                  "--out", tmp_path, "--bn", "running", "--show", "5")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    mask = np.load(tmp_path / "window_mask.npy")
    ids = json.loads((tmp_path / "window_mask.json").read_text())["dropped"]
    assert report["layer"] == "8x8" and mask.shape == (16,) and report["batchnorm"] == "running"
    assert ids == np.flatnonzero(mask).tolist() and report["dropped"] == len(ids)
    assert report["positive_cells"] == 20 * 16  # 20 boxed samples x 4x4 of the 8x8 cells
    assert cv2.imread(str(tmp_path / "comparison.png")).shape[:2] == (2 + 2 * 34, 2 + 5 * 34)


def test_memorization_end_to_end(files, tmp_path):
    result = _run("memorization", "--ckpt", files["ckpt"], "--train", files["shards32"],
                  "--holdout", files["shards32"], "--out", tmp_path, "--n", "100", "--cells", "3",
                  "--k", "2")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["train"] == 300 and report["generated"] == 100 and report["holdout"] == 100
    # Held-out images here *are* training images: every one sits at distance 0.
    assert report["median_nn_distance_holdout"] == pytest.approx(0, abs=0.05)
    assert report["verdict"] in result.output


@pytest.mark.parametrize("command", [
    ["remove-windows", "--boxes", "{boxes}"],
    ["guided-backprop", "--data", "{shards32}"],
    ["memorization", "--train", "{shards32}", "--holdout", "{shards32}"],
])
def test_missing_checkpoint_is_a_one_line_error(files, tmp_path, command):
    args = [a.format(**files) for a in command]
    result = _run(*args, "--ckpt", tmp_path / "nope.pt", "--out", tmp_path / "out")
    _one_line_error(result, "nope.pt", "no such checkpoint")


def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(files, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    result = _run("guided-backprop", "--ckpt", tmp_path / "bad.pt", "--data", files["shards32"],
                  "--out", tmp_path / "out")
    _one_line_error(result, "bad.pt")


@pytest.mark.parametrize("command", [
    ["guided-backprop", "--data", "{shards64}"],
    ["memorization", "--train", "{shards64}", "--holdout", "{shards32}"],
    ["memorization", "--train", "{shards32}", "--holdout", "{shards64}"],
])
def test_image_size_mismatch_is_a_one_line_error(files, tmp_path, command):
    args = [a.format(**files) for a in command]
    result = _run(*args, "--ckpt", files["ckpt"], "--out", tmp_path / "out")
    _one_line_error(result, "64x64", "expected 32x32", "--size 32")


@pytest.mark.parametrize("spec", [
    {"z": "z.npy", "samples": []},
    {"z": "z.npy", "samples": [{"index": 0, "boxes": []}, {"index": 1}]},
])
def test_boxes_file_without_boxes_is_a_one_line_error(files, spec):
    path = files["root"] / "empty.json"
    path.write_text(json.dumps(spec))
    result = _run("remove-windows", "--ckpt", files["ckpt"], "--boxes", path, "--out",
                  files["root"] / "out")
    _one_line_error(result, "no boxes")


@pytest.mark.parametrize("content, words", [
    ("", ["not JSON"]),
    ('{"samples": []}', ["expected"]),
    ('{"z": "z.npy", "samples": [{"index": 99, "boxes": []}]}', ["index", "[0, 40)"]),
    ('{"z": "z.npy", "samples": [{"index": 1, "boxes": [[5, 5, 2, 9]]}]}', ["x0 < x1"]),
    ('{"z": "missing.npy", "samples": []}', ["missing.npy"]),
])
def test_malformed_boxes_files_are_one_line_errors(files, content, words):
    path = files["root"] / "bad.json"
    path.write_text(content)
    result = _run("remove-windows", "--ckpt", files["ckpt"], "--boxes", path, "--out",
                  files["root"] / "out")
    _one_line_error(result, *words)


def test_unknown_layer_and_feature_are_one_line_errors(files, tmp_path):
    result = _run("remove-windows", "--ckpt", files["ckpt"], "--boxes", files["boxes"],
                  "--out", tmp_path, "--layer", "3x3")
    _one_line_error(result, "3x3", "4x4", "16x16")
    result = _run("guided-backprop", "--ckpt", files["ckpt"], "--data", files["shards32"],
                  "--out", tmp_path, "--features", "30-40")
    _one_line_error(result, "feature 40", "32 features")


COMMANDS = {
    "remove-windows": ["remove-windows", "--boxes", "{boxes}"],
    "guided-backprop": ["guided-backprop", "--data", "{shards32}", "--features", "0-1",
                        "--top", "2"],
    "memorization": ["memorization", "--train", "{shards32}", "--holdout", "{shards32}",
                     "--n", "40", "--cells", "2", "--k", "2"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_finished_analysis_is_refused_unless_overwrite(files, tmp_path, command):
    args = [a.format(**files) for a in COMMANDS[command]] + ["--ckpt", files["ckpt"],
                                                             "--out", tmp_path]
    assert _run(*args).exit_code == 0
    report = tmp_path / "report.json"
    report.write_text('{"mine": true}')  # stands for a result the user wants to keep
    _one_line_error(_run(*args), str(tmp_path), "finished", "--overwrite")
    assert json.loads(report.read_text()) == {"mine": True}
    result = _run(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "mine" not in json.loads(report.read_text())


@pytest.mark.parametrize("command", COMMANDS)
def test_device_cpu_runs_on_the_cpu(files, tmp_path, command):
    args = [a.format(**files) for a in COMMANDS[command]]
    result = _run(*args, "--ckpt", files["ckpt"], "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report.json").read_text())["device"] == "cpu"


def test_an_unknown_device_is_a_one_line_error_before_any_output(files, tmp_path):
    result = _run("guided-backprop", "--ckpt", files["ckpt"], "--data", files["shards32"],
                  "--out", tmp_path / "out", "--device", "tpu9")
    _one_line_error(result, "--device", "tpu9", "cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, bar", [("guided-backprop", "scan images"),
                                          ("memorization", "train k-NN")])
def test_no_progress_prints_no_bar(files, tmp_path, command, bar):
    args = [a.format(**files) for a in COMMANDS[command]] + ["--ckpt", files["ckpt"]]
    shown = _run(*args, "--out", tmp_path / "shown")
    assert shown.exit_code == 0, shown.output
    assert bar in shown.output  # the bars go to stderr, which the runner mixes in
    quiet = _run(*args, "--out", tmp_path / "quiet", "--no-progress")
    assert quiet.exit_code == 0, quiet.output
    assert bar not in quiet.output and "\r" not in quiet.output
    lines = [line for line in quiet.output.strip().splitlines()
             if not line.startswith("warning: --holdout")]  # COMMANDS holds out the train set
    assert len(lines) == 1  # the summary line only


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(files, tmp_path):
    result = _run("memorization", "--ckpt", files["ckpt"], "--train", files["shards32"],
                  "--holdout", files["shards32"], "--out", tmp_path / "out", "--device", "cuda")
    _one_line_error(result, "--device cuda", "no CUDA GPU")
    assert not (tmp_path / "out").exists()


# ---- the edges a hostile user finds ---------------------------------------------------------

def _boxes_file(folder, z: np.ndarray, boxes: list) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "z.npy", z)
    (folder / "boxes.json").write_text(json.dumps(
        {"z": "z.npy", "samples": [{"index": i, "boxes": b} for i, b in enumerate(boxes)]}))
    return folder / "boxes.json"


@pytest.mark.parametrize("command", ["guided-backprop", "memorization"])
def test_empty_shards_are_a_one_line_error(files, tmp_path, command):
    from pipeline.sinks import write_image_shards

    empty = tmp_path / "empty"
    write_image_shards(empty, [])
    args = [a.format(**files) for a in COMMANDS[command]]
    args = [str(empty) if a == str(files["shards32"]) else a for a in args]
    _one_line_error(_run(*args, "--ckpt", files["ckpt"], "--out", tmp_path / "out"),
                    str(empty), "no samples")


def test_k_larger_than_the_training_set_is_a_one_line_error(files, tmp_path):
    result = _run("memorization", "--ckpt", files["ckpt"], "--train", files["shards32"],
                  "--holdout", files["shards32"], "--out", tmp_path, "--n", "10", "--k", "301")
    _one_line_error(result, "--k 301", "only 300 training images")


def test_a_holdout_that_is_the_training_set_is_warned_about(files, tmp_path):
    result = _run(*[a.format(**files) for a in COMMANDS["memorization"]], "--ckpt",
                  files["ckpt"], "--out", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "warning: --holdout shares 1 shard file(s) with --train" in result.output
    assert "meaningless" in json.loads((tmp_path / "report.json").read_text())["warnings"][0]


@pytest.mark.parametrize("z, words", [
    (np.full((4, 100), np.nan), ["finite real numbers", "NaN"]),
    (np.ones((4, 100), np.complex128), ["finite real numbers", "complex128"]),
])
def test_a_nan_or_complex_z_is_a_one_line_error(files, tmp_path, z, words):
    boxes = _boxes_file(tmp_path / "ann", z, [[[0, 0, 16, 16]]] * 4)
    result = _run("remove-windows", "--ckpt", files["ckpt"], "--boxes", boxes, "--out",
                  tmp_path / "out")
    _one_line_error(result, str(tmp_path / "ann" / "z.npy"), *words)


def test_boxes_outside_the_image_are_called_so(files, tmp_path):
    z = np.load(files["root"] / "z.npy")[:4]
    boxes = _boxes_file(tmp_path / "ann", z, [[[40, 40, 60, 60]], [], [[-20, 0, -1, 8]], []])
    result = _run("remove-windows", "--ckpt", files["ckpt"], "--boxes", boxes, "--out",
                  tmp_path / "out")
    _one_line_error(result, "every box lies outside the 32x32 image")


def test_remove_windows_shows_progress_unless_told_not_to(files, tmp_path):
    args = ["remove-windows", "--ckpt", files["ckpt"], "--boxes", files["boxes"]]
    shown = _run(*args, "--out", tmp_path / "shown")
    assert shown.exit_code == 0, shown.output
    assert "remove windows" in shown.output
    quiet = _run(*args, "--out", tmp_path / "quiet", "--no-progress")
    assert quiet.exit_code == 0 and "remove windows" not in quiet.output


@pytest.mark.parametrize("command", COMMANDS)
def test_an_analysis_never_writes_into_someone_elses_folder(files, tmp_path, command):
    (tmp_path / "theirs.txt").write_text("mine")
    args = [a.format(**files) for a in COMMANDS[command]] + ["--ckpt", files["ckpt"]]
    _one_line_error(_run(*args, "--out", tmp_path, "--overwrite"), "not empty", "theirs.txt")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["theirs.txt"]


def _recorded_boxes(files, tmp_path, **drawn: object) -> object:
    """The fixture's boxes file as annotate writes it: with how its samples were drawn."""
    spec = json.loads(files["boxes"].read_text())
    spec["drawn_with"] = {**DrawnWith.of(files["ckpt"], "batch").as_json(), **drawn}
    np.save(tmp_path / "z.npy", np.load(files["root"] / "z.npy"))
    (tmp_path / "boxes.json").write_text(json.dumps(spec))
    return tmp_path / "boxes.json"


def test_boxes_drawn_with_another_checkpoint_or_bn_are_refused(files, tmp_path):
    boxes = _recorded_boxes(files, tmp_path)
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(other, {"config": CONFIG, "G": Generator(32, 100, 32, "compact").state_dict(),
                            "D": Discriminator(32, 32, "compact").state_dict()})
    args = ["remove-windows", "--boxes", boxes, "--out", tmp_path / "out"]
    _one_line_error(_run(*args, "--ckpt", other), f"--ckpt {other}", "is not the checkpoint",
                    f"pass --ckpt {files['ckpt']} and --bn batch", "or annotate again")
    _one_line_error(_run(*args, "--ckpt", files["ckpt"], "--bn", "running"), "--bn running",
                    "drawn with --bn batch")
    assert not (tmp_path / "out").exists()

    result = _run(*args, "--ckpt", files["ckpt"], "--no-progress")
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"] == [] and report["batch_size"] == 256
    assert report["ckpt_sha256"] == DrawnWith.of(files["ckpt"], "batch").ckpt_sha256


def test_a_damaged_record_of_how_the_samples_were_drawn_is_a_one_line_error(files, tmp_path):
    boxes = _recorded_boxes(files, tmp_path, batch_size="256")
    result = _run("remove-windows", "--ckpt", files["ckpt"], "--boxes", boxes, "--out",
                  tmp_path / "out")
    _one_line_error(result, str(boxes), '"drawn_with" must be', "fix or remove it")


def test_boxes_that_do_not_say_how_they_were_drawn_are_used_with_a_warning(files, tmp_path):
    result = _run("remove-windows", "--ckpt", files["ckpt"], "--boxes", files["boxes"],
                  "--out", tmp_path, "--no-progress")
    assert result.exit_code == 0, result.output
    warning = f"warning: {files['boxes']} does not record how its samples were drawn"
    assert result.output.startswith(warning) and result.output.count("\n") == 2
    assert "does not record" in json.loads((tmp_path / "report.json").read_text())["warnings"][0]
