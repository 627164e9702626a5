"""Where the HTTP channels may connect: the address rule and the URL check
(tidings/channels/base.py)."""

from __future__ import annotations

import ipaddress

import pytest

from tidings.channels.base import check_url, is_public

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
