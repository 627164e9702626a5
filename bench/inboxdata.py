"""The ``inbox`` data set: U users x P personal notifications, loaded straight into SQLite.

Loading is not what is measured, so it bypasses the API: a fresh data
directory gets its schema, app and API key from ``tidings app create`` (the
code under test), then this module writes the rows with plain SQL in the
store's own layout (tidings/store/sql/sqlite_001.sql):

* ``notifications``: one row per inbox entry (U x P personal notifications,
  none shared: the largest table the layout can get for that many entries),
  bodies in the shape the service stores (``{"id", "category",
  "created_at", "title", "body", "url"}``, about 200 bytes);
* ``inbox``: P entries per user with seq 1..P, the oldest P-6 read, 3 seen,
  the newest 3 unseen (so counts are unread 6, unseen 3);
* ``streams``: one head per user (head_seq P).

Notification j (in time order, spread over the last 10 days) goes to user
``j % U`` as its seq ``j // U + 1``, so every user's entries are interleaved
with everyone else's as a live system would write them.  Rows go in
primary-key order with the journal off and the secondary indexes dropped,
then the indexes are rebuilt from the schema's own statements and the file
is put back in WAL mode: about 1 µs per row instead of the API's ~20 µs per
recipient.  The result is cached (``--cache-dir``, keyed by size) and reused
by later runs, brought to the code's schema by the store's own migrations; a
run never writes to it except the ``broadcast_write`` check, which removes
what it added.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

from bench.progress import bar
from bench.server import APP_NAME, code_env, python_cmd, tidings_cmd

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SPAN_S = 10 * 24 * 3600  # entries are spread over the last 10 days (retention is 30)
MAX_AGE_S = 7 * 24 * 3600  # older cached sets are rebuilt, so that retention never bites
CHUNK = 200_000


def user_id(i: int) -> str:
    return f"u{i:07d}"


_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> 2 digits


def notification_id(ms: int, j: int) -> str:
    """A ULID-shaped id (tidings/core/ids.py): 48-bit ms in 10 Crockford digits,
    then 80 bits (here the row number j < 2**30) in 16, looked up 10 bits at a time."""
    p = _PAIRS
    return (p[ms >> 40] + p[(ms >> 30) & 1023] + p[(ms >> 20) & 1023] + p[(ms >> 10) & 1023]
            + p[ms & 1023] + "0000000000" + p[j >> 20] + p[(j >> 10) & 1023] + p[j & 1023])


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tidings-bench"


def dataset(users: int, per_user: int, cache_dir: Path | None = None,
            rebuild: bool = False) -> tuple[Path, dict]:
    """The data directory of a loaded set and its metadata (credentials, timings).

    A cached set made by older code is reused: the store's own migrations
    bring it forward first (``tidings.store.sqlite.migrate``), as they would
    bring forward an operator's file.
    """
    cache_dir = cache_dir or default_cache_dir()
    folder = cache_dir / f"inbox-{users}x{per_user}"
    if not folder.exists():  # sets cached before the folder name lost its schema hash
        older = sorted(cache_dir.glob(f"inbox-{users}x{per_user}-*/bench-dataset.json"))
        if older:
            folder = older[-1].parent
    meta_path = folder / "bench-dataset.json"
    if meta_path.exists() and not rebuild:
        meta = json.loads(meta_path.read_text())
        if time.time() - meta["loaded_at"] < MAX_AGE_S:
            migrate(folder)
            return folder, meta
    shutil.rmtree(folder, ignore_errors=True)
    folder = cache_dir / f"inbox-{users}x{per_user}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    meta = load(folder, users, per_user)
    meta_path = folder / "bench-dataset.json"
    meta_path.write_text(json.dumps(meta))
    return folder, meta


def migrate(folder: Path) -> None:
    """Apply the code's pending SQLite migrations to the set (a no-op when current)."""
    subprocess.run(
        [*python_cmd(), "-c", "import sys; from tidings.store.sqlite import migrate; "
         "migrate(sys.argv[1])", str(folder / "tidings.db")],
        check=True, capture_output=True, timeout=1800, env=code_env())


def load(folder: Path, users: int, per_user: int) -> dict:
    t0 = time.monotonic()
    migrate(folder)  # `app create` works on an existing store only
    out = subprocess.run(
        [*tidings_cmd(), "app", "create", APP_NAME, "--json", "--data", str(folder)],
        check=True, capture_output=True, text=True, timeout=60, env=code_env()).stdout
    creds = json.loads(out.strip().splitlines()[-1])
    app = creds["app"]
    db = folder / "tidings.db"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        counts = _fill(conn, app, users, per_user)
    finally:
        conn.close()
    return {"credentials": {k: creds[k] for k in ("app", "api_key", "signing_secret")},
            "users": users, "per_user": per_user, "rows": counts,
            "load_s": round(time.monotonic() - t0, 1), "loaded_at": time.time(),
            "db_bytes": db.stat().st_size}


class Rows:
    """The data set's rows, generated in chunks (the same for SQLite and PostgreSQL)."""

    def __init__(self, app: str, users: int, per_user: int):
        n = users * per_user
        if n >= 2**30:
            raise ValueError("at most 2**30 inbox entries")
        self.app, self.users, self.per_user, self.n = app, users, per_user, n
        self.base = time.time() - SPAN_S - 3600
        self.step = SPAN_S / n
        self._iso: dict[int, str] = {}

    def when(self, j: int) -> float:
        return self.base + j * self.step

    def nid(self, j: int) -> str:
        return notification_id(int(self.when(j) * 1000), j)

    def iso(self, ts: float) -> str:
        sec = int(ts)
        text = self._iso.get(sec)
        if text is None:
            self._iso.clear()
            text = dt.datetime.fromtimestamp(sec).astimezone().isoformat(timespec="seconds")
            self._iso[sec] = text
        return text

    def notifications(self):
        """Chunks of (app_id, id, category, body, recipients, created_at), in
        primary-key order."""
        for start in range(0, self.n, CHUNK):
            rows = []
            for j in range(start, min(start + CHUNK, self.n)):
                ts = self.when(j)
                i = self.nid(j)
                rows.append((self.app, i, "social", self.body(j, i, ts), 1, ts))
            yield rows

    def body(self, j: int, nid: str, ts: float) -> bytes:
        return (
            f'{{"id":"{nid}","category":"social","created_at":"{self.iso(ts)}",'
            f'"title":"user_{j % 997} replied to your comment",'
            '"body":"Nice write-up, thanks for sharing it with everyone here",'
            f'"url":"/posts/{j // 7}#c{j}"}}'
        ).encode()

    def inbox(self, bodies: bool = False):
        """Chunks of (app_id, user_id, seq, nid, state, created_at[, body]), in
        primary-key order: user u's seq s is notification (s - 1) * users + u;
        the newest 3 are unseen, the 3 before seen, the rest read."""
        users, per_user = self.users, self.per_user
        read_upto, seen_upto = per_user - 6, per_user - 3
        rows = []
        for u in range(users):
            uid = user_id(u)
            for s in range(1, per_user + 1):
                j = (s - 1) * users + u
                state = 2 if s <= read_upto else 1 if s <= seen_upto else 0
                nid, ts = self.nid(j), self.when(j)
                row = (self.app, uid, s, nid, state, ts)
                rows.append((*row, self.body(j, nid, ts)) if bodies else row)
            if len(rows) >= CHUNK:
                yield rows
                rows = []
        if rows:
            yield rows


def _fill(conn: sqlite3.Connection, app: str, users: int, per_user: int) -> dict:
    conn.execute("PRAGMA journal_mode=DELETE")  # leave WAL: one writer, no readers now
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB while loading
    # Secondary indexes are rebuilt after the load (a sort instead of 20M random inserts).
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
        "AND tbl_name IN ('notifications', 'inbox', 'streams')").fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    rows = Rows(app, users, per_user)

    with bar(rows.n, "notifications", unit="row") as progress:
        conn.execute("BEGIN")
        for chunk in rows.notifications():
            conn.executemany(
                "INSERT INTO notifications(app_id, id, category, body, recipients, created_at) "
                "VALUES (?,?,?,?,?,?)", chunk)
            progress.update(len(chunk))
        conn.execute("COMMIT")

    with bar(rows.n, "inbox", unit="row") as progress:
        conn.execute("BEGIN")
        for chunk in rows.inbox():
            conn.executemany(
                "INSERT INTO inbox(app_id, user_id, seq, nid, state, created_at) "
                "VALUES (?,?,?,?,?,?)", chunk)
            progress.update(len(chunk))
        conn.execute(
            "INSERT INTO streams(app_id, user_id, epoch, head_seq) "
            "SELECT ?, user_id, lower(hex(randomblob(4))), max(seq) FROM inbox "
            "WHERE app_id=? GROUP BY user_id", (app, app))
        conn.execute("COMMIT")

    with bar(len(indexes), "indexes", unit="index") as progress:
        for _, sql in indexes:
            conn.execute(sql)
            progress.update(1)
    # no ANALYZE: the store never runs it, and its query plans are what is measured
    conn.execute("PRAGMA locking_mode=NORMAL")
    conn.execute("PRAGMA journal_mode=WAL")  # the store's mode (and one read to drop the lock)
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("notifications", "inbox", "streams")}
    return counts


def table_counts(db: Path) -> dict[str, int]:
    """Rows per table, read-only (the server may be running: WAL readers do not block it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def checkpoint(db: Path) -> None:
    """Empty the WAL into the file, so that the next transaction's pages can be counted."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()


def remove_feed_items(db: Path) -> int:
    """Take the broadcast_write check's feed item(s) out again (server stopped)."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        n = conn.execute("DELETE FROM notifications WHERE feed_offset IS NOT NULL").rowcount
        conn.execute("DELETE FROM feed_heads")
        conn.execute("DELETE FROM feed_state")
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return n
    finally:
        conn.close()
