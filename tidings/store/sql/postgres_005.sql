-- tidings schema v5 (PostgreSQL): what the PostgreSQL broker keeps besides its
-- LISTEN/NOTIFY traffic (tidings/broker/postgres.py): the node registry and
-- the token buckets of rate limits shared by every node.  UNLOGGED: nothing
-- here outlives a database crash usefully (nodes heartbeat again within
-- seconds; an emptied bucket is a full one), so none of it costs WAL.
CREATE UNLOGGED TABLE broker_nodes (
  node text COLLATE "C" PRIMARY KEY, info jsonb NOT NULL, expires_at double precision NOT NULL
);
CREATE UNLOGGED TABLE broker_buckets (
  key text COLLATE "C" PRIMARY KEY, tokens double precision NOT NULL,
  ts double precision NOT NULL, full_at double precision NOT NULL
);
-- swept by the nodes' heartbeats: a bucket that has refilled is a missing one
CREATE INDEX broker_buckets_full ON broker_buckets (full_at);

-- One step of a token bucket on the database clock: take `cost` tokens or say
-- how many seconds until there will be enough (nothing taken then).  The
-- arithmetic is tidings/core/ratelimit.py's `take`; keep them in step.  The
-- upsert locks the bucket's row, so takers of one key queue behind each other.
CREATE FUNCTION broker_take(k text, rate double precision, burst integer, cost integer)
RETURNS double precision LANGUAGE plpgsql AS $$
DECLARE
  now double precision := extract(epoch FROM clock_timestamp());
  tok double precision;
  last double precision;
  wait double precision := 0;
BEGIN
  INSERT INTO broker_buckets AS b (key, tokens, ts, full_at) VALUES (k, burst, now, now)
  ON CONFLICT (key) DO UPDATE SET key = b.key
  RETURNING b.tokens, b.ts INTO tok, last;
  IF now > last THEN
    tok := least(burst::double precision, tok + (now - last) * rate);
  END IF;
  IF tok >= cost - 1e-9 THEN
    tok := greatest(0, tok - cost);
  ELSE
    wait := (cost - tok) / rate;
  END IF;
  UPDATE broker_buckets SET tokens = tok, ts = now, full_at = now + (burst - tok) / rate
  WHERE key = k;
  RETURN wait;
END $$;
