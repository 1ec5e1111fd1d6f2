"""Lua scripts for load control on Redis: each rule is one atomic step on the server's clock.

They follow ``backends/_limit_state.py`` rule for rule (the conformance suite
runs both against one contract). Every script reads the time with ``TIME``,
so hosts whose clocks disagree still share one budget, bucket and lease set.
Numbers go back as strings: Redis would truncate a Lua number to an integer.
"""

from __future__ import annotations

from typing import Final

from connector_resilience.backends._limit_state import BUDGET_SLOTS

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: the budget hash (fields c<slot> = calls, r<slot> = retries).
# ARGV: calls to add, retry (1/0), ratio, min_per_s, window_s.
SPEND_RETRY_BUDGET: Final = (
    _NOW
    + f"""
local slots = {BUDGET_SLOTS}
local window = tonumber(ARGV[5])
local slot_s = window / slots
local current = math.floor(now / slot_s)
local oldest = current - slots + 1
local fields = redis.call('HGETALL', KEYS[1])
local calls, retries = 0, 0
for i = 1, #fields, 2 do
    local name = fields[i]
    local index = tonumber(string.sub(name, 2))
    if index == nil or index < oldest then
        redis.call('HDEL', KEYS[1], name)
    elseif string.sub(name, 1, 1) == 'c' then
        calls = calls + tonumber(fields[i + 1])
    else
        retries = retries + tonumber(fields[i + 1])
    end
end
local slot = string.format('%d', current)
local add = tonumber(ARGV[1])
if add > 0 then
    redis.call('HINCRBY', KEYS[1], 'c' .. slot, add)
    calls = calls + add
end
local granted = 1
if ARGV[2] == '1' then
    local ratio = tonumber(ARGV[3])
    if ratio > 0 and retries + 1 <= ratio * calls + tonumber(ARGV[4]) * window then
        redis.call('HINCRBY', KEYS[1], 'r' .. slot, 1)
    else
        granted = 0
    end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 2000))
return granted
"""
)

# The bucket is one number: when it will be full again (GCRA's theoretical
# arrival time). KEYS: the bucket. ARGV: rate_per_s, burst, max_wait_s.
TAKE_TOKEN: Final = (
    _NOW
    + """
local interval = 1 / tonumber(ARGV[1])
local tolerance = (math.max(tonumber(ARGV[2]), 1) - 1) * interval
local full_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if full_at < now then full_at = now end
local wait = full_at - tolerance - now
if wait > tonumber(ARGV[3]) then
    return {0, string.format('%.6f', wait)}
end
full_at = full_at + interval
redis.call('SET', KEYS[1], string.format('%.6f', full_at),
    'PX', math.ceil((full_at - now) * 1000) + 1000)
if wait < 0 then wait = 0 end
return {1, string.format('%.6f', wait)}
"""
)

# KEYS: the bucket. ARGV: seconds, rate_per_s, burst.
PAUSE_TOKENS: Final = (
    _NOW
    + """
local interval = 1 / tonumber(ARGV[2])
local tolerance = (math.max(tonumber(ARGV[3]), 1) - 1) * interval
local full_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if full_at < now then full_at = now end
local paused = now + tonumber(ARGV[1]) + tolerance
if paused > full_at then full_at = paused end
redis.call('SET', KEYS[1], string.format('%.6f', full_at),
    'PX', math.ceil((full_at - now) * 1000) + 1000)
return 1
"""
)

# Leases are a sorted set: member = holder, score = when its lease ends.
# KEYS: the lease set. ARGV: limit, lease_s, holder.
ACQUIRE_LEASE: Final = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[3])
if held or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    local lease = tonumber(ARGV[2])
    redis.call('ZADD', KEYS[1], string.format('%.6f', now + lease), ARGV[3])
    local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(last[2]) - now) * 1000) + 1000)
    return {1, ''}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, string.format('%.6f', tonumber(first[2]) - now)}
"""
)

# KEYS: the lease set. ARGV: holder.
RELEASE_LEASE: Final = """
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""
