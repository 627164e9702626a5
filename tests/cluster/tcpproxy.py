"""A TCP forwarder run as its own process: ``python -m tests.cluster.tcpproxy
LISTEN_PORT TARGET_HOST TARGET_PORT [--listen-host H] [--listen-netns NS]
[--connect-netns NS]``.

The outage tests put it between the nodes and PostgreSQL: killing it is a
network partition (open connections reset, new ones refused) without
touching the shared database server; starting it again heals the partition.

The fault report (bench/faults.py) also uses it to join a network namespace
to the host's loopback: with ``--listen-netns`` the listening socket is made
inside that namespace, with ``--connect-netns`` the connections to the
target are, so traffic stays on loopback or inside the namespaces."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import socket

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    """Move this thread into the network namespace open as ``fd`` (setns(2))."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def _enter(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)  # where `ip netns add` puts them
    try:
        _setns(fd)
    finally:
        os.close(fd)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _listener(host: str, port: int, netns: str | None) -> socket.socket:
    if not netns:
        return socket.create_server((host, port))
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _enter(netns)
        sock = socket.create_server((host, port))  # a socket stays in its namespace
        _setns(home)
        return sock
    finally:
        os.close(home)


async def main(a: argparse.Namespace) -> None:
    sock = _listener(a.listen_host, a.listen_port, a.listen_netns)
    if a.connect_netns:
        # every connection to the target is made after this, from inside
        _enter(a.connect_netns)

    async def handle(r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(a.target_host, a.target_port)
        except OSError:
            w1.close()
            return
        if w2.get_extra_info("sockname") == w2.get_extra_info("peername"):
            # nothing listened yet and the kernel gave the connection the
            # target's own port: TCP connected it to itself, an echo
            w2.close()
            w1.close()
            return
        await asyncio.gather(pipe(r1, w2), pipe(r2, w1))

    server = await asyncio.start_server(handle, sock=sock)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("listen_port", type=int)
    ap.add_argument("target_host")
    ap.add_argument("target_port", type=int)
    ap.add_argument("--listen-host", default="127.0.0.1")
    ap.add_argument("--listen-netns", default=None)
    ap.add_argument("--connect-netns", default=None)
    asyncio.run(main(ap.parse_args()))
