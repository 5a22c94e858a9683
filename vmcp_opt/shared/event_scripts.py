"""The Lua scripts `RedisEventStore` (shared/events.py) runs in Redis: adding a session's event and forgetting a
session's events, each keeping the byte budget of every session's events (in total and per caller) in the same
atomic step, so replicas writing at once never see a count half updated.

They run on Redis Cluster too. Each call's KEYS name every key known before it runs; the rest (another session's
list, byte count and streams, which the shared budget drops or releases, and a caller's set of its sessions) are
named by what the keys hold, so no caller could declare them. Every key of the event store shares one hash tag
(`events_root` below) and so one slot: Cluster runs a script on the node of its KEYS' slot, and a key
of that slot is local there, declared or not. No `TIME` and nothing random: the time comes in ARGV, so a script
replays the same wherever it runs."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

EventsClient = Redis | RedisCluster


def events_root(client: EventsClient, prefix: str) -> str:
    """What every key of the event store starts with. On a cluster, `{events}` is the keys' hash tag: one slot
    for them all, as the scripts' shared budget reaches any session's keys. A single Redis keeps the untagged
    names it always had, so an upgrade leaves the events and counts written before it where they are found."""
    return prefix + ("{events}" if isinstance(client, RedisCluster) else "events")


# What a stream costs Redis beyond its messages, charged to the callers' and the total's budget (not the session's
# own `max_event_bytes_per_session`) while the stream is there: MEMORY USAGE of a one-entry stream is 4,800 bytes
# on redis-server 7.0 (its first node's listpack is allocated whole), and its field in the session's set of
# charged streams (`<session>:streams`) about a hundred more. Every request answered as SSE has a stream of its
# own: counting messages only, a budget of 200 KB let Redis hold ~1.8 MB of small progress events.
STREAM_OVERHEAD_BYTES = 4_900

# What both scripts start with: the budget of the events of every session in Redis, in bytes, in total and per
# caller. Their last five KEYS (`_budget_keys`): the total; hashes of each session's bytes, of the caller it is
# charged to, and of each caller's bytes; the sessions by expiry (when their keys go). Their last five ARGV:
# `<prefix>events:` (tagged on a cluster), the session's namespace, the expiry in ms, the prefix of a caller's
# sorted set of its sessions by expiry (`mine`: written longest ago first), the writer's clock in ms. A replica's
# clock off by a few seconds only moves when a gone session is first looked at: it is released only once Redis
# says its keys are gone (PTTL), and one still there is put back by its own PTTL. A stream is charged
# `STREAM_OVERHEAD_BYTES` when first written (noted in `<session>:streams`), refunded once: when it is emptied,
# deleted or found expired, or with its session.
BUDGET = (
    f"local stream_overhead = {STREAM_OVERHEAD_BYTES}\n"
    + """
local total, sizes, charged, callers, expiry = unpack(KEYS, #KEYS - 4)
local prefix, namespace, ttl, caller_sets, now = unpack(ARGV, #ARGV - 4)
ttl = tonumber(ttl)
now = tonumber(now)

-- `delta` never `-x` (-0 is no integer to Redis): `0 - x`.
local function charge(session, caller, delta)
  redis.call('HINCRBY', sizes, session, delta)
  if redis.call('HINCRBY', callers, caller, delta) <= 0 then
    redis.call('HDEL', callers, caller)
  end
  redis.call('INCRBY', total, delta)
end

-- A session's events are gone (expired, emptied, deleted): so is its share of the counts.
local function release(session)
  local size = tonumber(redis.call('HGET', sizes, session) or '0')
  local caller = redis.call('HGET', charged, session)
  if caller then
    charge(session, caller, 0 - size)
    redis.call('ZREM', caller_sets .. caller, session)
  end
  redis.call('HDEL', sizes, session)
  redis.call('HDEL', charged, session)
  redis.call('ZREM', expiry, session)
  redis.call('DEL', prefix .. session .. ':held', prefix .. session .. ':bytes', prefix .. session .. ':streams')
end

-- A stream gone (emptied, deleted, expired): its overhead refunded, once; 0 when it was not charged.
local function stream_refund(session, key)
  return redis.call('HDEL', prefix .. session .. ':streams', key) * stream_overhead
end

-- Drops the session's oldest event (deleting a stream it empties); returns the session's bytes left.
local function drop_oldest(session, caller)
  local entry = redis.call('LPOP', prefix .. session .. ':held')
  local old_id, old_size, old_key = string.match(entry, '^(%S+) (%d+) (.+)$')
  redis.call('XDEL', old_key, old_id)
  local refund = 0
  if redis.call('XLEN', old_key) == 0 then
    redis.call('DEL', old_key)
    refund = stream_refund(session, old_key)
  end
  charge(session, caller, 0 - tonumber(old_size) - refund)
  return redis.call('DECRBY', prefix .. session .. ':bytes', old_size)
end

-- The caller's session written longest ago, this one only when it has no other.
local function oldest_other(mine, session)
  local first = redis.call('ZRANGE', mine, 0, 1)
  if first[1] and first[1] ~= session then
    return first[1]
  end
  return first[2] or session
end
"""
)

# KEYS: the stream, the session's list of its events (`<entry id> <bytes> <stream key>`, oldest first), the
# session's byte count, then the budget's. ARGV: the entry's e, s, r and m; the stream's MAXLEN; the session's
# bounds in events and bytes; the caller it is charged to; the caller's and the total's bounds in bytes; then
# the budget's. Returns {entry id, "" when the total's bound refused it; events dropped for the caller's bound}.
# An entry MAXLEN dropped stays listed (and counted) until its turn comes: the bounds err on the tight side.
ADD = (
    BUDGET
    + """
for _, session in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 64)) do
  local left = redis.call('PTTL', prefix .. session .. ':bytes')
  if left > 0 then
    redis.call('ZADD', expiry, now + left, session)
  else
    release(session)
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[5], '*', 'e', ARGV[1], 's', ARGV[2], 'r', ARGV[3], 'm', ARGV[4])
local size = string.len(ARGV[4])
local streams = prefix .. namespace .. ':streams'
local created = redis.call('HSETNX', streams, KEYS[1], '1') * stream_overhead
local count = redis.call('RPUSH', KEYS[2], id .. ' ' .. size .. ' ' .. KEYS[1])
local held = redis.call('INCRBY', KEYS[3], size)
redis.call('HSETNX', charged, namespace, ARGV[8])
local caller = redis.call('HGET', charged, namespace)
local mine = caller_sets .. caller
redis.call('ZADD', expiry, now + ttl, namespace)
redis.call('ZADD', mine, now + ttl, namespace)
charge(namespace, caller, size + created)
while count > tonumber(ARGV[6]) or (held > tonumber(ARGV[7]) and count > 1) do
  held = drop_oldest(namespace, caller)
  count = count - 1
end
local dropped = 0
while tonumber(redis.call('HGET', callers, caller) or '0') > tonumber(ARGV[9]) do
  local session = oldest_other(mine, namespace)
  if session == namespace and redis.call('LLEN', KEYS[2]) <= 1 then
    break  -- the newest stays, whatever its size
  end
  if redis.call('EXISTS', prefix .. session .. ':held') == 1 then
    drop_oldest(session, caller)
    dropped = dropped + 1
  end
  if redis.call('EXISTS', prefix .. session .. ':held') == 0 then
    release(session)  -- emptied, or expired
  end
end
if size > 0 and tonumber(redis.call('GET', total)) > tonumber(ARGV[10]) then
  -- Not stored, and neither is the rest of its stream: a client resuming from before it is refused, not left
  -- waiting for an answer that will never be stored.
  local kept, gone = {}, 0
  for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    local entry_size, key = string.match(entry, '^%S+ (%d+) (.+)$')
    if key == KEYS[1] then
      gone = gone + tonumber(entry_size)
    else
      table.insert(kept, entry)
    end
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  for _, entry in ipairs(kept) do
    redis.call('RPUSH', KEYS[2], entry)
  end
  redis.call('DECRBY', KEYS[3], gone)
  charge(namespace, caller, 0 - gone - stream_refund(namespace, KEYS[1]))
  if #kept == 0 then
    release(namespace)
  end
  id = ''
end
for _, key in ipairs({mine, streams, unpack(KEYS)}) do
  redis.call('PEXPIRE', key, ttl)
end
return {id, dropped}
"""
)

# KEYS: the session's list of its events, its byte count, then the budget's; ARGV: the budget's. Deletes every
# stream the list names, then both, and releases the session's share of the budget.
FORGET = (
    BUDGET
    + """
local seen = {}
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local key = string.match(entry, '^%S+ %d+ (.+)$')
  if key and not seen[key] then
    seen[key] = true
    redis.call('DEL', key)
  end
end
release(namespace)
"""
)
