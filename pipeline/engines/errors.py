"""What an engine tells the user: it cannot be used as asked, or a chunk kept killing its
worker process. Both are one line; the stage adds what it kept and how to continue."""

from __future__ import annotations

from core.errors import UserError


class EngineError(UserError):
    """The engine cannot be used as asked (Ray missing, cluster unreachable); for the user."""


class ChunkLost(EngineError):
    """A chunk whose worker process died every time it ran (killed, out of memory): given up
    after as many retries as Ray makes, with the chunk named in the message."""

    def __init__(self, index: int, chunk: list, runs: int):
        first = getattr(chunk[0], "key", None) if chunk else None
        named = f"chunk {index}" + (f" (first input {first!r})" if first is not None else "")
        super().__init__(f"{named}: its worker process died each of the {runs} times it ran "
                         "(killed, or out of memory?)")
        self.index = index
