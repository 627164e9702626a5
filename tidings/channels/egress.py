"""Where the outbound HTTP channels (webhooks, Web Push) may connect, and the
HTTP client they share: the SSRF defences and the egress proxy.

Kept apart from the channel contract (tidings/channels/base.py) because it
needs httpx: the store and the service use the contract without loading an
HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import anyio
import httpcore
import httpx

from tidings.channels.base import Result, http_result, one_line
from tidings.config import check_proxy_url

if TYPE_CHECKING:
    from tidings.config import WebhookConfig, WebPushConfig

log = logging.getLogger("tidings.channels")

__all__ = ["NonPublicAddress", "ProxyTunnel", "VettedBackend", "check_url", "http_client",
           "http_post", "is_public"]

# -- where the HTTP channels may connect (SSRF) -----------------------------------------
#
# Webhook URLs come from app admins and push endpoints from end users' browsers,
# so a destination must never lead the server to itself or to its network.
# check_url() refuses what the URL alone shows (the scheme, localhost, an IP
# literal); VettedBackend refuses what only the resolver shows, on every new
# connection, and connects to the very address it vetted (docs/channels.md,
# "Destination URLs and SSRF").

# IPv6 forms that carry an IPv4 address are judged by it too: a NAT64 gateway
# (RFC 6052) or a 6to4 relay (RFC 3056) would carry 64:ff9b::a00:5 or
# 2002:a00:5:: to 10.0.0.5, and a socket sends ::ffff:10.0.0.5 (RFC 4291
# §2.5.5.2) there itself.  Python's is_global misses several of these, and
# which ones changes between releases, so they are spelled out here.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052, the well-known prefix
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
# Refused outright: IPv4-compatible addresses, deprecated by RFC 4291 §2.5.5.1
# (:: and ::1 are in there too), and NAT64 prefixes local to a network (RFC 8215).
_REFUSED = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:  # RFC 4380: (server, client)
        return address.teredo
    if address in _NAT64 or address in _TRANSLATED:
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    return ()


def is_public(address: Address) -> bool:
    """Whether an HTTP channel may connect to ``address``: a global unicast
    address (not loopback, private, link-local, shared, reserved, documentation
    nor multicast), and for an IPv6 address that carries IPv4 addresses
    (IPv4-mapped, NAT64, 6to4, Teredo, SIIT), every one of those as well."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _REFUSED):
            return False
        embedded = _embedded_ipv4(address)
        if not all(is_public(ipv4) for ipv4 in embedded):
            return False
        if embedded and (address.ipv4_mapped is not None or address in _NAT64
                         or address in _TRANSLATED):
            return True  # only the IPv4 address is ever reached
    return address.is_global and not address.is_multicast


def check_url(url: object, allow_insecure: bool = False) -> str:
    """Refuse destination URLs that would point the server at itself or its
    network (SSRF), as far as the URL shows: only ``https``, and not
    ``localhost`` nor an IP literal that :func:`is_public` refuses (loopback,
    private, link-local as the cloud metadata at 169.254.169.254, an IPv6
    form carrying such an IPv4 address...).  ``allow_insecure`` lifts both
    rules, for local development and tests.  A host *name* is checked when a
    connection is made, against every address it resolves to
    (:class:`VettedBackend`).  Returns the URL or raises ValueError.
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise ValueError("a destination URL is a string of at most 2048 characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"bad URL: {exc}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("a destination URL needs http(s)://host")
    try:
        httpx.URL(url).host  # noqa: B018 - what every request reads: a name IDNA takes
    except (httpx.InvalidURL, UnicodeError):  # idna's errors are UnicodeErrors
        raise ValueError("bad URL: the host is not a valid (IDNA) host name") from None
    if allow_insecure:
        return url
    if parts.scheme != "https":
        raise ValueError("a destination URL must use https")
    host = host.rstrip(".")  # "localhost." is localhost too
    if host == "localhost" or host.endswith(".localhost"):
        raise ValueError("a destination URL must not point at localhost")
    try:
        address: Address = ipaddress.ip_address(host)
    except ValueError:
        try:
            # The resolver also takes legacy IPv4 forms ("2130706433", "127.1",
            # "0x7f.0.0.1"); inet_aton reads them the same way.
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return url  # a name: VettedBackend checks what it resolves to
    if not is_public(address):
        raise ValueError(f"a destination URL must not point at a non-public address ({host})")
    return url


class NonPublicAddress(httpx.ConnectError):
    """A destination resolved to an address :func:`is_public` refuses, so no
    connection was opened.  :func:`http_post` makes it a permanent failure.

    The message names the host, not the address: it becomes the job's
    reason, which the app's admins read (the dead-letter list), and an
    address from the server's own resolver would map its internal network
    for them.  ``address`` is for the server's log."""

    def __init__(self, message: str, address: str):
        super().__init__(message)
        self.address = address


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in infos))


# RFC 8305 §5 (Happy Eyeballs): with several addresses, the next one is tried
# when the last fails or has not connected within this delay (anyio's too).
_ATTEMPT_DELAY = 0.25


def _interleaved(addresses: list[str]) -> list[str]:
    """The resolver's order (RFC 6724), families alternating (RFC 8305 §4)."""
    first = ":" in addresses[0]
    same = [a for a in addresses if (":" in a) == first]
    other = [a for a in addresses if (":" in a) != first]
    mixed = [a for pair in zip(same, other, strict=False) for a in pair]
    return mixed + same[len(other):] + other[len(same):]


class VettedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, made to connect to vetted addresses only.

    ``connect_tcp`` resolves the host once, refuses the connection with
    :class:`NonPublicAddress` if *any* of its addresses is not public (unless
    ``allow_private``), and connects to one of those very addresses, so a
    DNS answer that changes between the check and the connection (DNS
    rebinding) changes nothing.  Any non-public address refuses the name, rather
    than only being skipped: a name that mixes public and private addresses
    is a rebinding set-up or an internal name, and skipping would make it
    work or fail depending on which records are up.  ``inner`` makes the
    connection: straight, or a :class:`ProxyTunnel`.  TLS is untouched:
    httpcore hands ``start_tls`` the URL's host name, so SNI and the
    certificate check are against the name, not the address.
    """

    def __init__(self, allow_private: bool = False, *, resolve: Resolver = _getaddrinfo,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow_private = allow_private
        self._resolve = resolve
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):  # the resolution counts, as in anyio.connect_tcp
                addresses = await self._addresses(host, port)
                return await self._connect(_interleaved(addresses), port, local_address,
                                           socket_options)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {host} within {timeout}s") from None

    async def _addresses(self, host: str, port: int) -> list[str]:
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:  # socket.gaierror: no such name, no resolver
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}: no address")
        if not self.allow_private:
            refused = next((a for a in addresses if not is_public(ipaddress.ip_address(a))), None)
            if refused is not None:
                try:
                    ipaddress.ip_address(host)
                    where = "the destination is"
                except ValueError:
                    where = f"the destination {host} resolves to"
                raise NonPublicAddress(f"{where} a non-public address", refused)
        return addresses

    async def _connect(
        self,
        addresses: list[str],
        port: int,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        if len(addresses) == 1:
            return await self._inner.connect_tcp(addresses[0], port, local_address=local_address,
                                                 socket_options=socket_options)
        won: list[httpcore.AsyncNetworkStream] = []
        errors: list[str] = []

        async def attempt(address: str, done: anyio.Event) -> None:
            try:
                stream = await self._inner.connect_tcp(
                    address, port, local_address=local_address, socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                errors.append(f"{address}: {exc or type(exc).__name__}")
                return
            finally:
                done.set()
            if won:  # another attempt got there first
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
                return
            won.append(stream)
            group.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                for address in addresses:
                    done = anyio.Event()
                    group.start_soon(attempt, address, done)
                    with anyio.move_on_after(_ATTEMPT_DELAY):
                        await done.wait()
        except BaseException:  # cancelled or timed out after a connection was made
            if won:
                with anyio.CancelScope(shield=True):
                    await won[0].aclose()
            raise
        if not won:
            raise httpcore.ConnectError("; ".join(errors))
        return won[0]

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("outbound channels connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# A proxy's answer to CONNECT is a status line and a few headers; more is not one.
_MAX_PROXY_ANSWER = 16 * 1024


class ProxyTunnel(httpcore.AsyncNetworkBackend):
    """The inner backend of a :class:`VettedBackend` when an egress proxy is
    set: every connection is an HTTP ``CONNECT`` tunnel (RFC 9110 §9.3.6)
    through the proxy to the address the VettedBackend checked, never to the
    name, so the proxy cannot resolve it again and pick another address.
    httpcore then runs TLS inside the tunnel against the host name, as on a
    direct connection.

    The proxy's credentials (the URL's user and password) go only into the
    ``Proxy-Authorization`` header: no error or log line names them, and an
    error the job's reason shows does not name the proxy either (its
    address is the server's network, not the app admins')."""

    def __init__(self, url: str, *, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        parts = urlsplit(check_proxy_url(url))
        self._host, self._port = parts.hostname or "", parts.port or 80
        self._authorization = ""
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(user_pass.encode()).decode("ascii")
            self._authorization = f"Proxy-Authorization: Basic {token}\r\n"
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            stream = await self._inner.connect_tcp(self._host, self._port, timeout=timeout,
                                                   local_address=local_address,
                                                   socket_options=socket_options)
        except httpcore.ConnectError as exc:
            log.warning("the egress proxy %s:%s cannot be reached: %s", self._host, self._port,
                        exc)
            raise httpcore.ConnectError("the egress proxy cannot be reached") from None
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            try:
                await self._connect(stream, target)
            except (httpcore.ReadError, httpcore.WriteError) as exc:
                raise httpcore.ConnectError(
                    f"the egress proxy broke off CONNECT {target}: {exc}") from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return stream

    async def _connect(self, stream: httpcore.AsyncNetworkStream, target: str) -> None:
        await stream.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                           f"{self._authorization}\r\n".encode("ascii"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = await stream.read(4096)
            if not chunk:
                raise httpcore.ConnectError(
                    f"the egress proxy closed the connection without answering CONNECT {target}")
            answer += chunk
            if len(answer) > _MAX_PROXY_ANSWER:
                raise httpcore.ConnectError("the egress proxy's answer to CONNECT is too long")
        status = answer.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, rest = status.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise httpcore.ConnectError("the egress proxy did not answer CONNECT in HTTP/1.1")
        if not rest.startswith("2"):
            raise httpcore.ConnectError(
                f"the egress proxy refused CONNECT {target}: {one_line(rest)[:100]}")
        if not answer.endswith(b"\r\n\r\n"):
            # the destination cannot have spoken first (neither TLS nor HTTP does)
            raise httpcore.ConnectError("the egress proxy sent data after its answer to CONNECT")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("outbound channels connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _VettedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that connects through a
    :class:`VettedBackend`.  ``AsyncHTTPTransport`` takes no network backend,
    so this builds the pool its ``__init__`` would build (the same TLS context:
    certifi's roots, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``) and leaves the rest
    to it: every other method only uses ``self._pool``."""

    def __init__(self, limits: httpx.Limits, backend: VettedBackend) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def http_client(config: WebhookConfig | WebPushConfig,
                proxy: str | None = None) -> httpx.AsyncClient:
    """The client an HTTP channel sends with: per-phase timeouts, at most
    ``max_connections``, no redirects (a 3xx is the job's answer, see
    :func:`http_result`; a signed request is never re-sent elsewhere), and
    connections only to public addresses (:class:`VettedBackend`; all of them
    with ``allow_insecure``), through the egress ``proxy`` if one is given
    (:class:`ProxyTunnel`; ``http://`` destinations too).

    No proxy from the environment (``HTTP(S)_PROXY``, ``ALL_PROXY``) is used:
    httpx's proxies CONNECT to the name, so the proxy would resolve it and
    pick the address, and neither could be vetted here.
    """
    limits = httpx.Limits(max_connections=config.max_connections)
    backend = VettedBackend(allow_private=config.allow_insecure,
                            inner=ProxyTunnel(proxy) if proxy else None)
    return httpx.AsyncClient(
        transport=_VettedTransport(limits, backend),
        trust_env=False,
        timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
        follow_redirects=False,
        headers={"User-Agent": config.user_agent},
    )


async def http_post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    clock: Callable[[], float],
    gone: frozenset[int] = frozenset(),
    max_body: int = 512,
) -> Result:
    """POST ``body`` and classify the answer (:func:`http_result`).

    ``timeout`` bounds the whole attempt: httpx's own timeouts are per
    phase, so a receiver trickling one byte a second would never trip them.
    Only ``max_body`` raw bytes of the answer are read (and ``identity``
    encoding is asked for, so they cannot expand), which keeps a hostile
    receiver from making the worker buffer megabytes.
    """
    headers = {"Accept-Encoding": "identity", **headers}
    resp: httpx.Response | None = None
    head = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", url, content=body, headers=headers) as resp:
                try:
                    async for chunk in resp.aiter_raw():
                        head += chunk
                        if len(head) >= max_body:
                            break
                except httpx.HTTPError:
                    pass  # the status is what counts; a broken body is not a failure
    except TimeoutError:
        if resp is None:
            return Result.retry(f"timed out after {timeout:g}s")
        # The status arrived and only the body dawdled: the status decides, or
        # a 2xx whose body trickles would be sent again.
    except httpx.TimeoutException as exc:
        return Result.retry(f"timed out: {type(exc).__name__}")
    except NonPublicAddress as exc:  # what the name resolves to is not for us to reach
        log.warning("%s (%s)", exc, exc.address)  # the host, never the URL's secrets
        return Result.failed(str(exc))
    except httpx.TransportError as exc:
        return Result.retry(f"{type(exc).__name__}: {exc}")
    except httpx.InvalidURL as exc:
        return Result.failed(f"bad URL: {exc}")
    ok = 200 <= resp.status_code < 300
    # one line, no control characters: it ends up in logs and the dead-letter list
    detail = "" if ok else one_line(bytes(head[:max_body]).decode("utf-8", "replace"))
    return http_result(resp.status_code, resp.headers.get("retry-after"), clock(),
                       gone=gone, detail=detail)
