-- tidings schema v19 (SQLite): the leases of the nodes serving the store.
-- No semicolons inside comments: the runner splits on them.
-- Each `tidings serve` process holds one row, taken before it checks the
-- secret key and renewed every third of node_lease seconds: `tidings secrets
-- seal`, `unseal` and `rekey` refuse to change the secrets while a lease has
-- not expired (docs/security.md#sealed-secrets). A clean stop deletes its
-- row, a killed node's row expires. expires_at is Unix seconds.
CREATE TABLE IF NOT EXISTS node_leases (
  node TEXT PRIMARY KEY,
  address TEXT NOT NULL,
  pid INTEGER NOT NULL,
  expires_at REAL NOT NULL
);
