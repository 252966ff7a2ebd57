"""`analysis annotate`: the page in a real browser (headless Chromium), the server's refusals
over HTTP, resuming a folder, and the command's start and stop."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from analysis.annotate import annotate, prepare_samples, sample_name
from analysis.cli import main
from analysis.drawing import BATCH_SIZE, MAX_SAMPLES
from analysis.windows import load_boxes
from core.files import write_json_atomic
from core.pixels import to_uint8
from gan.checkpoint import load_models, save_checkpoint
from gan.models import Discriminator, Generator
from gan.sample import generate
from tests.processes import read_line, run, script, started, wait_for

CHROMIUM = "/usr/bin/chromium"
CONFIG = {"image_size": 32, "nz": 100, "width": 32, "arch": "compact", "prior": "uniform"}
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "annotate.png"


def _untrained_checkpoint(path: Path, seed: int = 0, width: int = 32) -> Path:
    """An untrained 32x32 checkpoint (G's weights from `seed`), as `gan train` writes it."""
    torch.manual_seed(seed)
    G, D = Generator(32, 100, width, "compact"), Discriminator(32, width, "compact")
    save_checkpoint(path, {"config": {**CONFIG, "width": width}, "G": G.state_dict(),
                           "D": D.state_dict()})
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained 32x32 checkpoint; or the trained one (32x32, nz 100) that
    ANNOTATE_SCREENSHOT_CKPT names, to remake the screenshot in docs/analysis.md."""
    if os.environ.get("ANNOTATE_SCREENSHOT_CKPT"):
        return Path(os.environ["ANNOTATE_SCREENSHOT_CKPT"])
    return _untrained_checkpoint(tmp_path_factory.mktemp("annotate") / "last.pt")


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory) -> Path:
    """Another G of the same shape: it draws other images from the same z's."""
    return _untrained_checkpoint(tmp_path_factory.mktemp("other") / "last.pt", seed=1)


@pytest.fixture
def server(ckpt, tmp_path):
    """A live annotation server on 6 samples, stopped after the test."""
    server = annotate(ckpt, tmp_path / "ann", n=6, device="cpu")
    yield server
    server.stop()


def _request(server, path: str, body: bytes | None = None, **headers: str) -> tuple[int, dict]:
    """Status and JSON reply of a request to the live server (refusals included)."""
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(server.url.rstrip("/") + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _post_samples(server, samples: list[dict]) -> tuple[int, dict]:
    return _request(server, "/api/samples", json.dumps({"samples": samples}).encode())


def _drawn_with(ckpt: Path, bn: str = "batch", batch_size: int = BATCH_SIZE) -> dict:
    return {"ckpt": str(ckpt), "ckpt_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
            "bn": bn, "batch_size": batch_size}


def test_every_change_is_saved_in_the_schema_remove_windows_reads(ckpt, server):
    folder = server.annotation.folder
    assert json.loads((folder / "boxes.json").read_text()) == {
        "z": "z.npy", "drawn_with": _drawn_with(ckpt), "samples": []}
    assert np.load(folder / "z.npy").shape == (6, 100)
    assert sorted(p.name for p in (folder / "samples").iterdir()) == [sample_name(i)
                                                                      for i in range(6)]
    status, reply = _post_samples(server, [{"index": 4, "boxes": [[2, 3, 20, 30.5]]},
                                           {"index": 1, "boxes": []}])
    assert status == 200 and reply == {"seen": 2, "boxed": 1, "boxes": 1}
    saved = json.loads((folder / "boxes.json").read_text())
    assert saved == {"z": "z.npy", "drawn_with": _drawn_with(ckpt),
                     "samples": [{"index": 1, "boxes": []},
                                 {"index": 4, "boxes": [[2, 3, 20, 30.5]]}]}
    annotations = load_boxes(folder / "boxes.json")
    assert annotations.boxes == {1: [], 4: [(2, 3, 20, 30.5)]} and len(annotations.z) == 6


def _samples_body(*boxes: object, index: object = 0) -> bytes:
    return json.dumps({"samples": [{"index": index, "boxes": list(boxes)}]}).encode()


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, ["not JSON"]),
    (b'{"boxes": []}', 400, ["expected", "samples"]),
    (_samples_body(index=6), 400, ["sample 6 does not exist", "0 to 5"]),
    (_samples_body(index=-1), 400, ["sample -1 does not exist"]),
    (_samples_body(index="0"), 400, ["does not exist"]),
    (_samples_body([0, 0, 33, 10]), 400, ["x1 <= 32"]),
    (_samples_body([-1, 0, 5, 5]), 400, ["0 <= x0"]),
    (_samples_body([10, 0, 10, 5]), 400, ["x0 < x1"]),
    (_samples_body([0, 9, 5, 4]), 400, ["y0 < y1"]),
    (_samples_body([0, 0, 5]), 400, ["[x0, y0, x1, y1]"]),
    (_samples_body(["0", 0, 5, 5]), 400, ["numbers"]),
    (b'{"samples": [{"index": 0, "boxes": [[0, 0, NaN, 5]]}]}', 400, ["numbers"]),
])
def test_bad_changes_are_refused_with_a_message_and_nothing_saved(server, body, status, words):
    before = (server.annotation.folder / "boxes.json").read_bytes()
    code, reply = _request(server, "/api/samples", body)
    assert code == status
    assert all(word in reply["error"] for word in words), reply
    assert (server.annotation.folder / "boxes.json").read_bytes() == before


@pytest.mark.parametrize("path", ["/samples/../z.npy", "/samples/../../secret.txt",
                                  "/samples/%2e%2e/%2e%2e/secret.txt", "/samples/..%2fz.npy"])
def test_no_file_outside_the_samples_is_served(server, path):
    (server.annotation.folder.parent / "secret.txt").write_text("secret")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", path)  # sent as written: urllib would not keep the dots
    response = connection.getresponse()
    body = response.read()
    assert response.status == 403 and b"outside the samples" in body and b"secret\"" not in body


def test_the_samples_and_the_page_are_served(server):
    with urllib.request.urlopen(server.url + "samples/" + sample_name(5), timeout=10) as r:
        assert r.headers["Content-Type"] == "image/png" and r.read()[:4] == b"\x89PNG"
    with urllib.request.urlopen(server.url, timeout=10) as r:
        page = r.read().decode()
    assert 'image-rendering: pixelated' in page and "<script src" not in page
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere
    assert _request(server, "/samples/" + sample_name(6))[0] == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1",
                                  "192.168.1.2:{port}"])
def test_requests_addressed_to_another_host_are_refused(server, host):
    host = host.format(port=server.port)
    for path, body in (("/api/state", None), ("/api/samples", _samples_body([0, 0, 5, 5]))):
        code, reply = _request(server, path, body, Host=host)
        assert code == 403 and "not to this machine" in reply["error"]
    assert server.annotation.summary()["boxes"] == 0
    assert _request(server, "/api/state", Host=f"localhost:{server.port}")[0] == 200


def test_a_page_of_another_origin_cannot_change_the_boxes(server):
    code, reply = _request(server, "/api/samples", _samples_body([0, 0, 5, 5]),
                           Origin="http://evil.example")
    assert code == 403 and "evil.example" in reply["error"]
    code, _ = _request(server, "/api/samples", _samples_body([0, 0, 5, 5]),
                       Origin=f"http://127.0.0.1:{server.port}")
    assert code == 200


def test_a_form_post_is_refused(server):
    code, reply = _request(server, "/api/samples", _samples_body([0, 0, 5, 5]),
                           **{"Content-Type": "text/plain"})
    assert code == 415 and "application/json" in reply["error"]


def test_an_oversized_body_is_refused_unread(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("POST", "/api/samples")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(1 << 30))  # and never sent
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and b"more than" in response.read()


def test_the_server_listens_on_this_machine_only(server):
    assert server.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")


def test_reopening_the_folder_resumes_its_boxes_and_samples(ckpt, server):
    folder = server.annotation.folder
    _post_samples(server, [{"index": 2, "boxes": [[1, 1, 9, 9]]}, {"index": 3, "boxes": []}])
    server.stop()
    z, sample = (folder / "z.npy").read_bytes(), (folder / "samples" / sample_name(2)).read_bytes()
    again = annotate(ckpt, folder, device="cpu")  # no --n: the folder's 6 samples
    try:
        state = _request(again, "/api/state")[1]
        assert state["count"] == 6 and state["samples"] == [
            {"index": 2, "boxes": [[1, 1, 9, 9]]}, {"index": 3, "boxes": []}]
        assert (folder / "z.npy").read_bytes() == z
        assert (folder / "samples" / sample_name(2)).read_bytes() == sample
    finally:
        again.stop()


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert all(word in result.output for word in words), result.output


def test_options_that_would_change_an_annotation_are_refused(ckpt, tmp_path):
    folder = tmp_path / "ann"
    annotate(ckpt, folder, n=6, seed=3, device="cpu").stop()
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((6, 100), np.float32))
    base = ["annotate", "--ckpt", str(ckpt), "--out", str(folder), "--device", "cpu"]
    run = CliRunner().invoke
    _one_line_error(run(main, base + ["--n", "10"]), "--n 10", "6 samples", "choose another")
    _one_line_error(run(main, base + ["--z", str(other)]), "--z", "differs", "drop --z")
    _one_line_error(run(main, base + ["--seed", "4"]), "--seed 4", "not drawn with that seed")
    new = ["annotate", "--ckpt", str(ckpt), "--out", str(tmp_path / "new")]
    _one_line_error(run(main, new + ["--z", str(other), "--n", "5"]), "--n 5", "holds 6")
    np.save(other, np.full((6, 100), np.nan))
    _one_line_error(run(main, new + ["--z", str(other)]), "finite real numbers")
    # The same z, n and seed are no conflict: the annotation reopens.
    same = annotate(ckpt, folder, n=6, seed=3, z=folder / "z.npy", device="cpu")
    same.stop()
    assert len(np.load(folder / "z.npy")) == 6


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "samples").iterdir())}


def test_another_checkpoint_or_bn_cannot_redraw_an_annotation(ckpt, other_ckpt, tmp_path):
    folder = tmp_path / "ann"
    first = annotate(ckpt, folder, n=6, device="cpu")
    _post_samples(first, [{"index": 2, "boxes": [[1, 1, 9, 9]]}])
    first.stop()
    boxes, samples = (folder / "boxes.json").read_bytes(), _pngs(folder)
    base = ["annotate", "--out", str(folder), "--device", "cpu"]
    run = CliRunner().invoke
    _one_line_error(run(main, base + ["--ckpt", str(other_ckpt)]),
                    f"--ckpt {other_ckpt}", "is not the checkpoint", f"pass --ckpt {ckpt}",
                    "--bn batch", "choose another --out")
    _one_line_error(run(main, base + ["--ckpt", str(ckpt), "--bn", "running"]),
                    "--bn running", "drawn with --bn batch", "choose another --out")
    assert (folder / "boxes.json").read_bytes() == boxes and _pngs(folder) == samples

    # The same checkpoint under another name is the same G: the annotation reopens.
    copy = shutil.copy(ckpt, tmp_path / "copy.pt")
    annotate(copy, folder, device="cpu").stop()
    assert (folder / "boxes.json").read_bytes() == boxes and _pngs(folder) == samples


def test_reopening_keeps_the_annotations_bn(ckpt, tmp_path):
    folder = tmp_path / "ann"
    annotate(ckpt, folder, n=4, bn="running", device="cpu").stop()
    samples = _pngs(folder)
    again = annotate(ckpt, folder, device="cpu")  # no bn: the annotation's own
    again.stop()
    assert again.annotation.drawn.bn == "running" and _pngs(folder) == samples
    _one_line_error(CliRunner().invoke(main, ["annotate", "--ckpt", str(ckpt), "--out",
                                              str(folder), "--bn", "batch"]),
                    "--bn batch", "drawn with --bn running")


def test_an_annotation_from_before_the_record_reopens_with_a_warning(ckpt, tmp_path):
    """Annotations made before the checkpoint and --bn were recorded: taken to be drawn with
    the ones given now, as one batch (as annotate drew then), said in a warning, and recorded."""
    folder = tmp_path / "ann"
    n = BATCH_SIZE + 4  # more than one batch today; one batch then
    annotate(ckpt, folder, n=n, device="cpu", progress=False).stop()
    spec = json.loads((folder / "boxes.json").read_text())
    del spec["drawn_with"]
    spec["samples"] = [{"index": 3, "boxes": [[1, 1, 9, 9]]}]
    write_json_atomic(folder / "boxes.json", spec)
    G = load_models(ckpt, device="cpu")[0]
    then = to_uint8(generate(G, torch.from_numpy(np.load(folder / "z.npy")), "batch"))

    reopened = annotate(ckpt, folder, device="cpu", progress=False)
    reopened.stop()
    assert len(reopened.annotation.warnings) == 1
    assert "does not record how its samples were drawn" in reopened.annotation.warnings[0]
    assert json.loads((folder / "boxes.json").read_text())["drawn_with"] == _drawn_with(
        ckpt, batch_size=n)
    assert cv2.imread(str(folder / "samples" / sample_name(n - 1)))[..., ::-1].tolist() == \
        then[n - 1].tolist()

    # Nothing seen yet: nothing sits anywhere, so it is drawn as a new annotation, silently.
    spec = {"z": "z.npy", "samples": []}
    write_json_atomic(folder / "boxes.json", spec)
    fresh = annotate(ckpt, folder, device="cpu", progress=False)
    fresh.stop()
    assert fresh.annotation.warnings == [] and fresh.annotation.drawn.batch_size == BATCH_SIZE


def test_more_samples_than_a_person_can_box_are_refused_before_anything_is_made(ckpt,
                                                                               tmp_path):
    help_text = " ".join(CliRunner().invoke(main, ["annotate", "--help"]).output.split())
    assert "--n INTEGER RANGE Samples to draw for a new annotation" in help_text
    assert f"[1<=x<={MAX_SAMPLES}]" in help_text
    folder = tmp_path / "ann"
    base = ["annotate", "--ckpt", str(ckpt), "--out", str(folder), "--device", "cpu"]
    for n in (MAX_SAMPLES + 1, 100_000, 0):
        result = CliRunner().invoke(main, base + ["--n", str(n)])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"Invalid value for '--n': {n} is not in the range 1<=x<={MAX_SAMPLES}" in \
            result.output
    many = tmp_path / "many.npy"
    np.save(many, np.zeros((MAX_SAMPLES + 1, 100), np.float32))
    _one_line_error(CliRunner().invoke(main, base + ["--z", str(many)]),
                    f"--z {many} holds {MAX_SAMPLES + 1} z's", f"1 to {MAX_SAMPLES} samples")
    assert not folder.exists()


@contextlib.contextmanager
def generator_batches() -> Iterator[list[int]]:
    """The batch sizes every Generator in this process is called with, while the block runs."""
    sizes = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, Generator):
            sizes.append(len(args[0]))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield sizes
    finally:
        handle.remove()


def _sample_pixels(folder: Path, index: int) -> np.ndarray:
    return cv2.imread(str(folder / "samples" / sample_name(index)))[..., ::-1]


@pytest.mark.parametrize("bn", ["batch", "running"])
def test_samples_are_drawn_in_batches_of_a_fixed_size_and_redrawn_the_same(ckpt, tmp_path, bn):
    folder = tmp_path / "ann"
    n = 2 * BATCH_SIZE + 10
    with generator_batches() as sizes:
        prepare_samples(ckpt, folder, n=n, bn=bn, device="cpu", progress=False).close()
    assert sizes == [BATCH_SIZE, BATCH_SIZE, 10]  # never all n at once

    # Each image is G(z) of its own batch: consecutive z's, BATCH_SIZE at a time.
    G = load_models(ckpt, device="cpu")[0]
    z = torch.from_numpy(np.load(folder / "z.npy"))
    for start in (0, BATCH_SIZE, 2 * BATCH_SIZE):
        images = to_uint8(generate(G, z[start:start + BATCH_SIZE], bn))
        for index in (start, start + 9):
            assert (_sample_pixels(folder, index) == images[index - start]).all()
    assert json.loads((folder / "boxes.json").read_text())["drawn_with"]["batch_size"] == \
        BATCH_SIZE

    samples = _pngs(folder)
    prepare_samples(ckpt, folder, device="cpu", progress=False).close()  # reopened: redrawn
    assert _pngs(folder) == samples


def test_up_to_one_batch_of_samples_are_the_images_of_one_batch_as_before(ckpt, tmp_path):
    """The paper's 150, and anything up to BATCH_SIZE: the images annotate drew before it drew
    in batches, so annotations made then keep their images."""
    folder = tmp_path / "ann"
    with generator_batches() as sizes:
        prepare_samples(ckpt, folder, n=BATCH_SIZE, device="cpu", progress=False).close()
    assert sizes == [BATCH_SIZE]
    G = load_models(ckpt, device="cpu")[0]
    images = to_uint8(generate(G, torch.from_numpy(np.load(folder / "z.npy")), "batch"))
    assert all((_sample_pixels(folder, i) == images[i]).all() for i in (0, 150, BATCH_SIZE - 1))


def test_drawing_shows_progress_unless_told_not_to(ckpt, tmp_path, capfd):
    prepare_samples(ckpt, tmp_path / "shown", n=3, device="cpu").close()
    assert "draw samples" in capfd.readouterr().err
    prepare_samples(ckpt, tmp_path / "quiet", n=3, device="cpu", progress=False).close()
    assert capfd.readouterr().err == ""


PEAK_MEMORY = """
import resource, sys
from analysis.annotate import prepare_samples
prepare_samples(sys.argv[1], sys.argv[2], n=int(sys.argv[3]), device="cpu",
                progress=False).close()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_samples(tmp_path):
    """Peak memory of annotating MAX_SAMPLES samples vs a quarter of them, each in a fresh
    process. Drawn as one batch, the 4x samples of this G need ~100 MB more."""
    ckpt = _untrained_checkpoint(tmp_path / "wide.pt", width=64)
    peaks = {}
    for n in (MAX_SAMPLES // 4, MAX_SAMPLES):
        done = run([sys.executable, "-c", PEAK_MEMORY, str(ckpt), str(tmp_path / str(n)),
                    str(n)], timeout=300)
        assert done.returncode == 0, done.stderr
        assert len(list((tmp_path / str(n) / "samples").iterdir())) == n
        peaks[n] = int(done.stdout.split()[-1]) / 1024  # MiB
    assert peaks[MAX_SAMPLES] - peaks[MAX_SAMPLES // 4] < 40, peaks


def test_remove_windows_analyses_the_images_that_were_boxed(ckpt, tmp_path):
    """With batch statistics, remove-windows draws the annotation's z's in the batches annotate
    drew them in: the top row of comparison.png is the boxed samples, past the first batch."""
    folder = tmp_path / "ann"
    n = BATCH_SIZE + 44
    annotation = prepare_samples(ckpt, folder, n=n, device="cpu", progress=False)
    annotation.update([{"index": i, "boxes": [[0, 0, 16, 16]] if i % 2 else []}
                       for i in range(0, n, 7)])
    annotation.close()
    result = CliRunner().invoke(main, ["remove-windows", "--ckpt", str(ckpt), "--boxes",
                                       str(folder / "boxes.json"), "--out", str(tmp_path / "rw"),
                                       "--show", str(n), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    sheet = cv2.imread(str(tmp_path / "rw" / "comparison.png"))[..., ::-1]
    for index in (0, BATCH_SIZE + 3, n - 1):  # 32 px tiles, 2 px apart
        tile = sheet[2:34, 2 + 34 * index:34 + 34 * index]
        assert (tile == _sample_pixels(folder, index)).all(), index


def test_a_damaged_boxes_file_is_a_one_line_error(ckpt, tmp_path):
    folder = tmp_path / "ann"
    annotate(ckpt, folder, n=4, device="cpu").stop()
    (folder / "boxes.json").write_text('{"z": "z.npy", "samples": [{"index": 9, "boxes": []}]}')
    result = CliRunner().invoke(main, ["annotate", "--ckpt", str(ckpt), "--out", str(folder)])
    _one_line_error(result, "boxes.json", "cannot resume", "sample 9")
    spec = {"z": "z.npy", "drawn_with": {**_drawn_with(ckpt), "bn": "weird"}, "samples": []}
    (folder / "boxes.json").write_text(json.dumps(spec))
    result = CliRunner().invoke(main, ["annotate", "--ckpt", str(ckpt), "--out", str(folder)])
    _one_line_error(result, "boxes.json", '"drawn_with" must be', "fix or remove it")


def test_a_folder_being_annotated_cannot_be_opened_twice(ckpt, server):
    result = CliRunner().invoke(main, ["annotate", "--ckpt", str(ckpt), "--out",
                                       str(server.annotation.folder)])
    _one_line_error(result, "in use by `analysis annotate`")
    server.stop()
    annotate(ckpt, server.annotation.folder, device="cpu").stop()  # released when stopped


def test_a_busy_port_is_a_one_line_error(ckpt, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["annotate", "--ckpt", str(ckpt), "--out",
                                           str(tmp_path / "ann"), "--n", "2",
                                           "--port", str(port), "--no-progress"])
    _one_line_error(result, f"127.0.0.1:{port}", "--port 0")


@contextlib.contextmanager
def annotate_command(ckpt: Path, out: Path, *options: str,
                     sigint_ignored: bool = False) -> Iterator[tuple[subprocess.Popen, str]]:
    """`analysis annotate` as a user runs it (as a background job, with `sigint_ignored`;
    without the progress bar, which precedes the URL line); yields the process and the URL it
    printed, and leaves no process behind."""
    with started(script("analysis", "annotate", "--ckpt", str(ckpt), "--out", str(out),
                        "--device", "cpu", "--no-progress", *options),
                 sigint_ignored=sigint_ignored, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True) as process:
        line = read_line(process, timeout=120, what="the URL line")
        assert "http://127.0.0.1:" in line, line
        yield process, line.split(" at ")[1].split()[0]


@pytest.mark.parametrize("how, sigint_ignored", [
    (signal.SIGINT, False),  # Ctrl-C in a terminal
    (signal.SIGINT, True),  # started as a background job: SIGINT inherited as ignored
    (signal.SIGTERM, False),
])
def test_a_stop_signal_ends_the_command_cleanly_with_its_summary(ckpt, tmp_path, how,
                                                                  sigint_ignored):
    with annotate_command(ckpt, tmp_path / "ann", "--n", "3",
                          sigint_ignored=sigint_ignored) as (process, url):
        with urllib.request.urlopen(url + "api/state", timeout=10) as response:
            assert json.loads(response.read())["count"] == 3
        process.send_signal(how)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0 and "Traceback" not in output
    assert output.strip() == f"0 images seen, 0 with boxes, 0 boxes -> {tmp_path / 'ann'}" \
                             "/boxes.json"
    with pytest.raises(OSError):  # the port is closed
        urllib.request.urlopen(url, timeout=5)


def test_a_stop_signal_right_after_the_url_line_still_gives_the_summary(ckpt, tmp_path):
    with annotate_command(ckpt, tmp_path / "ann", "--n", "2") as (process, _):
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0 and "Traceback" not in output and "Aborted" not in output
    assert output.strip().endswith("0 boxes -> " + str(tmp_path / "ann" / "boxes.json"))


def _loaded(pid: int, library: str) -> bool:
    """Whether process `pid` has begun loading `library` (a shared object of it is mapped)."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("library", ["numpy/", "torch/", "sklearn/", "scipy/"])
def test_a_stop_signal_while_starting_is_one_line(ckpt, tmp_path, library):
    """Sent while numpy, torch, scikit-learn or scipy load (an exception raised half-way
    through a library's import can leave it broken): one line, never a traceback. (On a
    loaded machine it may arrive while the samples are drawn; without a progress bar, whose
    first frame a signal can cut before the bar can clear itself, only the line is left.)"""
    with started(script("analysis", "annotate", "--ckpt", str(ckpt), "--out",
                        str(tmp_path / "ann"), "--device", "cpu", "--no-progress"),
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        wait_for(lambda: _loaded(process.pid, library) or process.poll() is not None,
                 timeout=120, what=f"{library} loading")
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0].decode()
    assert "Traceback" not in output, output
    lines = [line for line in _on_terminal(output).splitlines() if line.strip()]
    if any("http://127.0.0.1:" in line for line in lines):  # it had started: a clean finish
        assert process.returncode == 0 and "0 boxes" in lines[-1]
    else:
        assert process.returncode == 130 and len(lines) == 1, output
        assert "stopped by SIGINT" in lines[0]


def _on_terminal(output: str) -> str:
    """What a terminal shows of `output`: of each line, what follows its last carriage return
    (a progress bar redraws, and clears itself, with them)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in output.split("\n"))


def _wait_saved(folder: Path, index: int, boxes: list) -> None:
    """Wait (at most the second a change may take) until sample `index` is saved with `boxes`."""
    deadline = time.monotonic() + 1.0
    while _saved(folder).get(index) != boxes:
        assert time.monotonic() < deadline, f"not saved within 1 s: sample {index} with " \
                                            f"{boxes}; boxes.json has {_saved(folder)}"
        time.sleep(0.02)


def _saved(folder: Path) -> dict[int, list]:
    spec = json.loads((folder / "boxes.json").read_text())
    return {s["index"]: s["boxes"] for s in spec["samples"]}


def _drag(page, index: int, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Drag over sample `index` between two points given in its on-screen pixels."""
    box = page.locator(f'.sample[data-index="{index}"]').bounding_box()
    page.mouse.move(box["x"] + start[0], box["y"] + start[1])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0], box["y"] + end[1], steps=5)
    page.mouse.up()


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"needs Debian's Chromium at {CHROMIUM} (CI installs it)")
def test_boxes_drawn_in_the_browser_feed_remove_windows(ckpt, tmp_path):
    from playwright.sync_api import sync_playwright

    folder = tmp_path / "ann"
    with annotate_command(ckpt, folder, "--n", "24", "--scale", "4") as (process, url):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 980, "height": 600})
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url + "#grid")
            page.wait_for_selector('.sample[data-index="23"] img')

            # Samples are 32 px shown at 128: 4 screen pixels per sample pixel.
            _drag(page, 0, (76, 8), (124, 52))  # (where the screenshot's G draws windows)
            _drag(page, 1, (60, 4), (124, 60))
            _wait_saved(folder, 1, [[15, 1, 31, 15]])
            assert _saved(folder)[0] == [[19, 2, 31, 13]]
            assert "2" in page.locator("#counter").inner_text()
            page.locator('.sample[data-index="0"] .box').click()  # select it...
            if os.environ.get("ANNOTATE_SCREENSHOT_CKPT"):
                page.screenshot(path=SCREENSHOT)
            page.keyboard.press("Delete")  # ...and remove it
            _wait_saved(folder, 0, [])  # deleted

            page.keyboard.press("g")  # one at a time, from the selected sample 0
            page.keyboard.press("n")
            page.keyboard.press("n")
            assert page.locator(".sample.current").get_attribute("data-index") == "2"
            _drag(page, 2, (0, 0), (40, 40))  # drawn, then undone
            _wait_saved(folder, 2, [[0, 0, 10, 10]])
            page.keyboard.press("u")
            _wait_saved(folder, 2, [])  # undone

            page.goto(url + "#1")
            page.reload()  # the URL keeps the place: sample 1, one at a time
            shown = page.locator(".sample.current")
            assert shown.get_attribute("data-index") == "1" and shown.is_visible()
            assert shown.locator(".box").count() == 1
            assert page.locator('.sample[data-index="0"] .box').count() == 0
            page.keyboard.press("p")
            assert page.locator(".sample.current").get_attribute("data-index") == "0"
            assert page.locator('.sample[data-index="1"]').is_hidden()

            page.evaluate("api('POST', '/api/samples', {samples: [{index: 99, boxes: []}]})"
                          ".catch((err) => showStatus(err.message, true))")
            assert "sample 99 does not exist" in page.locator("#status.error").inner_text()

            page.locator("#done").click()
            page.wait_for_selector("text=The server has stopped")
            browser.close()
        output = process.communicate(timeout=30)[0]
    assert all(u.startswith(url) for u in requested), "the page loaded something from elsewhere"
    assert process.returncode == 0 and "Traceback" not in output
    seen = len(_saved(folder))
    assert output.strip() == f"{seen} images seen, 1 with boxes, 1 boxes -> {folder}/boxes.json"
    assert seen >= 3 and _saved(folder)[1] == [[15, 1, 31, 15]]

    result = CliRunner().invoke(main, ["remove-windows", "--ckpt", str(ckpt), "--boxes",
                                       str(folder / "boxes.json"), "--out",
                                       str(tmp_path / "removed"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "removed" / "report.json").read_text())
    assert report["annotated_samples"] == 1 and report["positive_cells"] == 16



@pytest.mark.parametrize(("method", "path", "headers", "body", "status"), [
    ("GET", "/samples/%00", {}, b"", 404),
    ("GET", "/samples/" + "a" * 5000, {}, b"", 404),
    ("POST", "/api/samples", {"Content-Length": "200000"}, b"[" * 200_000, 400),
    ("POST", "/api/samples", {"Content-Length": "²"}, b"", 411),
])
def test_hostile_requests_are_json_errors_without_a_traceback(server, capfd, method, path,
                                                               headers, body, status):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest(method, path)
    for name, value in {"Content-Type": "application/json", **headers}.items():
        connection.putheader(name, value)
    connection.endheaders(body or None)
    response = connection.getresponse()
    assert response.status == status and "error" in json.loads(response.read())
    assert "Traceback" not in capfd.readouterr().err
