"""Drawing the boxes `analysis remove-windows` reads, in a browser (`analysis annotate`).

The paper's authors drew window boxes on 150 generated bedrooms. Here G is sampled once, in
batches written to disk as they are drawn (analysis.drawing: memory stays flat in the number of
samples, and how they were drawn is recorded so that reopening draws the same images), the
samples are written as PNGs beside their `z.npy`, and one page (annotate.html, shipped in this
package, with nothing loaded from elsewhere) is served to draw boxes over them. The server checks
every change the page sends and saves it at once as `boxes.json`, in the schema remove-windows
reads, so the folder is always ready for it and reopening the folder resumes the annotation.

Only this machine can use the server: it listens on 127.0.0.1, answers only requests addressed
to 127.0.0.1 or localhost at its own port (so a web page elsewhere cannot reach it by DNS
rebinding), accepts changes only from its own page's origin, and serves no file outside
`samples/`.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import ExitStack
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from analysis.data import AnalysisError, load_run
from analysis.drawing import (
    MAX_SAMPLES,
    RECORD_KEY,
    DrawnWith,
    check_sample_count,
    drawn_batches,
)
from analysis.windows import WindowBox
from core.devices import resolve_device
from core.files import write_json_atomic, write_npy_atomic, write_png_atomic
from core.outputs import own_output
from core.pixels import to_uint8
from gan.sample import load_z, sample_z

COMMAND = "analysis annotate"
DEFAULT_SAMPLES = 150  # the paper annotated 150 generated bedrooms
Z_FILE = "z.npy"
BOXES_FILE = "boxes.json"
SAMPLES_FOLDER = "samples"
MAX_BODY = 1 << 20  # bytes; a full save of 150 samples with a few boxes each is ~50 KB
MAX_NAME = 255  # longest file name a file system takes
SCHEMA = '{"samples": [{"index": 0, "boxes": [[x0, y0, x1, y1]]}]}'


def sample_name(index: int) -> str:
    """File name of sample `index` in samples/ (the page builds the same name)."""
    return f"{index:06d}.png"


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status, the message is for the page."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def checked_samples(entries: object, count: int, size: int) -> dict[int, list[WindowBox]]:
    """The `samples` list of boxes.json (or of a request) as {index: boxes}, or a ValueError
    saying what is wrong. Stricter than remove-windows: a box must also lie inside the image."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"expected {SCHEMA}")
    checked = {}
    for entry in entries:
        index, boxes = entry.get("index"), entry.get("boxes")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(f"sample {index!r} does not exist (indices 0 to {count - 1})")
        if not isinstance(boxes, list) or not all(_inside(box, size) for box in boxes):
            raise ValueError(f"sample {index}: boxes must be [x0, y0, x1, y1] lists of numbers "
                             f"with 0 <= x0 < x1 <= {size} and 0 <= y0 < y1 <= {size}, got "
                             f"{json.dumps(boxes)[:200]}")
        checked[index] = [tuple(box) for box in boxes]
    return checked


def _inside(box: object, size: int) -> bool:
    if not isinstance(box, list) or len(box) != 4:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        return False
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size  # also false for NaN


def read_boxes(path: Path, count: int, size: int) -> tuple[DrawnWith | None,
                                                            dict[int, list[WindowBox]]]:
    """How the samples of an annotation's boxes.json were drawn (None when it does not say:
    there is none yet, or it is from before annotate recorded it) and the boxes saved so far."""
    if not path.exists():
        return None, {}
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(spec, dict) or spec.get("z") != Z_FILE:
            raise ValueError(f'expected {{"z": "{Z_FILE}", "samples": [...]}}')
        boxes = checked_samples(spec.get("samples"), count, size)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise AnalysisError(f"{path}: cannot resume from it ({err}); fix or remove it") from None
    if RECORD_KEY not in spec:
        return None, boxes
    return DrawnWith.from_json(spec[RECORD_KEY], str(path)), boxes


def boxes_spec(drawn: DrawnWith, boxes: dict[int, list[WindowBox]]) -> dict:
    """boxes.json: the z file, how its samples were drawn, every seen sample by index."""
    return {"z": Z_FILE, RECORD_KEY: drawn.as_json(),
            "samples": [{"index": i, "boxes": [list(b) for b in boxes[i]]} for i in sorted(boxes)]}


class Annotation:
    """The boxes of one annotation folder: every sample the person has seen, with its boxes
    (none = a negative), saved as boxes.json after each change with how the samples were
    drawn. The folder stays held (no second command may write it) until `close()`.
    `warnings` are for the person (e.g. an old annotation that does not say how its samples
    were drawn)."""

    def __init__(self, folder: Path, count: int, size: int, boxes: dict[int, list[WindowBox]],
                 drawn: DrawnWith, held: ExitStack, warnings: list[str] | None = None):
        self.folder, self.count, self.size, self.boxes = folder, count, size, boxes
        self.drawn, self.warnings = drawn, warnings or []
        self.path = folder / BOXES_FILE
        self._lock = threading.RLock()
        self._held = held

    def close(self) -> None:
        """Release the folder (other commands may use it again)."""
        self._held.close()

    def update(self, entries: object) -> dict:
        """Replace the boxes of the listed samples (they count as seen); all or nothing."""
        try:
            changes = checked_samples(entries, self.count, self.size)
        except ValueError as err:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(err)) from None
        with self._lock:
            self.boxes.update(changes)
            try:
                self._save()
            except OSError as err:  # every save writes them all: the next one may succeed
                raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                   f"cannot write {self.path} ({err.strerror}); the boxes are "
                                   "kept here and saved with the next change") from None
            return self.summary()

    def _save(self) -> None:
        with self._lock:
            write_json_atomic(self.path, boxes_spec(self.drawn, self.boxes))

    def summary(self) -> dict:
        """Samples seen, samples with boxes, boxes."""
        with self._lock:
            lists = list(self.boxes.values())
        return {"seen": len(lists), "boxed": sum(1 for b in lists if b),
                "boxes": sum(len(b) for b in lists)}

    def as_samples(self) -> list[dict]:
        """The samples list of boxes.json: every seen sample, by index."""
        with self._lock:
            return boxes_spec(self.drawn, self.boxes)["samples"]


def prepare_samples(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    n: int | None = None,
    z: str | os.PathLike | None = None,
    seed: int | None = None,
    bn: str | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Annotation:
    """Write out/z.npy (drawn with `seed`, or copied from `z`; an existing one is kept),
    out/boxes.json (created, or resumed) and out/samples/NNNNNN.png, drawn in batches with the
    BatchNorm mode `bn` (default: "batch", or the annotation's own). Reopening with another
    checkpoint or `bn` than the annotation records is refused. The returned annotation holds
    the folder until it is closed."""
    _check_size(n, z)
    G, _D, config = load_run(ckpt, resolve_device(device))
    given = None if z is None else (Path(z), _read_z(Path(z), config["nz"]))
    with ExitStack() as held:
        # Never "finished": reopening the folder resumes it.
        out = held.enter_context(own_output(Path(out), command=COMMAND, overwrite=True))
        latent = _latent(out / Z_FILE, given, n, seed, config)
        size = config["image_size"]
        recorded, boxes = read_boxes(out / BOXES_FILE, len(latent), size)
        drawn, warnings = _drawing(recorded, ckpt, bn, bool(boxes), len(latent), out)
        # The record before the samples: a run stopped while drawing resumes against it.
        write_json_atomic(out / BOXES_FILE, boxes_spec(drawn, boxes))
        draw_samples(G, latent, drawn, out / SAMPLES_FOLDER, progress)
        return Annotation(out, len(latent), size, boxes, drawn, held.pop_all(), warnings)


def _drawing(recorded: DrawnWith | None, ckpt: str | os.PathLike, bn: str | None,
             boxed: bool, count: int, folder: Path) -> tuple[DrawnWith, list[str]]:
    """How to draw the samples: as `recorded` (a `ckpt` or `bn` that would draw others is
    refused), else anew. An annotation from before the record, with samples seen, is taken to
    be drawn with `ckpt` and `bn` as one batch (as annotate drew then), with a warning."""
    if recorded is not None:
        now = DrawnWith.of(ckpt, bn or recorded.bn, recorded.batch_size)
        differences = recorded.differences(now)
        if differences:
            raise AnalysisError(f"{folder} holds an annotation whose samples were drawn "
                                f"otherwise: {'; '.join(differences)}; redrawn, its boxes would "
                                f"sit over other images (pass {recorded.describe()}, or choose "
                                "another --out)")
        return recorded, []
    if not boxed:  # nothing seen yet: nothing to keep in place
        return DrawnWith.of(ckpt, bn or "batch"), []
    now = DrawnWith.of(ckpt, bn or "batch", batch_size=count)
    return now, [f"{folder / BOXES_FILE} does not record how its samples were drawn (annotated "
                 f"before annotate recorded it): taken to be {now.describe()} (recorded from now "
                 "on); if they were others, its boxes now sit over other images"]


def draw_samples(generator: nn.Module, latent: np.ndarray, drawn: DrawnWith, folder: Path,
                 progress: bool = True) -> None:
    """folder/NNNNNN.png for every z, drawn as `drawn` says; each batch is written (every PNG
    atomically) and freed before the next is drawn."""
    folder.mkdir(exist_ok=True)
    with tqdm(total=len(latent), desc="draw samples", unit="sample", disable=not progress,
              leave=False) as bar:
        for start, images in drawn_batches(generator, torch.from_numpy(latent), drawn.bn,
                                           drawn.batch_size):
            for offset, image in enumerate(to_uint8(images)):
                write_png_atomic(folder / sample_name(start + offset), image)
            bar.update(len(images))


def _latent(saved: Path, given: tuple[Path, np.ndarray] | None, n: int | None,
            seed: int | None, config: dict) -> np.ndarray:
    """The annotation's z: the folder's own when it has one (reopening must show the samples
    already boxed, so a --z, --n or --seed that would change them is refused), else --z (its
    path and z's, read before the folder is touched), else drawn."""
    nz = config["nz"]

    def drawn(count: int) -> np.ndarray:
        rng = torch.Generator().manual_seed(seed or 0)
        return sample_z(count, nz, config["prior"], rng).numpy()

    if saved.exists():
        _check_rows(saved, "its boxes.json still works with remove-windows; annotate another "
                           "--out")
        z = _read_z(saved, nz)
        resume = f"{saved.parent} holds an annotation of {len(z)} samples; reopening it keeps " \
                 f"its {Z_FILE}"
        if given is not None and not np.array_equal(given[1], z):
            raise AnalysisError(f"--z {given[0]} differs from {saved}: {resume} (drop --z, or "
                                "choose another --out)")
        if n is not None and n != len(z):
            raise AnalysisError(f"--n {n}: {resume} (drop --n, or choose another --out)")
        if seed is not None and not np.array_equal(drawn(len(z)), z):
            raise AnalysisError(f"--seed {seed}: {resume}, not drawn with that seed (drop "
                                "--seed, or choose another --out)")
        return z
    if given is not None:
        z = given[1]
        if n is not None and n != len(z):
            raise AnalysisError(f"--n {n}: --z {given[0]} holds {len(z)} z's")
        if seed is not None:
            raise AnalysisError("--seed draws new z's; it cannot be combined with --z")
    else:
        z = drawn(n or DEFAULT_SAMPLES)
    write_npy_atomic(saved, z)
    return z


def _check_size(n: int | None, z: Path | None) -> None:
    """Refuse more samples than a person can box, before anything is loaded or created."""
    if n is not None:
        check_sample_count(n, f"--n {n}")
    if z is not None:
        _check_rows(z, "pass fewer", option="--z ")


def _read_z(path: Path, nz: int) -> np.ndarray:
    return load_z(path, nz).numpy()


def _check_rows(path: Path, advice: str, option: str = "") -> None:
    """Refuse a z file of more rows than an annotation may have, from its header alone (nothing
    allocated); what is not a .npy array is left to load_z, which says why."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return
    if isinstance(array, np.ndarray) and array.ndim and len(array) > MAX_SAMPLES:
        check_sample_count(len(array), f"{option}{path} holds {len(array)} z's", advice)


class AnnotationServer(ThreadingHTTPServer):
    """The page's server, already serving on a background thread when `serve` returns it.

    `url` is the page; `done` is set when the page's Done button is pressed (the server then
    stops itself); `stop()` ends it from Python; `annotation.summary()` counts the boxes."""

    daemon_threads = True

    def __init__(self, annotation: Annotation, port: int, scale: int, label: str):
        super().__init__(("127.0.0.1", port), PageHandler)
        self.annotation, self.scale, self.label = annotation, scale, label
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.done = threading.Event()
        self._closed = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, name="annotate",
                                        daemon=True)
        self._thread.start()

    def hosts(self) -> set[str]:
        return {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}

    def stop(self) -> None:
        """Stop serving and release the port (safe to call more than once, from any thread
        but the server's own request handlers)."""
        if self._closed.acquire(blocking=False):
            self.shutdown()
            self.server_close()
            self.annotation.close()

    def finish(self) -> None:
        """The page's Done: stop after the reply has gone out."""
        self.done.set()
        threading.Thread(target=self.stop, daemon=True).start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve(annotation: Annotation, port: int = 0, scale: int = 4,
          label: str = "window") -> AnnotationServer:
    """Serve the page for `annotation` on 127.0.0.1:`port` (0 = a free port); the server
    closes the annotation when it stops."""
    try:
        return AnnotationServer(annotation, port, scale, label)
    except OSError as err:
        annotation.close()
        raise AnalysisError(f"cannot listen on 127.0.0.1:{port} ({err.strerror}); pass "
                            "--port 0 for a free port") from None


def annotate(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    n: int | None = None,
    z: str | os.PathLike | None = None,
    seed: int | None = None,
    bn: str | None = None,
    port: int = 0,
    scale: int = 4,
    label: str = "window",
    device: str | torch.device = "auto",
    progress: bool = True,
) -> AnnotationServer:
    """Sample G (or use `z`) into `out` and serve the annotation page; returns the running
    server (`.url`, `.done`, `.stop()`), e.g. for a notebook. New folders get `n` samples
    (default 150, at most analysis.drawing.MAX_SAMPLES) drawn with `seed` (default 0) and `bn`
    (default "batch"); an existing annotation resumes, on its own z's, checkpoint and `bn`."""
    annotation = prepare_samples(ckpt, out, n=n, z=z, seed=seed, bn=bn, device=device,
                                 progress=progress)
    return serve(annotation, port=port, scale=scale, label=label)


class PageHandler(BaseHTTPRequestHandler):
    """GET /, /api/state, /samples/<name>; POST /api/samples (boxes), /api/done. Every refusal
    is a JSON {"error": message} the page shows."""

    server: AnnotationServer
    server_version = "annotate"  # HTTP/1.0: one request per connection, none left open

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def log_message(self, format: str, *args) -> None:
        """Quiet: the command's terminal shows its URL and summary only."""

    def _answer(self, route) -> None:
        try:
            self._check_host()
            route(urlsplit(self.path).path)
        except RequestError as err:
            self._send(err.status, {"error": str(err)})

    def _check_host(self) -> None:
        if self.headers.get("Host") not in self.server.hosts():
            raise RequestError(HTTPStatus.FORBIDDEN,
                               f"refused: the request is addressed to {self.headers.get('Host')!r}"
                               f", not to this machine's annotation server")

    def _get(self, path: str) -> None:
        if path == "/":
            page = resources.files("analysis").joinpath("annotate.html").read_bytes()
            self._send_bytes(HTTPStatus.OK, page, "text/html; charset=utf-8")
        elif path == "/api/state":
            a = self.server.annotation
            self._send(HTTPStatus.OK, {"label": self.server.label, "scale": self.server.scale,
                                       "size": a.size, "count": a.count, "saved_to": str(a.path),
                                       "samples": a.as_samples()})
        elif path.startswith(f"/{SAMPLES_FOLDER}/"):
            self._send_sample(unquote(path.removeprefix(f"/{SAMPLES_FOLDER}/")))
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _send_sample(self, name: str) -> None:
        if "\0" in name or len(name) > MAX_NAME:  # no file has such a name; asking the OS fails
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such sample: {name[:40]!r}")
        folder = (self.server.annotation.folder / SAMPLES_FOLDER).resolve()
        file = (folder / name).resolve()
        if not file.is_relative_to(folder):
            raise RequestError(HTTPStatus.FORBIDDEN, f"refused: {name} is outside the samples")
        if not file.is_file():
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such sample: {name}")
        self._send_bytes(HTTPStatus.OK, file.read_bytes(), "image/png")

    def _post(self, path: str) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin not in {f"http://{h}" for h in self.server.hosts()}:
            raise RequestError(HTTPStatus.FORBIDDEN, f"refused: a page from {origin} may not "
                                                     "change the annotation")
        body = self._read_json()
        if path == "/api/samples":
            entries = body.get("samples") if isinstance(body, dict) else None
            self._send(HTTPStatus.OK, self.server.annotation.update(entries))
        elif path == "/api/done":
            a = self.server.annotation
            self._send(HTTPStatus.OK, {**a.summary(), "saved_to": str(a.path)})
            self.server.finish()
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such action: {path}")

    def _read_json(self) -> object:
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               "refused: changes must be sent as application/json")
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):  # "²" is a digit to str.isdigit
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "refused: no Content-Length")
        if int(length) > MAX_BODY:  # refused unread
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"refused: {length} bytes is more than the {MAX_BODY} allowed")
        try:
            return json.loads(self.rfile.read(int(length)))
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"not JSON ({err})") from None
        except RecursionError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "refused: JSON nested too deep") from None

    def _send(self, status: HTTPStatus, obj: object) -> None:
        self._send_bytes(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _send_bytes(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # The page may load nothing from anywhere else: it works offline and leaks nothing.
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                         "script-src 'unsafe-inline'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)
