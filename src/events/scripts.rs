//! The Redis steps that must be atomic, as Lua scripts run with EVALSHA (`redis::Script`
//! loads them again after a Redis restart). Each says which keys it touches and why it
//! cannot be two commands.

use std::sync::LazyLock;

use redis::Script;

/// Publish: dedupe and append in one step, so a crash between them can neither lose nor
/// double an event.
///
/// KEYS: `{prefix}:evid:{type}:{source}:{event_id}` (scoped by type and publishing service:
/// the same id of another type or service is another event), `{prefix}:events:{type}`.
/// ARGV: dedupe window (ms), MINID for trimming, then the entry's field/value pairs.
/// Returns `{stream_id, duplicate (0|1)}`.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local first = redis.call('GET', KEYS[1])
if first then return {first, 1} end
local id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return {id, 0}
",
    )
});

/// Dead-letter: copy to the DLQ stream and acknowledge in one step, so an event is never
/// both pending and dead, nor neither. Nothing happens when the entry is no longer pending
/// (another consumer finished it).
///
/// KEYS: `{prefix}:events:{type}`, `{prefix}:dlq:{type}`.
/// ARGV: group, entry id, MINID for trimming the DLQ, then the DLQ entry's field/value pairs.
/// Returns the DLQ entry id, or nil.
pub static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return id
",
    )
});

/// Redelivery: take the entry again (XCLAIM bumps Redis's delivery counter, the attempt
/// number) only if this consumer still owns it; after a takeover by another meshlet the
/// entry is theirs. An entry trimmed away meanwhile is acknowledged (nothing to deliver).
///
/// KEYS: `{prefix}:events:{type}`. ARGV: group, consumer, entry id.
/// Returns `{entry, deliveries}` or nil.
pub static REDELIVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return false end
local e = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if #e == 0 or not e[1] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  return false
end
return {e[1], p[1][4] + 1}
",
    )
});

/// Keep-alive of an entry waiting out its backoff: resets its idle time (XCLAIM JUSTID does
/// not count a delivery) so other meshlets do not take it over as abandoned.
///
/// KEYS: `{prefix}:events:{type}`. ARGV: group, consumer, entry id. Returns 1 while owned.
pub static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
",
    )
});

/// Takeover of entries idle in dead consumers: XAUTOCLAIM, with each entry's delivery
/// counter (XAUTOCLAIM does not return it) read in the same step.
///
/// KEYS: `{prefix}:events:{type}`. ARGV: group, consumer, min idle (ms), cursor, count.
/// Returns `{next cursor, {{id, fields, deliveries}, ...}}`.
pub static TAKE_OVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  if e and e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local n = 1
    if p[1] then n = p[1][4] end
    table.insert(out, {e[1], e[2], n})
  end
end
return {r[1], out}
",
    )
});

/// Forgetting dead consumers: a meshlet that died leaves its consumer in the group for
/// good (XINFO CONSUMERS lists it forever) even after its entries were taken over. This
/// removes every consumer but the caller that has nothing pending and has not been seen for
/// longer than the given idle time. Check and delete are one step: a consumer that read an
/// entry in between would otherwise lose that entry from the pending list with it.
///
/// KEYS: `{prefix}:events:{type}`. ARGV: group, own consumer, min idle (ms).
/// Returns the names removed.
pub static FORGET_CONSUMERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = {}
local min_idle = tonumber(ARGV[3])
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info.name ~= ARGV[2] and info.pending == 0 and info.idle > min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info.name)
    table.insert(removed, info.name)
  end
end
return removed
",
    )
});

/// Replay: re-publish a dead letter to its stream, keeping its event id (no dedupe: the
/// id was already seen) and only the original fields, then remove it from the DLQ.
///
/// KEYS: `{prefix}:dlq:{type}`, `{prefix}:events:{type}`. ARGV: DLQ id, MINID for trimming.
/// Returns `{new stream id, event_id}` or nil when the DLQ entry does not exist.
pub static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return false end
local f = e[1][2]
local keep = {}
local original = {event_id=1, event_type=1, timestamp=1, source=1, version=1, payload=1, traceparent=1}
local event_id = ''
for i = 1, #f, 2 do
  if original[f[i]] then
    table.insert(keep, f[i])
    table.insert(keep, f[i + 1])
    if f[i] == 'event_id' then event_id = f[i + 1] end
  end
end
local id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[2], '*', unpack(keep))
redis.call('XDEL', KEYS[1], ARGV[1])
return {id, event_id}
",
    )
});

/// Whether Redis said the consumer group (or its stream) does not exist.
pub fn is_nogroup(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP")
        || error.to_string().contains("NOGROUP")
        || error.detail().is_some_and(|d| d.contains("NOGROUP"))
}

/// Whether Redis said the consumer group exists already.
pub fn is_busygroup(error: &redis::RedisError) -> bool {
    error.code() == Some("BUSYGROUP") || error.to_string().contains("BUSYGROUP")
}
