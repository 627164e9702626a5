"""``tidings serve --workers N``: N worker processes on one port.

Each worker opens its own listening socket with ``SO_REUSEPORT``, so the
kernel spreads new connections evenly over the workers.  With one shared
socket (uvicorn's own multi-worker mode) whichever worker wakes first takes
the connection, and a test saw one worker take all 40 of 40 streams: for
long-lived WebSockets that imbalance never corrects itself, and one worker
would hit the per-process file-descriptor limit long before the others.

The supervisor here only starts workers, restarts one that dies, and passes
SIGTERM / SIGINT on, so that each worker drains (tidings/api/app.py) and
exits; and SIGUSR1 / SIGUSR2, so that each worker drains without stopping,
or takes streams again (an HTTP ``POST /v1/node/drain`` reaches only the
worker its connection landed on).  A worker started again after it died
starts undrained.  Workers are spawned, not forked: they share nothing with the parent
but the settings, passed as JSON in the environment.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger("tidings")

RESTART_DELAY = 1.0  # seconds before replacing a worker that died


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _worker(settings_json: str, options: dict, started) -> None:
    """One worker process: its own socket on the shared port, one uvicorn server.
    ``started`` is released once it accepts connections."""
    from tidings import serving

    serving.ignore_drain_signals()  # a restarted worker: until its app installs them
    from tidings.api.app import SETTINGS_ENV, app_from_env

    os.environ[SETTINGS_ENV] = settings_json
    sock = _listen(options["host"], options["port"], options.get("backlog", 2048))
    serving.run(app_from_env(), sock, options, started.release)


def check_reuseport(host: str, port: int) -> None:
    """Fail early, in the parent, if the port is taken or SO_REUSEPORT is missing."""
    probe = _listen(host, port, 1)
    probe.close()


def supervise(workers: int, settings_json: str, options: dict,
              on_listening: Callable[[], None] = lambda: None) -> None:
    """Run the workers until SIGTERM/SIGINT; ``on_listening`` is called once,
    when every first worker accepts connections."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False
    started = ctx.Semaphore(0)
    waiting = workers  # first workers not yet listening

    def start() -> BaseProcess:
        proc = ctx.Process(target=_worker, args=(settings_json, options, started),
                           daemon=False)
        proc.start()
        return proc

    def on_signal(sig, frame) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: each drains, then exits

    def pass_on(sig, frame) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, sig)

    # ignored until the workers exist (the default would end the supervisor),
    # and by the first workers, which inherit it, until their apps start
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    procs = [start() for _ in range(workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, pass_on)
    signal.signal(signal.SIGUSR2, pass_on)
    while not stopping:
        time.sleep(0.5 if waiting <= 0 else 0.05)
        while waiting > 0 and started.acquire(block=False):
            waiting -= 1
            if waiting == 0:
                on_listening()
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stopping:
                log.error("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                time.sleep(RESTART_DELAY)
                procs[i] = start()
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
