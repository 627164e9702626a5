"""``tidings serve`` in one process: bind first, start, and only then say so.

The socket is bound before anything else, so that a port already taken (or
an address that is not this machine's) is one clear error before any
credentials are printed, and the "listening" line is printed by the server
itself once the app has started and the socket accepts connections.
"""

from __future__ import annotations

import gc
import signal
import socket
from collections.abc import Callable

import uvicorn


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; OSError says why not."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]):
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            quiet_gc()
            self._on_started()


# Allocations between two young-generation collections of the cyclic GC
# (CPython's default is 700).  A fan-out allocates a row and a delivery per
# recipient that live until the commit is announced: at 700 they were
# collected young and old again and again, and every so often a full
# collection walked the whole heap (the writer thread spent ~9% of its time
# in the collector under write fan-out).  Objects that die by reference
# count before the next collection cost the collector nothing, so a larger
# young generation mostly means less work.
GC_YOUNG = 50_000


def quiet_gc() -> None:
    """Once started: what exists now (modules, the app, its caches) moves out
    of the collector's reach (``gc.freeze``: a full collection no longer walks
    it), and young collections come less often (``GC_YOUNG``)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def ignore_drain_signals() -> None:
    """SIGUSR1 / SIGUSR2 (drain, undrain) would end the process until the
    app's start-up installs their handlers (tidings/api/app.py): ignored till then."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def run(app, sock: socket.socket, options: dict, on_started: Callable[[], None]) -> bool:
    """Serve ``app`` on ``sock`` until a signal stops it; False if it never started
    (the app's start-up failed: uvicorn has logged why)."""
    options = {k: v for k, v in options.items() if k not in ("host", "port")}
    ignore_drain_signals()
    server = _Server(uvicorn.Config(app, **options), on_started)
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn exits this way when the lifespan start-up fails
        return False
    finally:
        sock.close()
    return server.started
