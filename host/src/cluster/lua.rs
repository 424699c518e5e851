//! The Redis scripts. Each runs atomically on the server, which is what makes a transition
//! (first socket of a user, last socket, an expiry, a dead instance's cleanup) happen once
//! cluster-wide however many instances race for it.
//!
//! Layout under a shard's prefix `S` (ARGV[1] of every script but `CLAIM` and `INCR`); each
//! shard holds the state of its users and rooms (a user's or room's shard: see
//! `RedisConn::shard_of`), so the scripts of one user or room stay in one slot:
//! - `S:nodes` sorted set: instance id -> lease end (ms), renewed in every shard
//! - `S:node:<id>:users` hash: user -> sockets on that instance
//! - `S:node:<id>:rooms` hash: `room 0x1f user` -> sockets of the user in the room there
//! - `S:user:<id>` hash: `status`, `auto` (1 = automatic away), `ctext`, `cemoji`, `cexp` (ms)
//! - `S:cexp` sorted set: user -> custom status end; `S:active` sorted set: user -> last activity
//! - `S:typing:<room> 0x1f <thread>` hash: user -> `started|expires|socket`;
//!   `S:typing:exp` sorted set: `room 0x1f thread 0x1e user` -> expiry
//! - `S:hist:<room>:meta` hash: `epoch`, `last` (the room's last offset); `S:hist:<room>:log`
//!   stream: entry id `<offset>-1`, fields `m` (the message JSON) and `t` (ms), trimmed to the
//!   room's size, expiring after its TTL; new messages published on `P:hist` (`P:hist{tag}`,
//!   the room's shard, with sharded pub/sub)
//!
//! Keys are built inside the scripts from the prefix they are given (ARGV[1]); each call
//! declares the keys it is about (KEYS), which routes it to the master of the prefix's slot on
//! a Redis Cluster and keeps it with them while the slot migrates.
//! On one server there is one shard and `S` is the configured prefix `P`. On a cluster `S` is
//! `P:{tag}` with the shard's hash tag (see `shard_tags`): one user's or one room's keys live
//! together, and users and rooms spread over the slots.

use std::sync::LazyLock;

use redis::Script;

/// Shared helpers, prepended to the presence scripts.
const COMMON: &str = r#"
local P = ARGV[1]
local function total(user, except, now)
  local n = 0
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', P .. ':nodes', '(' .. now, '+inf')) do
    if node ~= except then
      n = n + (tonumber(redis.call('HGET', P .. ':node:' .. node .. ':users', user) or '0') or 0)
    end
  end
  return n
end
local function st(user, conns)
  local h = redis.call('HMGET', P .. ':user:' .. user, 'status', 'ctext', 'cemoji', 'cexp')
  local o = { u = user, s = h[1] or 'offline', c = conns }
  if h[2] then o.t = h[2] end
  if h[3] then o.e = h[3] end
  if h[4] then o.x = tonumber(h[4]) end
  return o
end
local function offline(user, now)
  local k = P .. ':user:' .. user
  local cexp = tonumber(redis.call('HGET', k, 'cexp') or '0') or 0
  local keep = redis.call('HEXISTS', k, 'ctext') == 1 and (cexp == 0 or cexp > now)
  if keep then
    redis.call('HSET', k, 'status', 'offline', 'auto', '0')
  else
    redis.call('DEL', k)
    redis.call('ZREM', P .. ':cexp', user)
  end
  redis.call('ZREM', P .. ':active', user)
end
local function online(user, now)
  local k = P .. ':user:' .. user
  local cexp = tonumber(redis.call('HGET', k, 'cexp') or '0') or 0
  if cexp > 0 and cexp <= now then
    redis.call('HDEL', k, 'ctext', 'cemoji', 'cexp')
    redis.call('ZREM', P .. ':cexp', user)
  end
  redis.call('HSET', k, 'status', 'online', 'auto', '0')
  redis.call('ZADD', P .. ':active', now, user)
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// ARGV: P, node, user, now. A socket of `user` connected on `node`.
pub static CONNECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local node, user, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local others = total(user, node, now)
local mine = redis.call('HINCRBY', P .. ':node:' .. node .. ':users', user, 1)
local out = { changed = false }
if others == 0 and mine == 1 then
  online(user, now)
  out.changed = true
end
out.state = st(user, others + mine)
return cjson.encode(out)
"#,
    )
});

/// ARGV: P, node, user, now. A socket of `user` on `node` disconnected.
pub static DISCONNECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local node, user, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local hk = P .. ':node:' .. node .. ':users'
local mine = redis.call('HINCRBY', hk, user, -1)
if mine <= 0 then
  redis.call('HDEL', hk, user)
  mine = 0
end
local others = total(user, node, now)
local out = { changed = false }
if mine + others == 0 then
  offline(user, now)
  out.changed = true
end
out.state = st(user, mine + others)
return cjson.encode(out)
"#,
    )
});

/// ARGV: P, user, status, now, text, emoji, expiry ms ("" = none). `presence:update`.
pub static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local user, status, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local text, emoji, cexp = ARGV[5], ARGV[6], ARGV[7]
local k = P .. ':user:' .. user
redis.call('HSET', k, 'status', status, 'auto', '0')
redis.call('HDEL', k, 'ctext', 'cemoji', 'cexp')
redis.call('ZREM', P .. ':cexp', user)
if text ~= '' then
  redis.call('HSET', k, 'ctext', text)
  if emoji ~= '' then redis.call('HSET', k, 'cemoji', emoji) end
  if cexp ~= '' then
    redis.call('HSET', k, 'cexp', cexp)
    redis.call('ZADD', P .. ':cexp', cexp, user)
  end
end
local conns = total(user, '', now)
if conns > 0 then redis.call('ZADD', P .. ':active', now, user) end
return cjson.encode({ changed = true, state = st(user, conns) })
"#,
    )
});

/// ARGV: P, now. Custom statuses whose expiry passed are cleared (each once).
pub static EXPIRE_CUSTOM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = tonumber(ARGV[2])
local out = {}
for _, u in ipairs(redis.call('ZRANGEBYSCORE', P .. ':cexp', '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', P .. ':cexp', u)
  local k = P .. ':user:' .. u
  redis.call('HDEL', k, 'ctext', 'cemoji', 'cexp')
  local conns = total(u, '', now)
  if conns == 0 then redis.call('DEL', k) end
  table.insert(out, st(u, conns))
end
return cjson.encode({ list = out })
"#,
    )
});

/// ARGV: P, idle_before, now. Connected `online` users idle since `idle_before` become an
/// automatic `away` (each once).
pub static IDLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local before, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for _, u in ipairs(redis.call('ZRANGEBYSCORE', P .. ':active', '-inf', '(' .. before, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', P .. ':active', u)
  local k = P .. ':user:' .. u
  local conns = total(u, '', now)
  if conns > 0 and redis.call('HGET', k, 'status') == 'online' then
    redis.call('HSET', k, 'status', 'away', 'auto', '1')
    table.insert(out, st(u, conns))
  end
end
return cjson.encode({ list = out })
"#,
    )
});

/// ARGV: P, user, now. Activity: refreshes the user's last activity and ends an automatic away.
pub static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local user, now = ARGV[2], tonumber(ARGV[3])
local k = P .. ':user:' .. user
local status = redis.call('HGET', k, 'status')
if not status or status == 'offline' then return cjson.encode({ changed = false }) end
redis.call('ZADD', P .. ':active', now, user)
if status == 'away' and redis.call('HGET', k, 'auto') == '1' then
  redis.call('HSET', k, 'status', 'online', 'auto', '0')
  return cjson.encode({ changed = true, state = st(user, total(user, '', now)) })
end
return cjson.encode({ changed = false })
"#,
    )
});

/// ARGV: P, now, force. Instances whose lease ended (or `force`) are removed; returns them,
/// their users left with no socket on a live instance, the (room, user) pairs of their
/// sockets (for `REALTIME_PRESENCE_SCOPE=rooms`) and the pairs with no socket left anywhere.
pub static REAP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now, force = tonumber(ARGV[2]), ARGV[3]
local dead
if force ~= '' then
  dead = { force }
else
  dead = redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now, 'LIMIT', 0, 100)
end
local gone = {}
local pairs_ = {}
local left = {}
for _, node in ipairs(dead) do
  local hk = P .. ':node:' .. node .. ':users'
  local rk = P .. ':node:' .. node .. ':rooms'
  local users = redis.call('HKEYS', hk)
  local fields = redis.call('HKEYS', rk)
  redis.call('DEL', hk, rk)
  redis.call('ZREM', P .. ':nodes', node)
  for _, u in ipairs(users) do
    if total(u, '', now) == 0 then
      offline(u, now)
      table.insert(gone, u)
    end
  end
  local live = redis.call('ZRANGEBYSCORE', P .. ':nodes', '(' .. now, '+inf')
  for _, f in ipairs(fields) do
    local room, u = string.match(f, '^(.-)\31(.*)$')
    if room then
      table.insert(pairs_, { room, u })
      local n = 0
      for _, other in ipairs(live) do
        n = n + (tonumber(redis.call('HGET', P .. ':node:' .. other .. ':rooms', f) or '0') or 0)
      end
      if n == 0 then table.insert(left, { room, u }) end
    end
  end
end
return cjson.encode({ nodes = dead, users = gone, pairs = pairs_, left = left })
"#,
    )
});

/// ARGV: P, node, now, lease end, users JSON {user: n}, rooms JSON {field: n}, gone JSON
/// [user]. Replaces what Redis holds for `node` with its live state; returns who came online
/// and who went offline (`gone`: users whose last socket here closed while Redis was
/// unreachable, checked even when Redis lost what it held).
pub static REASSERT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local node, now, lease_end = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local users, rooms = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local hk = P .. ':node:' .. node .. ':users'
local rk = P .. ':node:' .. node .. ':rooms'
local old = {}
local flat = redis.call('HGETALL', hk)
for i = 1, #flat, 2 do old[flat[i]] = tonumber(flat[i + 1]) end
redis.call('DEL', hk, rk)
local came = {}
for u, n in pairs(users) do
  local others = total(u, node, now)
  redis.call('HSET', hk, u, n)
  local status = redis.call('HGET', P .. ':user:' .. u, 'status')
  if others == 0 and (not old[u] or not status or status == 'offline') then
    online(u, now)
    table.insert(came, st(u, others + n))
  end
end
for f, n in pairs(rooms) do redis.call('HSET', rk, f, n) end
redis.call('ZADD', P .. ':nodes', lease_end, node)
local gone = {}
local seen = {}
for u, _ in pairs(old) do
  seen[u] = true
  if not users[u] and total(u, '', now) == 0 then
    offline(u, now)
    table.insert(gone, u)
  end
end
for _, u in ipairs(cjson.decode(ARGV[7])) do
  if not seen[u] and not users[u] and total(u, '', now) == 0 then
    seen[u] = true
    offline(u, now)
    table.insert(gone, u)
  end
end
return cjson.encode({ online = came, offline = gone })
"#,
    )
});

/// ARGV: P, node, now, user, rooms JSON [room]. A socket of `user` on `node` left `rooms`;
/// returns those where the user has no socket left on any live instance.
pub static ROOMS_LEFT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local node, now, user = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local rooms = cjson.decode(ARGV[5])
local rk = P .. ':node:' .. node .. ':rooms'
local live = redis.call('ZRANGEBYSCORE', P .. ':nodes', '(' .. now, '+inf')
local out = {}
for _, room in ipairs(rooms) do
  local f = room .. '\31' .. user
  local mine = redis.call('HINCRBY', rk, f, -1)
  if mine <= 0 then
    redis.call('HDEL', rk, f)
    mine = 0
  end
  local n = mine
  for _, other in ipairs(live) do
    if other ~= node then
      n = n + (tonumber(redis.call('HGET', P .. ':node:' .. other .. ':rooms', f) or '0') or 0)
    end
  end
  if n == 0 then table.insert(out, room) end
end
return cjson.encode({ list = out })
"#,
    )
});

/// Typing helpers, prepended to the typing scripts.
const TYPING: &str = r#"
local P = ARGV[1]
local function tkey(room, thread) return P .. ':typing:' .. room .. '\31' .. thread end
local function tmember(room, thread, user) return room .. '\31' .. thread .. '\30' .. user end
local function parse(v)
  local started, expires, socket = string.match(v, '^(%-?%d+)|(%-?%d+)|(.*)$')
  return tonumber(started), tonumber(expires), socket
end
local function entries(key, now)
  local flat = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #flat, 2 do
    local started, expires = parse(flat[i + 1])
    if expires and expires > now then table.insert(out, { u = flat[i], t = started }) end
  end
  table.sort(out, function(a, b) if a.t == b.t then return a.u < b.u end return a.t < b.t end)
  return out
end
"#;

fn typing_script(body: &str) -> Script {
    Script::new(&format!("{TYPING}\n{body}"))
}

/// ARGV: P, room, thread ("" = none), user, socket, now, ttl ms.
pub static TYPING_START: LazyLock<Script> = LazyLock::new(|| {
    typing_script(
        r#"
local room, thread, user, socket = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local key = tkey(room, thread)
redis.call('HSET', key, user, now .. '|' .. (now + ttl) .. '|' .. socket)
redis.call('PEXPIRE', key, ttl + 60000)
redis.call('ZADD', P .. ':typing:exp', now + ttl, tmember(room, thread, user))
return cjson.encode({ list = entries(key, now) })
"#,
    )
});

/// ARGV: P, room, thread, user, now.
pub static TYPING_STOP: LazyLock<Script> = LazyLock::new(|| {
    typing_script(
        r#"
local room, thread, user, now = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = tkey(room, thread)
redis.call('HDEL', key, user)
redis.call('ZREM', P .. ':typing:exp', tmember(room, thread, user))
return cjson.encode({ list = entries(key, now) })
"#,
    )
});

/// ARGV: P, socket, now, entries JSON [[room, thread, user]]. Removes the entries the socket
/// still owns; one update per removed entry.
pub static TYPING_CLEAR: LazyLock<Script> = LazyLock::new(|| {
    typing_script(
        r#"
local socket, now = ARGV[2], tonumber(ARGV[3])
local out = {}
for _, e in ipairs(cjson.decode(ARGV[4])) do
  local room, thread, user = e[1], e[2], e[3]
  local key = tkey(room, thread)
  local v = redis.call('HGET', key, user)
  if v then
    local _, _, owner = parse(v)
    if owner == socket then
      redis.call('HDEL', key, user)
      redis.call('ZREM', P .. ':typing:exp', tmember(room, thread, user))
      table.insert(out, { r = room, h = thread, u = user, list = entries(key, now) })
    end
  end
end
return cjson.encode({ list = out })
"#,
    )
});

/// ARGV: P, now. Entries whose expiry passed are removed (each once, cluster-wide).
pub static TYPING_EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    typing_script(
        r#"
local now = tonumber(ARGV[2])
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. ':typing:exp', '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', P .. ':typing:exp', m)
  local rt, user = string.match(m, '^(.*)\30(.*)$')
  if rt then
    local room, thread = string.match(rt, '^(.*)\31(.*)$')
    if room then
      local key = tkey(room, thread)
      local v = redis.call('HGET', key, user)
      if v then
        local _, expires = parse(v)
        if expires and expires <= now then
          redis.call('HDEL', key, user)
          table.insert(out, { r = room, h = thread, u = user, list = entries(key, now) })
        end
      end
    end
  end
end
return cjson.encode({ list = out })
"#,
    )
});

/// KEYS: the key. ARGV: value, ttl ms. The earlier value, or sets it and answers nil.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#,
    )
});

/// KEYS: the key. ARGV: delta, ttl ms (0 = none). Adds to an integer (absent or not an integer
/// counts as 0); the TTL applies when the key is created.
pub static INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
local n = 0
if v and string.match(v, '^%-?%d+$') then n = tonumber(v) end
n = n + tonumber(ARGV[1])
local s = string.format('%d', n)
if v then
  redis.call('SET', KEYS[1], s, 'KEEPTTL')
elseif tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], s, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], s)
end
return n
"#,
    )
});

/// ARGV: P, room, message JSON, size, ttl ms, now ms, a new epoch (used when the room has
/// none), channel, `1` when history is persisted, `PUBLISH` or `SPUBLISH`. Numbers the message (`last` + 1), keeps it,
/// publishes `{r, o, e, b, m}` on the channel (`b`: the offset the epoch started after), all
/// at once: every instance sees the offsets in order. Answers `{o, e}`; `{missing: true}`
/// when the room has no history here and it is persisted (to be seeded from the database
/// first).
pub static HISTORY_PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local P, room, msg = ARGV[1], ARGV[2], ARGV[3]
local size, ttl, now, fresh, chan = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local meta = P .. ':hist:' .. room .. ':meta'
local log = P .. ':hist:' .. room .. ':log'
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  if ARGV[9] == '1' then return cjson.encode({ missing = true }) end
  epoch = fresh
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'last', 0, 'base', 0)
end
local base = redis.call('HGET', meta, 'base') or '0'
local offset = redis.call('HINCRBY', meta, 'last', 1)
redis.call('XADD', log, 'MAXLEN', size, offset .. '-1', 'm', msg, 't', now)
redis.call('PEXPIRE', log, ttl)
redis.call(ARGV[10], chan, '{"r":' .. cjson.encode(room) .. ',"o":' .. offset .. ',"e":' ..
  cjson.encode(epoch) .. ',"b":' .. base .. ',"m":' .. msg .. '}')
return cjson.encode({ o = offset, e = epoch })
"#,
    )
});

/// ARGV: P, room, first id, last id (inclusive, `-`/`+` for open ends), now ms, ttl ms,
/// count, `1` for newest first, a new epoch (given to a room that has none), `1` when history
/// is persisted (a room with none answers `{missing: true}` instead, to be seeded first).
/// Answers `{e, l, b, pe, pl, list: [[offset, message JSON], ...]}`: the room's epoch, last
/// offset and the offset the epoch started after, the epoch it continues and that epoch's
/// last offset still known (when seeded from the database), and the entries kept within the
/// TTL.
pub static HISTORY_RANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local P, room = ARGV[1], ARGV[2]
local first, last, now, ttl, count, rev = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local meta = P .. ':hist:' .. room .. ':meta'
local log = P .. ':hist:' .. room .. ':log'
local h = redis.call('HMGET', meta, 'epoch', 'last', 'base', 'pe', 'pl')
if not h[1] then
  if ARGV[10] == '1' then return cjson.encode({ missing = true }) end
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', ARGV[9], 'last', 0, 'base', 0)
  h = { ARGV[9], '0', '0', false, false }
end
local out = { e = h[1], l = tonumber(h[2] or '0'), b = tonumber(h[3] or '0'), list = {} }
if h[4] then
  out.pe = h[4]
  out.pl = tonumber(h[5] or '0')
end
local rows
if rev == '1' then
  rows = redis.call('XREVRANGE', log, last, first, 'COUNT', count)
else
  rows = redis.call('XRANGE', log, first, last, 'COUNT', count)
end
for _, row in ipairs(rows) do
  local o = tonumber(string.match(row[1], '^(%d+)'))
  local f, m, t = row[2], nil, 0
  for i = 1, #f, 2 do
    if f[i] == 'm' then m = f[i + 1] elseif f[i] == 't' then t = tonumber(f[i + 1]) end
  end
  if m and t >= now - ttl then table.insert(out.list, { o, m }) end
end
return cjson.encode(out)
"#,
    )
});

/// ARGV: P, room, a new epoch, the last offset the database holds, the epoch it belongs to
/// (empty: none), ttl ms, then (offset, message JSON, kept at ms) for each message to keep,
/// oldest first. Seeds a room that has no history here (Redis lost it) from the database: the
/// new epoch continues the offsets after `last`, and remembers the one it continues; does
/// nothing when the room has history (another instance seeded it first). Answers
/// `{seeded}`.
pub static HISTORY_SEED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local P, room, epoch, last, prev, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local meta = P .. ':hist:' .. room .. ':meta'
local log = P .. ':hist:' .. room .. ':log'
if redis.call('EXISTS', meta) == 1 then return cjson.encode({ seeded = false }) end
redis.call('DEL', log)
redis.call('HSET', meta, 'epoch', epoch, 'last', last, 'base', last)
if prev ~= '' then redis.call('HSET', meta, 'pe', prev, 'pl', last) end
for i = 7, #ARGV, 3 do
  redis.call('XADD', log, ARGV[i] .. '-1', 'm', ARGV[i + 1], 't', ARGV[i + 2])
end
if #ARGV >= 7 then redis.call('PEXPIRE', log, ttl) end
return cjson.encode({ seeded = true })
"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script compiles on a real Redis (`NSELF_TEST_REDIS`, else the local one): a
    /// syntax error would otherwise only show when its transition first happens.
    #[tokio::test]
    async fn every_script_compiles_on_redis() {
        let url =
            std::env::var("NSELF_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = redis::Client::open(url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("a Redis must answer at {url}: {e}"));
        let all: [(&str, &Script); 18] = [
            ("CONNECT", &CONNECT),
            ("DISCONNECT", &DISCONNECT),
            ("UPDATE", &UPDATE),
            ("EXPIRE_CUSTOM", &EXPIRE_CUSTOM),
            ("IDLE", &IDLE),
            ("TOUCH", &TOUCH),
            ("REAP", &REAP),
            ("REASSERT", &REASSERT),
            ("ROOMS_LEFT", &ROOMS_LEFT),
            ("TYPING_START", &TYPING_START),
            ("TYPING_STOP", &TYPING_STOP),
            ("TYPING_CLEAR", &TYPING_CLEAR),
            ("TYPING_EXPIRE", &TYPING_EXPIRE),
            ("CLAIM", &CLAIM),
            ("INCR", &INCR),
            ("HISTORY_PUBLISH", &HISTORY_PUBLISH),
            ("HISTORY_RANGE", &HISTORY_RANGE),
            ("HISTORY_SEED", &HISTORY_SEED),
        ];
        for (name, script) in all {
            let sha = script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("script {name} does not compile: {e}"));
            assert_eq!(sha, script.get_hash(), "{name}");
        }
    }
}
