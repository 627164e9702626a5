#!lua flags=no-writes
-- The node registry: every node whose last heartbeat has not expired, with its info.
--
-- KEYS[1]  sorted set: node -> expiry (milliseconds on the Redis clock)
-- KEYS[2]  hash: node -> info (JSON)
-- Returns  a flat list: node, info, node, info, ...
--
-- Read-only: expired entries are left for the next heartbeat to prune.  One
-- script so that the set and the hash are read at the same instant.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
    local info = redis.call('HGET', KEYS[2], node)
    if info then
        out[#out + 1] = node
        out[#out + 1] = info
    end
end
return out
