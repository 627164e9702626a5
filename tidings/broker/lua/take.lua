-- A token bucket shared by every node: take `cost` tokens, or say how long to wait.
--
-- KEYS[1]  hash: tokens, ts (seconds on the Redis clock)
-- ARGV     rate (tokens a second, > 0), burst (>= 1), cost (1..burst)
-- Returns  the seconds to wait as a string, "0" when the tokens were taken
--          (a Lua number would come back truncated to an integer).
--
-- The arithmetic is tidings/core/ratelimit.py's `take`; keep them in step.
-- The Redis clock (TIME) is the only clock, so nodes' clocks do not matter.
-- A missing bucket is a full one: the key expires once it would be full again.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local last = tonumber(b[2])
if tokens == nil or last == nil then
    tokens = burst
    last = now
end
if now > last then
    tokens = math.min(burst, tokens + (now - last) * rate)
end

local wait = 0
if tokens >= cost - 1e-9 then
    tokens = math.max(0, tokens - cost)
else
    wait = (cost - tokens) / rate
end

-- Numbers passed to redis.call keep full precision (Lua's tostring would not).
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1)
return string.format('%.17g', wait)
