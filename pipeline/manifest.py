"""Per-record outcomes, the manifest that records them, and the stage summary.

Nothing is lost silently: every input record ends in exactly one status from
`pipeline.statuses`, written as one JSON line in input order; the summary's counts add up to
the number of inputs.
"""

from __future__ import annotations

import json
import platform
import sys
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from pipeline.sinks import Sample
from pipeline.statuses import DESCRIPTIONS

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.json"


@dataclass
class Outcome:
    """What happened to one input record (what a stage's worker returns per record)."""

    key: str
    status: str
    reason: str = ""
    info: dict = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    def as_record(self) -> dict:
        """The outcome as its manifest line (a JSON-able dict)."""
        entry = {"key": self.key, "status": self.status}
        if self.reason:
            entry["reason"] = self.reason
        entry.update(self.info)
        return entry


class Manifest:
    """Appends outcome lines to `manifest.jsonl`; `offset` is where a resume may cut back to."""

    def __init__(self, path: Path, offset: int = 0, counts: dict | None = None):
        mode = "r+b" if offset and path.exists() else "wb"
        self._file = open(path, mode)  # noqa: SIM115 - closed in close()
        self._file.truncate(offset if mode == "r+b" else 0)
        self._file.seek(0, 2)
        self.counts: Counter = Counter(counts or {})

    def record(self, outcome: Outcome) -> None:
        self._file.write((json.dumps(outcome.as_record(), sort_keys=True) + "\n").encode("utf-8"))
        self.counts[outcome.status] += 1

    @property
    def offset(self) -> int:
        self._file.flush()
        return self._file.tell()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        self._file.close()


def software_versions() -> dict:
    """Versions that change results, recorded so a run can be reproduced.

    Read from package metadata rather than by importing: importing webdataset would pull in
    torch (~1 s) at the end of every stage.
    """
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    packages = {"numpy": "numpy", "opencv": "opencv-python-headless", "pillow": "pillow",
                "webdataset": "webdataset", "torch": "torch"}
    for name, distribution in packages.items():
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def stage_summary(stage: str, counts: dict, seconds: float, processed: int, *,
                  device: str = "cpu", **fields: object) -> dict:
    """The summary.json every command that writes a manifest shares: what ran, the counts by
    status (with what each status means), the stage's own `fields`, the device it ran on (the
    CPU, but for the dedup hash's training), time and speed (over the `processed` records of
    this run), and the software versions."""
    counts = dict(sorted(counts.items()))
    return {
        "stage": stage,
        "inputs": sum(counts.values()),
        "counts": counts,
        "statuses": {s: DESCRIPTIONS[s] for s in counts},
        **fields,
        "device": device,
        "seconds": round(seconds, 3),
        "images_per_s": round(processed / seconds, 1) if seconds > 0 else None,
        "versions": software_versions(),
    }


def summary_line(stage: str, counts: dict, main_status: str, seconds: float, where: str) -> str:
    """The one line a person reads at the end: kept, rejected by reason, speed, where."""
    total = sum(counts.values())
    others = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != main_status and n)
    rate = total / seconds if seconds > 0 else 0.0
    rejected = f" ({others})" if others else ""
    return (
        f"{stage}: {counts.get(main_status, 0)} of {total} inputs {main_status}{rejected} "
        f"in {seconds:.1f} s ({rate:.0f} images/s) -> {where}"
    )
