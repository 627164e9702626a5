"""Where the HTTP channels may connect: the address rule, the URL check, and
the client that resolves, vets and pins (tidings/channels/egress.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpcore
import httpx
import pytest

from tests.channels.proxy_peer import connect_proxy
from tests.channels.tls_peer import local_name, tls_receiver
from tidings.channels.egress import (
    NonPublicAddress,
    ProxyTunnel,
    VettedBackend,
    check_url,
    http_client,
    is_public,
)
from tidings.channels.webhook import WebhookConfig

# -- the address rule ---------------------------------------------------------------------

NOT_PUBLIC = [
    "127.0.0.1", "10.0.0.5", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "255.255.255.255", "224.0.0.1", "239.255.255.250", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "2001:db8::1", "ff02::1", "ff0e::1",
    # IPv4-mapped (a socket reaches the IPv4 address itself)
    "::ffff:127.0.0.1", "::ffff:10.0.0.5", "::ffff:169.254.169.254",
    # IPv4-compatible, deprecated: refused whatever it carries
    "::127.0.0.1", "::10.0.0.5", "::8.8.8.8",
    # SIIT (RFC 2765)
    "::ffff:0:127.0.0.1", "::ffff:0:a00:5",
    # 6to4 (RFC 3056): 2002:<IPv4>::
    "2002:7f00:1::", "2002:7f00:1::1", "2002:a00:5::1", "2002:a9fe:a9fe::",
    # NAT64, the well-known prefix (RFC 6052), and local-use prefixes (RFC 8215)
    "64:ff9b::7f00:1", "64:ff9b::127.0.0.1", "64:ff9b::a00:5", "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::5db8:d822",
    # Teredo (RFC 4380): client 127.0.0.1 (stored inverted), server 65.54.227.120
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
]

PUBLIC = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::200e",
          "::ffff:93.184.216.34", "2002:5db8:d822::1", "64:ff9b::5db8:d822"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses_and_the_ipv6_forms_that_carry_one(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address):
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_check_url_refuses_every_non_public_literal(address):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(ValueError, match="non-public address"):
        check_url(f"https://{host}/hook")
    assert check_url(f"https://{host}/hook", allow_insecure=True)


@pytest.mark.parametrize("address", PUBLIC)
def test_check_url_takes_public_literals(address):
    host = f"[{address}]" if ":" in address else address
    assert check_url(f"https://{host}:8443/hook") == f"https://{host}:8443/hook"


# -- the backend: resolve once, vet every address, connect to one of them ---------------------


class Recording(httpcore.AsyncNetworkBackend):
    """The inner backend of a VettedBackend under test: records where it was
    asked to connect, and hands back a stream that answers nothing."""

    def __init__(self):
        self.connects: list[str] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None,
                          socket_options=None):
        self.connects.append(host)
        return httpcore.AsyncMockStream([])

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)


def resolver(*answers: list[str]):
    """Answers each lookup with the next list (the last one repeats), counting lookups."""
    calls: list[str] = []

    async def resolve(host, port):
        calls.append(host)
        return answers[min(len(calls), len(answers)) - 1]

    return resolve, calls


async def test_a_name_with_any_non_public_address_is_refused_before_connecting():
    resolve, calls = resolver(["93.184.216.34", "10.0.0.5", "2606:4700:4700::1111"])
    inner = Recording()
    backend = VettedBackend(resolve=resolve, inner=inner)
    with pytest.raises(NonPublicAddress) as caught:
        await backend.connect_tcp("hooks.acme.test", 443, timeout=5)
    # the address goes to the server's log only: the reason is the app admins' to read
    assert str(caught.value) == "the destination hooks.acme.test resolves to a non-public address"
    assert caught.value.address == "10.0.0.5"
    assert inner.connects == [] and calls == ["hooks.acme.test"]


async def test_the_connection_goes_to_the_address_that_was_vetted():
    # a rebinding name: public when checked, loopback on every later lookup
    resolve, calls = resolver(["93.184.216.34"], ["127.0.0.1"])
    inner = Recording()
    backend = VettedBackend(resolve=resolve, inner=inner)
    await backend.connect_tcp("rebind.acme.test", 443, timeout=5)
    assert calls == ["rebind.acme.test"]  # one lookup, for the check and the connection
    assert inner.connects == ["93.184.216.34"]  # the vetted address, not the name again
    with pytest.raises(NonPublicAddress) as caught:
        await backend.connect_tcp("rebind.acme.test", 443, timeout=5)  # a new connection
    assert caught.value.address == "127.0.0.1"
    assert inner.connects == ["93.184.216.34"]


async def test_allow_private_lifts_the_rule_but_still_pins():
    resolve, _ = resolver(["10.0.0.5"])
    inner = Recording()
    await VettedBackend(allow_private=True, resolve=resolve, inner=inner).connect_tcp(
        "intranet.acme.test", 443, timeout=5)
    assert inner.connects == ["10.0.0.5"]


async def test_a_name_that_does_not_resolve_is_a_connect_error():
    async def nxdomain(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(httpcore.ConnectError, match="cannot resolve nowhere.acme.test"):
        await VettedBackend(resolve=nxdomain).connect_tcp("nowhere.acme.test", 443, timeout=5)


async def test_a_resolver_that_hangs_is_bounded_by_the_connect_timeout():
    async def hang(host, port):
        await asyncio.Event().wait()

    with pytest.raises(httpcore.ConnectTimeout):
        await VettedBackend(resolve=hang).connect_tcp("slow.acme.test", 443, timeout=0.05)


async def test_the_next_address_is_tried_when_one_refuses():
    async def accept(reader, writer):
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    resolve, _ = resolver(["127.0.0.2", "::1", "127.0.0.1"])  # nothing listens on the first two
    try:
        stream = await VettedBackend(allow_private=True, resolve=resolve).connect_tcp(
            "multi.acme.test", port, timeout=5)
        assert stream.get_extra_info("server_addr")[0] == "127.0.0.1"
        await stream.aclose()
        resolve, _ = resolver(["127.0.0.2", "::1"])
        with pytest.raises(httpcore.ConnectError, match=r"127\.0\.0\.2: .*; ::1: "):
            await VettedBackend(allow_private=True, resolve=resolve).connect_tcp(
                "multi.acme.test", port, timeout=5)
    finally:
        server.close()
        await server.wait_closed()


# -- the client, against a real name and a real HTTPS receiver --------------------------------


async def test_a_name_that_resolves_to_this_machine_is_never_connected_to(tmp_path, monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses) as receiver:
        # its certificate is trusted: only the address rule can stop the request
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        async with http_client(WebhookConfig()) as client:
            with pytest.raises(NonPublicAddress, match=f"the destination {name} resolves to a "
                                                       r"non-public address$"):
                await client.post(f"https://{name}:{receiver.port}/hook", content=b"{}")
    assert receiver.connections == [] and receiver.requests == []


async def test_tls_checks_the_name_while_the_connection_goes_to_the_address(tmp_path,
                                                                           monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses) as receiver:
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        async with http_client(WebhookConfig(allow_insecure=True)) as client:
            response = await client.post(f"https://{name}:{receiver.port}/hook", content=b"{}")
    assert response.status_code == 204
    assert receiver.server_names == [name]  # SNI: the name, although the socket got an address
    assert receiver.connections[0] in addresses
    head, body = receiver.requests[0]
    assert head.startswith(b"POST /hook HTTP/1.1\r\n") and body == b"{}"
    assert f"\r\nHost: {name}:{receiver.port}\r\n".encode() in head


async def test_a_certificate_for_another_name_is_refused(tmp_path, monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses, certificate_for="other.acme.test") \
            as receiver:
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        async with http_client(WebhookConfig(allow_insecure=True)) as client:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.post(f"https://{name}:{receiver.port}/hook", content=b"{}")
    assert len(receiver.connections) == 1 and receiver.requests == []


async def test_proxies_from_the_environment_are_not_used(tmp_path, monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses) as receiver:
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(variable, "http://127.0.0.1:9")  # nothing there
        async with http_client(WebhookConfig(allow_insecure=True)) as client:
            response = await client.post(f"https://{name}:{receiver.port}/hook", content=b"{}")
    assert response.status_code == 204 and len(receiver.requests) == 1


# -- through an egress proxy (docs/channels.md#egress-proxy) ----------------------------------


async def test_the_proxy_is_asked_for_the_checked_address_never_for_the_name(tmp_path,
                                                                            monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses) as receiver, connect_proxy() as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        async with http_client(WebhookConfig(allow_insecure=True), proxy.url()) as client:
            response = await client.post(f"https://{name}:{receiver.port}/hook", content=b"{}")
    assert response.status_code == 204
    address, = receiver.connections  # the proxy's own connection, to the address it was given
    assert proxy.targets == [f"{address}:{receiver.port}"] and address in addresses
    assert receiver.server_names == [name]  # TLS inside the tunnel: SNI and the check, the name
    head, body = receiver.requests[0]
    assert f"\r\nHost: {name}:{receiver.port}\r\n".encode() in head and body == b"{}"


async def test_a_non_public_destination_is_refused_before_the_proxy_is_asked(tmp_path,
                                                                            monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses) as receiver, connect_proxy() as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        async with http_client(WebhookConfig(), proxy.url()) as client:
            with pytest.raises(NonPublicAddress):
                await client.post(f"https://{name}:{receiver.port}/hook", content=b"{}")
    assert proxy.connections == 0 and receiver.connections == []


async def test_a_rebinding_name_cannot_lead_the_proxy_elsewhere():
    # the proxy wants credentials this tunnel lacks: it answers 407 after recording the target
    resolve, calls = resolver(["2606:4700:4700::1111"], ["10.0.0.5"])
    async with connect_proxy(credentials="tidings:pw") as proxy:
        backend = VettedBackend(resolve=resolve, inner=ProxyTunnel(proxy.url()))
        with pytest.raises(httpcore.ConnectError, match=r"the egress proxy refused CONNECT "
                           r"\[2606:4700:4700::1111\]:443: 407 Proxy Authentication Required$"):
            await backend.connect_tcp("rebind.acme.test", 443, timeout=5)
        with pytest.raises(NonPublicAddress):
            await backend.connect_tcp("rebind.acme.test", 443, timeout=5)
    assert proxy.targets == ["[2606:4700:4700::1111]:443"] and proxy.connections == 1
    assert calls == ["rebind.acme.test"] * 2


@pytest.mark.parametrize("url", ["https://proxy.internal:3128", "proxy.internal:3128",
                                 "http://", "http://proxy.internal:99999",
                                 "http://u:secret@proxy.internal:3128/path",
                                 "socks5://u:secret@proxy.internal:1080"])
def test_a_proxy_url_that_is_not_one_is_refused_without_repeating_it(url):
    with pytest.raises(ValueError, match="egress_proxy must be an http:// URL") as caught:
        ProxyTunnel(url)
    assert "secret" not in str(caught.value)
