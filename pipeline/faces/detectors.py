"""Face detectors for `pipeline faces`: OpenCV's Haar cascades (default) and YuNet (optional).

A detector is described by a small picklable `DetectorSpec` (paths and numbers); the OpenCV
object itself is built lazily, once per process, and cached here, because cascades cannot be
pickled and loading one per photo would cost more than detecting. `load_detector` builds it
once in the main process first, so a missing file or an OpenCV without cascade support ends the
run at start with one line instead of failing in every worker.

Boxes are always returned in the original photo's pixel coordinates, sorted left to right (then
top to bottom), so `face0`, `face1`, ... name the same faces on every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.runner import StageError

DETECTORS = ("haar", "yunet")
DEFAULT_CASCADE = "haarcascade_frontalface_alt2"
YUNET_SCORE_THRESHOLD = 0.9
YUNET_NMS_THRESHOLD = 0.3

Box = tuple[int, int, int, int]  # x, y, width, height in original pixels


class DetectorError(StageError):
    """The detector cannot run here (missing file, OpenCV without it); message is for users."""


@dataclass(frozen=True)
class DetectorSpec:
    kind: str  # "haar" or "yunet"
    path: str  # cascade XML or YuNet ONNX file
    scale_factor: float = 1.1
    min_neighbors: int = 5


def _require_cascade_support() -> None:
    if not hasattr(cv2, "CascadeClassifier"):
        raise DetectorError(
            f"OpenCV {cv2.__version__} has no cv2.CascadeClassifier (opencv-python-headless 5 "
            "moved it to contrib); install 'opencv-python-headless>=4.8,<5'"
        )


def cascade_folder() -> Path:
    """Where this OpenCV keeps its bundled Haar cascades; DetectorError if it has none."""
    _require_cascade_support()
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder or not list(Path(folder).glob("haarcascade_*.xml")):
        raise DetectorError(
            f"OpenCV {cv2.__version__} ships no Haar cascade files (cv2.data.haarcascades); "
            "install 'opencv-python-headless>=4.8,<5' or pass --cascade PATH"
        )
    return Path(folder)


def resolve_cascade(name_or_path: str) -> Path:
    """A cascade XML path from a file path or a bundled name ("frontalface_alt2",
    "haarcascade_frontalface_alt2", or with ".xml")."""
    as_path = Path(name_or_path)
    if as_path.is_file():
        return as_path
    folder = cascade_folder()
    stem = as_path.name.removesuffix(".xml")
    for candidate in (stem, f"haarcascade_{stem}"):
        if (folder / f"{candidate}.xml").is_file():
            return folder / f"{candidate}.xml"
    names = ", ".join(sorted(p.stem for p in folder.glob("haarcascade_*face*.xml")))
    raise DetectorError(f"--cascade {name_or_path}: no such file or bundled cascade ({names})")


def make_spec(
    detector: str = "haar",
    *,
    cascade: str = DEFAULT_CASCADE,
    yunet_onnx: str | Path | None = None,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
) -> DetectorSpec:
    """The spec for the user's detector choice: names resolved and files checked, nothing
    loaded yet (raises DetectorError)."""
    if detector == "haar":
        _require_cascade_support()
        spec = DetectorSpec("haar", str(resolve_cascade(cascade)), scale_factor, min_neighbors)
    elif detector == "yunet":
        if yunet_onnx is None:
            raise DetectorError("--detector yunet needs --yunet-onnx PATH (a YuNet .onnx file)")
        if not Path(yunet_onnx).is_file():
            raise DetectorError(
                f"--yunet-onnx {yunet_onnx}: no such file (YuNet is never downloaded)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DetectorError(f"OpenCV {cv2.__version__} has no cv2.FaceDetectorYN")
        spec = DetectorSpec("yunet", str(yunet_onnx), scale_factor, min_neighbors)
    else:
        raise DetectorError(f"unknown detector {detector!r} (one of: {', '.join(DETECTORS)})")
    return spec


def load_detector(spec: DetectorSpec) -> DetectorSpec:
    """Build the detector once in this process, so a file OpenCV cannot load ends the run at
    start with one line instead of failing in every worker; returns `spec` for chaining."""
    _load(spec)
    return spec


_loaded: dict[DetectorSpec, object] = {}


def _load(spec: DetectorSpec):
    """The OpenCV detector for `spec`, built on first use in this process."""
    if spec not in _loaded:
        if spec.kind == "haar":
            try:
                cascade = cv2.CascadeClassifier(spec.path)
            except (cv2.error, SystemError):  # a file that is not a cascade's XML
                cascade = cv2.CascadeClassifier()
            if cascade.empty():
                raise DetectorError(f"{spec.path}: OpenCV could not load it as a Haar cascade; "
                                    "give a cascade XML file or a bundled name")
            _loaded[spec] = cascade
        else:
            try:
                _loaded[spec] = cv2.FaceDetectorYN.create(
                    spec.path, "", (320, 320), YUNET_SCORE_THRESHOLD, YUNET_NMS_THRESHOLD)
            except cv2.error as err:
                raise DetectorError(f"{spec.path}: OpenCV could not load it as YuNet "
                                    f"({str(err).strip().splitlines()[-1]})") from None
    return _loaded[spec]


def window_size(spec: DetectorSpec) -> int:
    """The smallest face the detector can see, in pixels of the image it is given."""
    if spec.kind == "haar":
        return max(_load(spec).getOriginalWindowSize())
    return 10  # YuNet's finest anchors are 10-16 px


def detection_scale(height: int, width: int, max_side: int, smallest: int, window: int) -> float:
    """How much to shrink a photo before detection: to `max_side` on the longer side, but never
    so far that a face of `smallest` original pixels would drop below the detector's window."""
    scale = min(1.0, max_side / max(height, width))
    return min(1.0, max(scale, window / smallest))


def detect(spec: DetectorSpec, rgb: np.ndarray, *, smallest: int, max_side: int) -> list[Box]:
    """Faces of at least `smallest` original pixels (the search floor) in an RGB photo."""
    height, width = rgb.shape[:2]
    scale = detection_scale(height, width, max_side, smallest, window_size(spec))
    if spec.kind == "haar":
        boxes = _detect_haar(spec, rgb, scale, smallest)
    else:
        boxes = _detect_yunet(spec, rgb, scale)
    mapped = [_map_back(box, scale, width, height) for box in boxes]
    return sorted(b for b in mapped if max(b[2], b[3]) >= smallest)


def _shrink(img: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return img
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _detect_haar(spec: DetectorSpec, rgb: np.ndarray, scale: float, smallest: int) -> np.ndarray:
    """Grayscale + histogram equalization, then the cascade (the classic OpenCV recipe)."""
    gray = cv2.equalizeHist(_shrink(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), scale))
    floor = max(1, math.floor(smallest * scale))
    found = _load(spec).detectMultiScale(gray, scaleFactor=spec.scale_factor,
                                         minNeighbors=spec.min_neighbors, minSize=(floor, floor))
    return np.asarray(found, dtype=np.float64).reshape(-1, 4)


def _detect_yunet(spec: DetectorSpec, rgb: np.ndarray, scale: float) -> np.ndarray:
    bgr = np.ascontiguousarray(_shrink(rgb, scale)[..., ::-1])
    net = _load(spec)
    net.setInputSize((bgr.shape[1], bgr.shape[0]))
    _, faces = net.detect(bgr)
    if faces is None:
        return np.zeros((0, 4))
    return np.asarray(faces, dtype=np.float64)[:, :4]


def _map_back(box: np.ndarray, scale: float, width: int, height: int) -> Box:
    """A detection box in original pixel coordinates, clipped to the photo."""
    x0, y0 = max(0, round(box[0] / scale)), max(0, round(box[1] / scale))
    x1 = min(width, round((box[0] + box[2]) / scale))
    y1 = min(height, round((box[1] + box[3]) / scale))
    return (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
