-- tidings schema v19 (PostgreSQL): the leases of the nodes serving the store.
-- Each `tidings serve` process holds one row, taken before it checks the
-- secret key and renewed every third of node_lease seconds: `tidings secrets
-- seal`, `unseal` and `rekey` refuse to change the secrets while a lease has
-- not expired (docs/security.md#sealed-secrets). A clean stop deletes its
-- row, a killed node's row expires. expires_at is Unix seconds on the
-- database's clock, so the nodes' clocks do not matter.
CREATE TABLE IF NOT EXISTS node_leases (
  node text COLLATE "C" PRIMARY KEY,
  address text NOT NULL,
  pid integer NOT NULL,
  expires_at double precision NOT NULL
);
