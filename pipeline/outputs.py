"""The one rule for output folders, shared by every command that writes one.

`--out` must be a folder (created when missing). A finished run in it (its summary file is
there) is never replaced silently: the command refuses unless `--overwrite` is given. What a
command does with an *unfinished* run (start over, or continue with `--resume`) is its own
business; this module only decides whether it may touch the folder at all.
"""

from __future__ import annotations

from pathlib import Path


class OutputError(Exception):
    """The output folder cannot be used as asked; the message says what to do instead."""


def claim_output(out: Path, *, overwrite: bool, finished: str = "summary.json") -> Path:
    """Create `out` if needed and refuse a finished run (`out/finished` exists) unless
    `overwrite`. Returns `out` as a Path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if (out / finished).exists() and not overwrite:
        raise OutputError(
            f"{out} already holds a finished run ({finished}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    return out
