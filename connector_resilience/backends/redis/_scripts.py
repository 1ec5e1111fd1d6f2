"""The store's Lua scripts: each touches the keys of one connector, so each is atomic on a Cluster.

No script runs a command that may be refused (a channel the ACL user may not
use) after one that writes: a refusal would leave the write done and the
caller told it failed.
"""

from __future__ import annotations

from typing import Final

__all__ = ["APPEND_CALLS_LUA", "COMPARE_AND_SET_LUA", "REWRITE_CALLS_LUA", "TRIM_CALLS_LUA"]

# KEYS: the connector's circuit hash. ARGV: expected version, new version,
# connector, channel, record JSON. The publish comes before the write: if it
# is refused the script stops with nothing written, and a publish whose write
# then fails (out of memory) only makes subscribers read the record again.
# Subscribers cannot read before the write: the script runs as one step.
COMPARE_AND_SET_LUA: Final = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
    return 0
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'record', ARGV[5])
return 1
"""

# KEYS: the connector's calls, this writer's applied batch numbers.
# ARGV: cutoff, ttl (s), low-water mark, then (number, score, member) per batch.
# A batch whose number is recorded was applied already (its first send timed
# out after Redis ran it): it is skipped, in the same step as the writes.
# Trimming comes first, so a batch is never trimmed by its own write.
APPEND_CALLS_LUA: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local applied = 0
for i = 4, #ARGV, 3 do
    if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
        redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i])
        redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i + 2])
        applied = applied + 1
    end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return applied
"""

# KEYS: the connector's calls. ARGV: how many members to remove, those
# members, then (score, member) pairs to add: compaction's rewrite, atomic so
# that a reader never sees a batch both before and after it.
REWRITE_CALLS_LUA: Final = """
local removing = tonumber(ARGV[1])
for i = 2, removing + 1 do
    redis.call('ZREM', KEYS[1], ARGV[i])
end
for i = removing + 2, #ARGV, 2 do
    redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""

# KEYS: the connector's calls. ARGV: cutoff. Returns {dropped, kept}.
TRIM_CALLS_LUA: Final = """
local dropped = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return {dropped, redis.call('ZCARD', KEYS[1])}
"""
