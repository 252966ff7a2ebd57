"""The reference implementations the scores are checked against (pytorch-fid, torch-fidelity),
imported from the folder `make install` puts them in, beside the environment (.venv/references)
rather than in it: they need torchvision, whose wheel does not load its compiled operators
beside every torch build. Only torchvision's pure-Python parts are used (Inception's layers), so
its operator registrations are skipped; the tests are skipped, saying why, when the folder is
missing."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

FOLDER = Path(sys.prefix) / "references"


def references() -> None:
    """Make pytorch_fid and torch_fidelity importable (pytest skip when not installed)."""
    if not FOLDER.is_dir():
        pytest.skip(f"no reference implementations in {FOLDER} (`make install` puts them there)")
    if str(FOLDER) not in sys.path:
        sys.path.append(str(FOLDER))
        # torchvision registers fake kernels for its compiled operators on import; without its
        # extension loaded those operators do not exist, so that step is left out.
        sys.modules.setdefault("torchvision._meta_registrations",
                               types.ModuleType("torchvision._meta_registrations"))
