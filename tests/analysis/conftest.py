"""Fixtures of the analysis tests: the synthetic rooms of examples/remove_windows_rooms.py.

test_windows proves that example's experiment, so the tests load the example itself (by path:
examples/ is not a package) instead of keeping a second copy of how a room is drawn.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "remove_windows_rooms.py"


@pytest.fixture(scope="session")
def rooms() -> ModuleType:
    """The example module: make_rooms, window_boxes, write_room_shards, the experiment."""
    spec = importlib.util.spec_from_file_location("remove_windows_rooms", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
