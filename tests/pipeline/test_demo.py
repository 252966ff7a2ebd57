"""`pipeline demo`: the corpus `make shards` builds when no data is configured."""

from __future__ import annotations

import pytest

from core.outputs import OutputError
from pipeline import demo


def test_the_demo_folder_follows_the_output_folder_rule(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "build_scraped", lambda folder, rng, copies: (
        calls.append(("scraped", copies)), (folder / "a").mkdir(parents=True),
        (folder / "a" / "x.png").write_bytes(b"x"))[0])
    monkeypatch.setattr(demo, "build_lmdb", lambda folder, rng: demo.write_lmdb(
        folder, [("k", b"v")]))
    out = tmp_path / "demo"
    first = demo.build_demo(out, copies=2, seed=1)
    assert (first["scraped"], first["lmdb"], first["reused"]) == (1, 1, False)
    again = demo.build_demo(out, copies=2, seed=1)  # make shards asks every time: reused
    assert again["reused"] and len(calls) == 1
    with pytest.raises(OutputError, match="--overwrite"):  # never silently another corpus
        demo.build_demo(out, copies=2, seed=2)
    rebuilt = demo.build_demo(out, copies=3, seed=2, overwrite=True)
    assert not rebuilt["reused"] and calls[-1] == ("scraped", 3)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        demo.build_demo(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
