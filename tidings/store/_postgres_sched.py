"""The PostgreSQL store's scheduled notifications and delivery counters.

Each function runs on one pooled connection (postgres.py's ``_call``).
Counters are upserts that add (``n = n + EXCLUDED.n``): the row lock makes
concurrent flushes from several nodes queue, so no increment is lost, and
rows are written in key order so that two flushes never deadlock.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["delivery_counts", "record_deliveries"]

_RECORD = """
INSERT INTO delivery_counts AS d (app_id, nid, channel, field, n)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
  AS t(app_id, nid, channel, field, n)
ORDER BY 1, 2, 3, 4
ON CONFLICT (app_id, nid, channel, field) DO UPDATE SET n = d.n + EXCLUDED.n
"""


async def record_deliveries(conn, counts: Mapping[tuple[str, str, str, str], int]) -> None:
    rows = sorted((key, n) for key, n in counts.items() if n)
    if not rows:
        return
    cols: list[list] = [[], [], [], [], []]
    for (app_id, nid, channel, field), n in rows:
        for col, value in zip(cols, (app_id, nid, channel, field, n)):
            col.append(value)
    await conn.execute(_RECORD, *cols)


async def delivery_counts(conn, app_id: str, nid: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for channel, field, n in await conn.fetch(
        "SELECT channel, field, n FROM delivery_counts WHERE app_id = $1 AND nid = $2 "
        "ORDER BY channel, field", app_id, nid,
    ):
        out.setdefault(channel, {})[field] = n
    return out
