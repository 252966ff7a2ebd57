"""The output-folder rule (core.outputs) as every folder-writing command applies it."""

import errno
import fcntl
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from analysis.cli import main as analysis_cli
from core.outputs import OutputError, hold_output
from gan.checkpoint import save_checkpoint
from gan.cli import main as gan_cli
from gan.models import Discriminator, Generator
from pipeline.cli import main as pipeline_cli
from pipeline.shards import make_shards
from pipeline.sources import open_source
from tests.conftest import write_photos

CONFIG = {"image_size": 32, "nz": 100, "width": 32, "arch": "compact", "prior": "uniform"}

# Every command that writes a folder, with arguments that would otherwise run it.
COMMANDS = {
    "pipeline shards": (pipeline_cli, ["shards", "{photos}", "--workers", "1"]),
    "pipeline faces": (pipeline_cli, ["faces", "{photos}", "--workers", "1"]),
    "pipeline dedup": (pipeline_cli, ["dedup", "{photos}", "--workers", "1"]),
    "pipeline demo": (pipeline_cli, ["demo"]),
    "gan train": (gan_cli, ["train", "--data", "{shards}", "--image-size", "32", "--steps", "1",
                            "--device", "cpu"]),
    "analysis remove-windows": (analysis_cli, ["remove-windows", "--ckpt", "{ckpt}", "--boxes",
                                               "{boxes}"]),
    "analysis guided-backprop": (analysis_cli, ["guided-backprop", "--ckpt", "{ckpt}", "--data",
                                                "{shards}"]),
    "analysis memorization": (analysis_cli, ["memorization", "--ckpt", "{ckpt}", "--train",
                                             "{shards}", "--holdout", "{shards}", "--n", "2",
                                             "--k", "1"]),
    "analysis classify": (analysis_cli, ["classify", "--ckpt", "{ckpt}", "--train", "{shards}",
                                         "--test", "{shards}", "--C", "1"]),
    "analysis annotate": (analysis_cli, ["annotate", "--ckpt", "{ckpt}", "--n", "2"]),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiles):
    root = tmp_path_factory.mktemp("inputs")
    write_photos(root / "photos", ["1.png", "2.png"], tiles)
    for i, label in enumerate(["cat", "cat", "dog", "dog"]):
        write_photos(root / "classes" / label, [f"{i}.png"], tiles[i:])
    make_shards([root / "classes"], root / "shards", size=32, label_from="parent", workers=1,
                progress=False)
    np.save(root / "z.npy", np.zeros((2, 100), np.float32))
    torch.manual_seed(0)
    save_checkpoint(root / "last.pt", {
        "config": CONFIG, "G": Generator(32, 100, 32, "compact").state_dict(),
        "D": Discriminator(32, 32, "compact").state_dict()})
    (root / "boxes.json").write_text(
        '{"z": "z.npy", "samples": [{"index": 0, "boxes": [[0, 0, 16, 16]]}]}')
    return {"photos": root / "photos", "shards": root / "shards", "ckpt": root / "last.pt",
            "boxes": root / "boxes.json"}


def snapshot(folder):
    """Everything a command could have changed in `folder`: its entries' names and bytes and
    the folder's own modification time (a file made and removed again changes it)."""
    return (os.stat(folder).st_mtime_ns,
            {p.name: p.read_bytes() for p in sorted(folder.iterdir())})


@pytest.mark.parametrize("command", COMMANDS)
def test_a_refused_folder_is_left_as_it_was(inputs, tiles, tmp_path, command):
    cli, args = COMMANDS[command]
    theirs = tmp_path / "theirs"
    write_photos(theirs, ["holiday.png"], tiles)
    (theirs / "notes.txt").write_text("mine")
    before = snapshot(theirs)
    args = [a.format(**inputs) for a in args]
    out = [str(theirs)] if command == "pipeline demo" else ["--out", str(theirs)]
    for extra in ([], [] if command == "analysis annotate" else ["--overwrite"]):
        result = CliRunner().invoke(cli, [*args, *out, *extra])
        assert result.exit_code == 1, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("Error: ") and "not empty" in last, result.output
        assert snapshot(theirs) == before


def test_the_lock_is_made_in_an_empty_folder_and_sources_never_read_it(tiles, tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, ["1.png"], tiles)
    before = open_source(photos).fingerprint()
    with hold_output(tmp_path / "new", command="test"):
        assert (tmp_path / "new" / ".lock").is_file()
    (photos / ".lock").write_text("")
    (photos / ".owner.json").write_text('{"command": "pipeline shards"}')
    source = open_source(photos)
    assert source.count() == 1 and source.fingerprint() == before


def test_a_file_system_without_locks_is_one_line(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    refused = pytest.raises(OutputError, match="cannot lock files.*an --out on a local disk")
    with refused, hold_output(tmp_path / "out", command="test"):
        pass
