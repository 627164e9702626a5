"""Per-connection outbound queue accounting (sans I/O).

A connection's pending frames are bounded by count and by bytes.  When a push
would cross either cap the queue reports overflow; the transport then closes
the connection with the "reconnect" close code, and the client resumes from
its cursor later -- a slow reader never grows memory without bound and never
slows the others (docs/design.md §2.6).
"""

from __future__ import annotations


class OutboundQueue:
    __slots__ = ("frames", "nbytes", "max_events", "max_bytes", "overflowed")

    def __init__(self, max_events: int, max_bytes: int):
        self.frames: list[bytes] = []
        self.nbytes = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.overflowed = False

    def push(self, frame: bytes) -> int:
        """Queue ``frame``: how many frames are pending with it (1: the queue
        was empty, the writer must be woken), or 0 (and ``overflowed``) when
        a cap is crossed."""
        if self.overflowed:
            return 0
        frames = self.frames
        n = len(frames)
        size = self.nbytes + len(frame)
        if n >= self.max_events or size > self.max_bytes:
            self.overflowed = True
            return 0
        frames.append(frame)
        self.nbytes = size
        return n + 1

    def drain(self) -> list[bytes]:
        """Take everything pending, for one write."""
        frames = self.frames
        self.frames = []
        self.nbytes = 0
        return frames

    def __len__(self) -> int:
        return len(self.frames)
