-- The node registry: record that a node is alive, and forget the dead, in one step.
--
-- KEYS[1]  sorted set: node -> expiry (milliseconds on the Redis clock)
-- KEYS[2]  hash: node -> info (JSON)
-- ARGV     node, info, ttl in milliseconds
-- Returns  how many expired nodes were pruned.
--
-- Both keys carry the same hash tag, so this runs on Redis Cluster too.
-- Expiry is measured on the Redis clock (TIME), so nodes whose clocks
-- disagree still see the same registry.  Since Redis 5 scripts replicate
-- their effects, so reading TIME before writing is allowed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, node in ipairs(gone) do
    redis.call('HDEL', KEYS[2], node)
end
if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end

redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])

-- The registry disappears with the last live node instead of lingering.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PEXPIREAT', KEYS[2], last[2])
return #gone
