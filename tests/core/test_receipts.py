"""tidings.core.receipts: decoding a device's batch, the buffer, the rows the stores write."""

from __future__ import annotations

import json

import pytest

from tidings.core.receipts import (
    MAX_DEVICES,
    ReceiptBuffer,
    Receipts,
    decode_receipts,
    first_per_user,
    per_device,
)

N1, N2 = "01J9" + "A" * 22, "01J9" + "B" * 22


def batch(**kw) -> bytes:
    return json.dumps({"type": "receipts", **kw}).encode()


def test_a_batch_names_its_device_and_label():
    msg = decode_receipts(batch(device="b6c1-4f", label="Firefox on Linux", delivered=[N1]))
    assert (msg.device, msg.label, msg.delivered, msg.displayed) == (
        "b6c1-4f", "Firefox on Linux", [N1], [])
    assert decode_receipts(batch(delivered=[N1])).device is None  # the connection's


@pytest.mark.parametrize("fields", [
    {"device": ""}, {"device": "x" * 65}, {"device": "a\x00b"}, {"device": "tab\t"},
    {"device": "del\x7f"}, {"device": "~http"}, {"device": 7}, {"label": ""},
    {"label": "y" * 65}, {"label": "line\nbreak"}, {"label": None, "extra": 1},
])
def test_a_bad_device_or_label_makes_the_message_no_receipts(fields):
    assert decode_receipts(batch(delivered=[N1], **fields)) is None


def test_printable_unicode_is_a_device_and_a_label():
    msg = decode_receipts(batch(device="téléphone de Zoé 📱", label="Safari sur iPhone"))
    assert msg.device == "téléphone de Zoé 📱"


def test_the_buffer_keeps_each_devices_first_time():
    buf = ReceiptBuffer()
    phone = Receipts(device="phone", label="Phone", delivered=[N1, N1], displayed=[N1])
    assert buf.add("a", "u", phone, "~conn1", 10.0) == 3
    assert buf.add("a", "u", Receipts(device="phone", delivered=[N1]), "~conn2", 11.0) == 1
    assert buf.add("a", "u", Receipts(delivered=[N1, N2]), "~conn3", 12.0) == 2
    assert sorted(buf.take()) == [
        ("a", N1, "delivered", "u", "phone", "Phone", 10.0),
        ("a", N1, "delivered", "u", "~conn3", None, 12.0),
        ("a", N1, "displayed", "u", "phone", "Phone", 10.0),
        ("a", N2, "delivered", "u", "~conn3", None, 12.0),
    ]
    assert buf.take() == []


def test_the_buffer_is_bounded_and_a_failed_write_comes_back_first():
    buf = ReceiptBuffer(max_pending=3)
    assert buf.add("a", "u", Receipts(device="d", delivered=[N1, N2], displayed=[N1, N2]),
                   "~c", 1.0) == 3
    assert buf.dropped == 1
    rows = buf.take()
    buf.add("a", "u", Receipts(device="d", delivered=[N1]), "~c", 5.0)     # again, later
    buf.add("a", "u", Receipts(device="e", delivered=[N1]), "~c", 5.0)     # new
    buf.restore(rows)
    kept = buf.take()
    assert len(kept) == 3 and buf.dropped == 2
    assert ("a", N1, "delivered", "u", "d", None, 1.0) in kept  # the first time, not 5.0


def test_rows_for_the_stores_one_per_user_and_the_first_devices():
    rows = [("a", N1, "delivered", "u", f"d{i}", None, 100.0 - i) for i in range(30)]
    rows.append(("a", N1, "delivered", "v", "x", None, 7.0))
    assert first_per_user(rows) == [("a", N1, "delivered", "u", 71.0),
                                    ("a", N1, "delivered", "v", 7.0)]
    kept = per_device(rows)
    assert [r[4] for r in kept if r[3] == "u"] == [f"d{i}" for i in range(29, 29 - MAX_DEVICES, -1)]
    assert [r[4] for r in kept if r[3] == "v"] == ["x"]
