"""The feature extractor a score is computed in: the FID Inception network from a weight file
the user supplies, or any TorchScript module (image -> vector) for domains where Inception is
the wrong yardstick.

Nothing is downloaded, ever. The Inception file is looked for, in this order, at `--inception
PATH`, at `$DCGAN_INCEPTION`, and under the cache folder (`cache_root()`) and torch's hub
checkpoint folder (where pytorch-fid itself keeps it). A missing file is one line that says
what to get and where to put it. The file's SHA-256 must begin with the 8 hex digits in its
name, the check torch.hub does on it; the full digest goes into every report, so two scores
can be told apart by the network that made them.

An extractor takes a batch of float images in [-1, 1] (N, 3, S, S) and returns (N, D) float
features; the Inception network resizes to 299 x 299 itself.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import UserError
from core.torch_files import load_plain
from gan.quality.options import CACHE_ENV, INCEPTION_ENV, INCEPTION_FILE, INCEPTION_URL

INCEPTION_SHA256_PREFIX = "6726825d"  # the digest's first 8 hex digits, in the file's name


class ExtractorError(UserError):
    """The feature extractor cannot be found or used; the message says what to do."""


@dataclass
class Extractor:
    """A network that turns images into feature vectors, and what names it in a report."""

    name: str
    path: str
    sha256: str
    resize_rule: str  # how images reach the network's input size: part of the cache key
    module: nn.Module

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "sha256": self.sha256,
                "resize": self.resize_rule}


def cache_root() -> Path:
    """The project's cache folder: `$DCGAN_CACHE`, else `$XDG_CACHE_HOME/dcgan-pipeline`, else
    `~/.cache/dcgan-pipeline` (the Inception file and the real images' statistics live here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dcgan-pipeline"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inception_candidates() -> list[Path]:
    """Where the Inception file is looked for when no path is given, in order."""
    places = [cache_root() / INCEPTION_FILE,
              Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]
    if os.environ.get(INCEPTION_ENV):
        places.insert(0, Path(os.environ[INCEPTION_ENV]))
    return places


def find_inception(path: str | os.PathLike | None, prefix: str = "") -> Path:
    """The Inception weight file to use; ExtractorError, in one line, when there is none
    (`prefix` spells the options as the command does, e.g. "metrics-" for `gan train`)."""
    if path is not None:
        if not Path(path).is_file():
            raise ExtractorError(f"{path}: no such file (--{prefix}inception wants "
                                 f"{INCEPTION_FILE}, from {INCEPTION_URL})")
        return Path(path)
    for candidate in inception_candidates():
        if candidate.is_file():
            return candidate
    raise ExtractorError(
        f"no Inception weights: download {INCEPTION_URL} and put it in {cache_root()}/ (or "
        f"pass --{prefix}inception PATH, or set ${INCEPTION_ENV}); --{prefix}features FILE "
        "uses another extractor")


def load_inception(path: str | os.PathLike | None, *, check_sha256: bool = True) -> Extractor:
    """The FID Inception network with the weights of `path` (or of the file found, see
    `find_inception`). `check_sha256=False` accepts other weights of the same shape (tests and
    benchmarks use random ones); a report still names their digest."""
    from gan.quality.inception import RESIZE_RULE, FIDInceptionV3

    found = find_inception(path)
    digest = sha256_of(found)
    if check_sha256 and not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise ExtractorError(f"{found}: SHA-256 {digest[:16]}... is not that of {INCEPTION_FILE} "
                             f"(it begins with {INCEPTION_SHA256_PREFIX}); download it again "
                             f"from {INCEPTION_URL}")
    state = load_plain(found)
    module = FIDInceptionV3()
    if not isinstance(state, dict):
        raise ExtractorError(f"{found}: holds a {type(state).__name__}, not the FID Inception "
                             f"state dict ({INCEPTION_FILE})")
    try:
        module.load_state_dict(state)
    except RuntimeError:  # load_state_dict's report of missing, unexpected or misshapen keys
        raise ExtractorError(f"{found}: not the FID Inception state dict ({INCEPTION_FILE})"
                             ) from None
    return Extractor("inception-v3-fid", str(found), digest, RESIZE_RULE, module.eval())


def find_extractor(inception: str | os.PathLike | None = None,
                   features: str | os.PathLike | None = None, prefix: str = "") -> Path:
    """The extractor's file, found without loading it (a command checks this before any
    work); ExtractorError, in one line, when there is none."""
    if inception is not None and features is not None:
        raise ExtractorError(f"give --{prefix}inception or --{prefix}features, not both")
    if features is None:
        return find_inception(inception, prefix)
    if not Path(features).is_file():
        raise ExtractorError(f"{features}: no such file (--{prefix}features wants a TorchScript "
                             "module saved with torch.jit.save)")
    return Path(features)


def load_torchscript(path: str | os.PathLike) -> Extractor:
    """A TorchScript module (images in [-1, 1] -> (N, D) features) saved with torch.jit.save.
    A TorchScript file is a program: use files you trust."""
    path = Path(path)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExtractorError(f"{path}: not a TorchScript module ({first})") from None
    return Extractor(f"torchscript:{path.name}", str(path), sha256_of(path),
                     "none (the module's own)", module.eval())


def open_extractor(inception: str | os.PathLike | None = None,
                   features: str | os.PathLike | None = None, prefix: str = "") -> Extractor:
    """The extractor a command names: `features` (TorchScript) when given, else Inception."""
    found = find_extractor(inception, features, prefix)
    return load_torchscript(found) if features is not None else load_inception(found)
