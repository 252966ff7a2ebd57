"""`pipeline faces` on real photographs: detection, crops, statuses, shards, CLI, errors."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from core.files import read_jsonl
from core.samples import safe_key
from pipeline import demo
from pipeline.cli import main as cli
from pipeline.decode import decode_shard_image
from pipeline.faces import FaceParams, detect_faces, find_faces, square_around
from pipeline.faces.detectors import DetectorError, detection_scale, load_detector, make_spec
from pipeline.faces.stage import faces_chunk
from pipeline.sinks import read_index
from pipeline.sources import Record

# Hand-labelled faces (hairline to chin, cheek to cheek), x, y, w, h in the shipped photos.
TRUE_FACE = {"astronaut.png": (180, 75, 90, 97), "grace_hopper.jpg": (170, 135, 185, 197)}
NO_PEOPLE = ("coffee.png", "rocket.jpg", "chelsea.png", "motorcycle_left.png", "camera.png",
             "hubble_deep_field.jpg", "coins.png", "brick.png")


def iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0, min(ax1, bx1) - max(a[0], b[0])) * max(0, min(ay1, by1) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def params(**kw) -> FaceParams:
    return FaceParams(make_spec(), **kw)


def run_one(data: bytes, key: str = "photo.jpg", **kw):
    [outcome] = faces_chunk([Record(key, {"source_key": key}, data=data)], params(**kw))
    return outcome


def jpeg(rgb: np.ndarray) -> bytes:
    return demo.encode(rgb, "JPEG", quality=92)


def crops(outcome) -> list[np.ndarray]:
    return [decode_shard_image(s.image) for s in outcome.samples]


def two_people() -> np.ndarray:
    return np.hstack([cv2.resize(demo.photo(n), (400, 400)) for n in TRUE_FACE])


@pytest.mark.parametrize("name", sorted(TRUE_FACE))
def test_a_portrait_yields_one_face_on_the_true_face(name):
    outcome = run_one(jpeg(demo.photo(name)))
    assert outcome.status == "faces" and outcome.info["faces"] == 1
    [box] = outcome.info["boxes"]
    assert iou(box, TRUE_FACE[name]) > 0.5
    [sample] = outcome.samples
    assert sample.key == "photo_jpg/face0"
    assert sample.meta["box"] == box and sample.meta["source_key"] == "photo.jpg"
    assert sample.meta["detector"] == "haar"
    assert sample.meta["model"] == "haarcascade_frontalface_alt2.xml"
    assert crops(outcome)[0].shape == (64, 64, 3)


def test_photos_without_people_yield_no_face():
    statuses = [run_one(jpeg(demo.photo(n))).status for n in NO_PEOPLE]
    assert statuses == ["no_face"] * len(NO_PEOPLE)


def test_lfw_faces_are_found_and_lfw_non_faces_are_not():
    """scikit-image's LFW subset: 100 faces and 100 non-faces, 25x25, upsampled 4x."""
    tiles = np.load(Path(skimage.data.__file__).parent / "lfw_subset.npy")
    found = []
    for tile in tiles:
        gray = cv2.resize((tile * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
        found.append(len(find_faces(np.dstack([gray] * 3), min_size=48)))
    found = np.array(found)
    assert (found[:100] > 0).sum() >= 80
    assert (found[100:] > 0).sum() <= 2


def test_min_size_above_the_face_gives_faces_too_small():
    outcome = run_one(jpeg(demo.photo("astronaut.png")), min_size=110)
    assert outcome.status == "faces_too_small"
    assert outcome.samples == [] and outcome.info["faces"] == 0
    [box] = outcome.info["too_small"]
    assert iou(box, TRUE_FACE["astronaut.png"]) > 0.5
    assert "below --min-size 110" in outcome.reason


def test_two_faces_side_by_side_yield_two_samples_left_to_right():
    outcome = run_one(jpeg(two_people()), key="pair.jpg")
    assert outcome.status == "faces" and outcome.info["faces"] == 2
    left, right = outcome.info["boxes"]
    assert left[0] + left[2] <= 400 <= right[0]
    assert [s.key for s in outcome.samples] == ["pair_jpg/face0", "pair_jpg/face1"]
    assert [s.meta["faces_in_photo"] for s in outcome.samples] == [2, 2]


def test_boxes_map_back_to_the_original_after_max_side_downscaling():
    big = cv2.resize(demo.photo("astronaut.png"), (1536, 1536), interpolation=cv2.INTER_CUBIC)
    assert detection_scale(1536, 1536, 512, 64, 20) == pytest.approx(1 / 3)
    [shrunk] = find_faces(big, max_side=512)
    [full] = find_faces(big, max_side=4096)
    assert iou(shrunk, full) > 0.8
    true_face = [3 * v for v in TRUE_FACE["astronaut.png"]]
    assert iou(shrunk, true_face) > 0.5


def test_detection_scale_keeps_the_search_floor_above_the_detector_window():
    # a 4000 px photo shrunk to 1024 would turn a 48 px face into 12 px, below the 20 px window
    assert detection_scale(4000, 3000, 1024, 48, 20) == pytest.approx(20 / 48)
    assert detection_scale(300, 200, 1024, 48, 20) == 1.0
    for side in (300, 1024, 2000, 4000, 12_000):
        for floor in (20, 24, 48, 64, 200):
            scale = detection_scale(side, side, 1024, floor, 20)
            assert floor * scale >= 20 - 1e-9  # a face of the floor still fills the window
            assert scale <= 1.0 and (scale == 1.0 or side * scale >= 1024 - 1e-9)


def test_exif_rotated_photo_gives_upright_crops():
    rgb = demo.photo("astronaut.png")
    rotated, upright = run_one(demo.exif_rotated_jpeg(rgb)), run_one(jpeg(rgb))
    assert rotated.status == upright.status == "faces"
    assert iou(rotated.info["boxes"][0], upright.info["boxes"][0]) > 0.8
    [a], [b] = crops(rotated), crops(upright)
    same = np.abs(a.astype(int) - b).mean()
    sideways = np.abs(np.rot90(a).astype(int) - b).mean()
    assert same < 12 < sideways


def test_crop_is_the_enlarged_square_around_the_box():
    rgb = demo.photo("grace_hopper.jpg")
    outcome = run_one(jpeg(rgb), margin=0.25, size=96)
    [sample] = outcome.samples
    x, y, w, _ = sample.meta["box"]
    left, top, side, _ = sample.meta["crop"]
    assert side == round(w * 1.5) and left == round(x + w / 2 - side / 2)
    expected = cv2.resize(rgb[top : top + side, left : left + side], (96, 96),
                          interpolation=cv2.INTER_AREA)
    assert np.abs(crops(outcome)[0].astype(int) - expected).mean() < 4  # JPEG input


def test_size_and_format_options_shape_the_samples():
    outcome = run_one(jpeg(demo.photo("astronaut.png")), size=32, fmt="jpg")
    [sample] = outcome.samples
    assert sample.ext == "jpg" and sample.image[:2] == b"\xff\xd8"
    assert decode_shard_image(sample.image).shape == (32, 32, 3) and sample.meta["size"] == 32


@given(st.integers(1, 400), st.integers(1, 400), st.data(), st.floats(0, 1))
def test_crop_square_is_inside_the_photo_and_holds_the_box(width, height, data, margin):
    x = data.draw(st.integers(0, width - 1))
    y = data.draw(st.integers(0, height - 1))
    side = data.draw(st.integers(1, min(width - x, height - y)))
    left, top, crop, _ = square_around((x, y, side, side), width, height, margin)
    assert min(left, top) >= 0 and left + crop <= width and top + crop <= height
    assert crop == min(round(side * (1 + 2 * margin)), width, height)
    assert left <= x and top <= y and x + side <= left + crop and y + side <= top + crop


def test_decoder_rejections_keep_their_status():
    astronaut = demo.photo("astronaut.png")
    files = demo.awkward_files(astronaut)
    assert run_one(files["truncated.jpg"]).status == "corrupt"
    assert run_one(files["error_page.jpg"]).status == "not_image"
    assert run_one(files["bomb.png"]).status == "too_large"
    assert run_one(files["one_pixel.png"]).status == "too_small"


# ---- the stage end to end ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scraped")
    files = {
        "people/astronaut.jpg": jpeg(demo.photo("astronaut.png")),
        "people/grace hopper.png": demo.encode(demo.photo("grace_hopper.jpg"), "PNG"),
        "people/two_people.jpg": jpeg(two_people()),
        "people/small_astronaut.jpg": jpeg(cv2.resize(demo.photo("astronaut.png"), (300, 300))),
        "scenes/coffee.jpg": jpeg(demo.photo("coffee.png")),
        "scenes/rocket.webp": demo.encode(demo.photo("rocket.jpg"), "WEBP"),
        "awkward/truncated.jpg": jpeg(demo.photo("chelsea.png"))[:3000],
        "awkward/notes.jpg": b"a text file with an image extension\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


EXPECTED = {"people/astronaut.jpg": "faces", "people/grace hopper.png": "faces",
            "people/two_people.jpg": "faces", "people/small_astronaut.jpg": "faces_too_small",
            "scenes/coffee.jpg": "no_face", "scenes/rocket.webp": "no_face",
            "awkward/truncated.jpg": "corrupt", "awkward/notes.jpg": "not_image"}


def shard_samples(out: Path) -> dict[str, dict]:
    samples: dict[str, dict] = {}
    for shard in read_index(out):
        with tarfile.open(out / shard["name"]) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


@pytest.fixture(scope="module")
def stage_out(scraped, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("faces") / "out"
    summary = detect_faces([scraped], out, workers=1, maxcount=2, debug_boxes=True,
                           progress=False)
    return out, summary


def test_every_photo_gets_one_status_and_the_counts_add_up(stage_out):
    out, summary = stage_out
    manifest = list(read_jsonl(out / "manifest.jsonl"))
    assert {line["key"]: line["status"] for line in manifest} == EXPECTED
    assert summary["inputs"] == summary["photos_in"] == len(EXPECTED)
    assert sum(summary["counts"].values()) == len(EXPECTED)
    assert summary["counts"]["faces"] == 3 and summary["counts"]["no_face"] == 2
    assert summary["faces_kept"] == summary["samples"] == 4
    assert summary["faces_below_min_size"] == 1
    assert sum(summary["face_sizes"]["histogram"].values()) == 4
    assert "4 face crops" in summary["line"]
    assert json.loads((out / "summary.json").read_text())["faces_kept"] == 4


def test_shards_hold_one_crop_per_face_with_provenance(stage_out):
    out, _ = stage_out
    samples = shard_samples(out)
    assert sorted(samples) == sorted([
        "people/astronaut_jpg/face0", "people/two_people_jpg/face0",
        "people/two_people_jpg/face1", next(k for k in samples if k.startswith("people/grace_"))])
    # one photo's faces never straddle two shards (maxcount=2 forced several shards)
    assert [s["samples"] for s in read_index(out)] == [2, 2]
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        assert decode_shard_image(sample["png"]).shape == (64, 64, 3)
        assert key == safe_key(f"{meta['source_key']}/face{meta['face']}")
        assert len(meta["box"]) == 4 and meta["min_size"] == 64 and meta["margin"] == 0.25


def test_contact_sheet_and_debug_boxes_are_written(stage_out):
    out, summary = stage_out
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[0] == 64 + 4 and sheet.shape[1] == 4 * 66 + 2
    debug = cv2.imread(str(out / "debug_boxes.png"))
    assert summary["debug_photos"] == 4  # three photos with faces, one with a too-small face
    green = (debug[..., 1] > 180) & (debug[..., 0] < 60) & (debug[..., 2] < 60)
    red = (debug[..., 2] > 200) & (debug[..., 0] < 40) & (debug[..., 1] < 40)
    assert green.sum() > 100 and red.sum() > 100


@pytest.mark.slow
def test_cli_output_is_identical_for_any_worker_count(scraped, tmp_path, stage_out):
    out, _ = stage_out
    result = CliRunner().invoke(cli, ["faces", str(scraped), "--out", str(tmp_path / "w2"),
                                      "--workers", "2", "--maxcount", "2"])
    assert result.exit_code == 0, result.output
    assert "faces: 3 of 8 inputs faces (1 corrupt, 1 faces_too_small," in result.output
    assert "4 face crops" in result.output
    for shard in read_index(out):
        assert (tmp_path / "w2" / shard["name"]).read_bytes() == (out / shard["name"]).read_bytes()
    assert (tmp_path / "w2" / "manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()


# ---- errors a user can make ---------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--cascade", "no_such_cascade"], "no such file or bundled cascade"),
    (["--detector", "yunet"], "needs --yunet-onnx"),
    (["--detector", "yunet", "--yunet-onnx", "missing.onnx"], "no such file"),
])
def test_detector_problems_end_in_one_line(scraped, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["faces", str(scraped), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_file_that_is_not_a_yunet_model_is_refused(tmp_path):
    model = tmp_path / "face.onnx"
    model.write_bytes(b"not an onnx file")
    with pytest.raises(DetectorError, match="could not load it as YuNet"):
        load_detector(make_spec("yunet", yunet_onnx=model))


def test_opencv_without_cascades_fails_at_start_with_the_fix(monkeypatch):
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(DetectorError, match=r"opencv-python-headless>=4.8,<5"):
        make_spec("haar")


def test_cascade_by_short_name_or_path():
    spec = make_spec("haar", cascade="frontalface_default")
    assert spec.path.endswith("haarcascade_frontalface_default.xml")
    assert make_spec("haar", cascade=spec.path).path == spec.path
