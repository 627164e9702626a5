"""The service's timestamp text: the fast path writes what datetime writes."""

from __future__ import annotations

import random
import time
from datetime import datetime

import pytest

from tidings.service import service


def _slow(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


@pytest.fixture(params=["UTC", "Europe/Paris", "America/St_Johns", "Asia/Kolkata"])
def zone(request, monkeypatch):
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    monkeypatch.setattr(service, "_last_second", (-1, "", ""))
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_iso_matches_datetime(zone):
    rng = random.Random(7)
    now = time.time()
    cases = [now + i * 0.000371 for i in range(5000)]  # many per second, as publishes come
    cases += [rng.uniform(0, 4e9) for _ in range(5000)]
    # rounding to the next second, and the seconds around a DST change in Paris
    cases += [float(s) + f for s in (1711846799, 1729990799, 1700000000)
              for f in (0.0, 0.0005, 0.9994999, 0.9995, 0.9999995, 0.99999949)]
    for ts in cases:
        assert service._iso(ts) == _slow(ts), ts
