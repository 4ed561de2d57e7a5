"""The Lua scripts the Redis store runs inside Redis (each one atomic, one round trip).

Every script starts with a ``#!lua`` shebang: Redis 7 then refuses a script that may write
*before it runs* when ``maxmemory`` is reached (no ``allow-oom`` flag), so an out-of-memory
Redis never applies half a batch. ``ARGV[1]`` is always the key prefix.

Keys (``P`` is the prefix, ``{r}`` a run id in braces):

* ``P run:{r}``: the run (its ``RunRecord.to_store()`` JSON, exactly as given);
  ``P runs``: zset of run ids by ``created_at``; ``P unfinished``: set of run ids whose
  stored status is not final; ``P finished``: zset of run ids by ``finished_at``;
  ``P runkeys``: hash ``task id \\n idempotency key`` -> run id.
* ``P s:{r}KEY``: a Redis Stream per output stream, one entry per *page* of chunks: the entry
  id ``i-1`` is the index of its first chunk, field ``n`` how many it holds, ``d`` the chunks
  joined by ``\n`` (compact JSON never holds a raw newline). A read from index ``i`` starts
  at the last entry whose id is at most ``i-1`` (``READ``).
* ``P st:{r}``: hash of ``n:KEY`` (length), ``b:KEY`` (bytes), ``e:KEY`` (ended).
* ``P seq:{r}``: hash ``KEY \\0 producer`` -> next expected sequence number.
* ``P rec:{r}``: list of input records ``[key, index, idempotency key, data]`` (JSON).
* ``P wp:{r}``: hash waitpoint key -> ``[data, expires_at]`` (JSON).
* ``P tok:ID``: hash of a waitpoint token (``base`` JSON, ``status``, ``data``, ``done``);
  ``P tokkeys``: hash idempotency key -> token id; ``P runtoks:{r}``: set of a run's tokens;
  ``P freetoks``: zset of tokens without a run by the time they ended.
* ``P lease:{r}``: the run's lease, ``ENGINE EPOCH`` (the broker's, ``broker/_redis.py``);
  ``P fence:{r}``: the run's lease epoch, one more at each claim.
* ``P ds``: hash durable stream path -> metadata JSON; ``P dsi:PATH``: a Redis Stream of its
  items, entry id ``start-1``; ``P dsp:PATH``: hash producer -> ``epoch seq``.

A commit publishes on ``P w:RUN`` for each run whose streams or record it changed (the run's
record as stored when the batch wrote it, else ``1``), and on ``P dsw:PATH`` for each durable
stream it wrote or removed: other engines' readers and subscriptions wake on it
(``runwire.engine.broker``).
"""

from __future__ import annotations

#: One batch: ARGV is the prefix, then operations (see ``_redis.encode_batch``). The first
#: pass checks every lease the batch was written under (``L``: fencing) and every chunk
#: append against the stored lengths, and writes nothing if one does not hold; the second
#: pass writes. A lease holds if its key still holds the writer's token, or if it expired
#: and nobody claimed the run since (the epoch in ``fence:{r}`` is still the token's: the
#: broker's renewal takes such a lease back).
COMMIT = r"""#!lua flags=no-cluster
local P = ARGV[1]
local n = #ARGV
local lens = {}
local dropped = {}
local i = 2
while i <= n do
  local op = ARGV[i]
  if op == 'L' then
    local run, token = ARGV[i+1], ARGV[i+2]
    local held = redis.call('GET', P .. 'lease:{' .. run .. '}')
    if held ~= token and (held or redis.call('GET', P .. 'fence:{' .. run .. '}')
                          ~= string.match(token, ' (%d+)$')) then
      return redis.error_reply('LEASE ' .. run .. ' run ' .. run .. ' is held by another ' ..
        'engine now (lease ' .. tostring(held) .. ', this write was made under ' .. token .. ')')
    end
    i = i + 3
  elseif op == 'C' then
    local run, key = ARGV[i+1], ARGV[i+2]
    local start, cnt = tonumber(ARGV[i+3]), tonumber(ARGV[i+4])
    local where = run .. '\0' .. key
    local have = lens[where]
    if have == nil then
      have = tonumber(redis.call('HGET', P .. 'st:{' .. run .. '}', 'n:' .. key) or '0')
    end
    if start ~= have then
      return redis.error_reply('GAP chunk index gap in ' .. run .. '/' .. key ..
        ': store has ' .. have .. ', batch starts at ' .. start)
    end
    lens[where] = have + cnt
    i = i + 10 + 3 * tonumber(ARGV[i+9])
  elseif op == 'R' then
    if ARGV[i+7] == '1' then  -- a trigger's idempotency key, taken by another engine's run?
      local have = redis.call('HGET', P .. 'runkeys', ARGV[i+6] .. '\n' .. ARGV[i+8])
      if have and have ~= ARGV[i+1] then return redis.error_reply('DUPKEY ' .. have) end
    end
    i = i + 9
  elseif op == 'I' then i = i + 3
  elseif op == 'W' then i = i + 4
  elseif op == 'E' then i = i + 3
  elseif op == 'D' then
    dropped[ARGV[i+1]] = true
    i = i + 2
  elseif op == 'S' then
    -- a durable stream written from metadata another engine has changed since: refused
    -- whole, never half-applied over the other engine's write. A checked write names the
    -- metadata it was made from (ARGV[i+4]: '-' for none); the stored one must be that.
    local path, cnt, expect = ARGV[i+1], tonumber(ARGV[i+3]), ARGV[i+4]
    local old = not dropped[path] and redis.call('HGET', P .. 'ds', path)
    if expect == '-' then
      if old then
        return redis.error_reply('GAP durable stream ' .. path .. ' was created by ' ..
          'another engine')
      end
    elseif expect ~= '' then
      if old ~= expect then
        return redis.error_reply('GAP durable stream ' .. path .. ' was changed by ' ..
          'another engine')
      end
    elseif old then
      local was, now = cjson.decode(old), cjson.decode(ARGV[i+2])
      if was['created_at'] ~= now['created_at'] or now['tail'] < was['tail']
          or (cnt > 0 and tonumber(ARGV[i+5]) < was['tail']) then
        return redis.error_reply('GAP durable stream ' .. path .. ' was changed by ' ..
          'another engine (stored tail ' .. was['tail'] .. ')')
      end
    end
    i = i + 5 + 2 * cnt + 3
  else return redis.error_reply('ERR runwire: unknown batch operation ' .. tostring(op)) end
end
local touched = {}
local dsw = {}
i = 2
while i <= n do
  local op = ARGV[i]
  if op == 'L' then
    i = i + 3
  elseif op == 'R' then
    local id, body, final, created, finished = ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
    redis.call('SET', P .. 'run:{' .. id .. '}', body)
    redis.call('ZADD', P .. 'runs', created, id)
    if final == '1' then
      redis.call('SREM', P .. 'unfinished', id)
    else
      redis.call('SADD', P .. 'unfinished', id)
    end
    if finished ~= '' then redis.call('ZADD', P .. 'finished', finished, id) end
    if ARGV[i+7] == '1' then
      redis.call('HSET', P .. 'runkeys', ARGV[i+6] .. '\n' .. ARGV[i+8], id)
    end
    touched[id] = body
    i = i + 9
  elseif op == 'C' then
    local run, key = ARGV[i+1], ARGV[i+2]
    local start, cnt = tonumber(ARGV[i+3]), tonumber(ARGV[i+4])
    local skey = P .. 's:{' .. run .. '}' .. key
    local pages = tonumber(ARGV[i+9])
    for j = 0, pages - 1 do
      local k = i + 10 + 3 * j
      redis.call('XADD', skey, ARGV[k] .. '-1', 'n', ARGV[k+1], 'd', ARGV[k+2])
    end
    local st = P .. 'st:{' .. run .. '}'
    redis.call('HINCRBY', st, 'n:' .. key, cnt)
    redis.call('HINCRBY', st, 'b:' .. key, ARGV[i+5])
    if ARGV[i+6] == '1' then
      redis.call('HSET', P .. 'seq:{' .. run .. '}', key .. '\0' .. ARGV[i+7], ARGV[i+8])
    end
    touched[run] = touched[run] or '1'
    i = i + 10 + 3 * pages
  elseif op == 'I' then
    redis.call('RPUSH', P .. 'rec:{' .. ARGV[i+1] .. '}', ARGV[i+2])
    i = i + 3
  elseif op == 'W' then
    redis.call('HSET', P .. 'wp:{' .. ARGV[i+1] .. '}', ARGV[i+2], ARGV[i+3])
    i = i + 4
  elseif op == 'E' then
    redis.call('HSET', P .. 'st:{' .. ARGV[i+1] .. '}', 'e:' .. ARGV[i+2], '1')
    touched[ARGV[i+1]] = touched[ARGV[i+1]] or '1'
    i = i + 3
  elseif op == 'D' then
    local path = ARGV[i+1]
    redis.call('HDEL', P .. 'ds', path)
    redis.call('DEL', P .. 'dsi:' .. path, P .. 'dsp:' .. path)
    dsw[path] = true
    i = i + 2
  elseif op == 'S' then
    local path, meta, cnt = ARGV[i+1], ARGV[i+2], tonumber(ARGV[i+3])
    redis.call('HSET', P .. 'ds', path, meta)
    dsw[path] = true
    local k = i + 5
    for j = 1, cnt do
      redis.call('XADD', P .. 'dsi:' .. path, ARGV[k] .. '-1', 'd', ARGV[k+1])
      k = k + 2
    end
    if ARGV[k] == '1' then
      redis.call('HSET', P .. 'dsp:' .. path, ARGV[k+1], ARGV[k+2])
    end
    i = k + 3
  end
end
for run, message in pairs(touched) do
  redis.call('PUBLISH', P .. 'w:' .. run, message)
end
for path in pairs(dsw) do
  redis.call('PUBLISH', P .. 'dsw:' .. path, '1')
end
return 'OK'
"""

#: The pages holding chunks ``start .. start+limit-1`` of a stream: ``start, data`` pairs of
#: each page, from the one holding ``start``.
READ = r"""#!lua flags=no-writes,no-cluster
local key, start, limit = ARGV[1] .. ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local first = redis.call('XREVRANGE', key, ARGV[3] .. '-1', '-', 'COUNT', 1)
local from = '-'
if #first > 0 then from = first[1][1] end
local out = {}
while true do
  local entries = redis.call('XRANGE', key, from, '+', 'COUNT', 8)
  if #entries == 0 then return out end
  for _, e in ipairs(entries) do
    local at = tonumber(string.match(e[1], '^(%d+)'))
    local f = e[2]
    local n, data = tonumber(f[2]), f[4]
    if f[1] ~= 'n' then n, data = tonumber(f[4]), f[2] end
    if at + n > start then
      out[#out + 1] = at
      out[#out + 1] = data
      if at + n >= start + limit then return out end
    end
  end
  from = '(' .. entries[#entries][1]
end
"""

#: A new token, unless its idempotency key already made one: then that token's id.
TOKEN_CREATE = r"""#!lua flags=no-cluster
local P, id, base, ikey, run, expires = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if ikey ~= '' then
  local found = redis.call('HGET', P .. 'tokkeys', ikey)
  if found then return found end
  redis.call('HSET', P .. 'tokkeys', ikey, id)
end
local key = P .. 'tok:' .. id
redis.call('HSET', key, 'base', base, 'status', 'WAITING')
if ikey ~= '' then redis.call('HSET', key, 'ikey', ikey) end
if expires ~= '' then redis.call('HSET', key, 'expires', expires) end
if run == '' then redis.call('HSET', key, 'free', '1') end
if run ~= '' then
  redis.call('SADD', P .. 'runtoks:{' .. run .. '}', id)
elseif expires ~= '' then
  redis.call('ZADD', P .. 'freetoks', expires, id)
end
return id
"""

#: Complete a WAITING, unexpired token: returns 1 if this call completed it, else 0.
TOKEN_COMPLETE = r"""#!lua flags=no-cluster
local P, id, data, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = P .. 'tok:' .. id
local status = redis.call('HGET', key, 'status')
if status ~= 'WAITING' then return 0 end
local expires = redis.call('HGET', key, 'expires')
if expires and tonumber(expires) <= tonumber(now) then return 0 end
redis.call('HSET', key, 'status', 'COMPLETED', 'data', data, 'done', now)
if redis.call('HGET', key, 'free') == '1' then
  redis.call('ZADD', P .. 'freetoks', now, id)
end
return 1
"""

#: Delete up to ARGV[3] runs that finished before ARGV[2] with all their data; how many.
DELETE_FINISHED = r"""#!lua flags=no-cluster
local P, cutoff, most = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. cutoff,
                       'LIMIT', 0, most)
for _, id in ipairs(ids) do
  local r = '{' .. id .. '}'
  local body = redis.call('GET', P .. 'run:' .. r)
  if body then
    local run = cjson.decode(body)
    if type(run['idempotency_key']) == 'string' then
      redis.call('HDEL', P .. 'runkeys', run['task_id'] .. '\n' .. run['idempotency_key'])
    end
  end
  local st = redis.call('HGETALL', P .. 'st:' .. r)
  for j = 1, #st, 2 do
    if string.sub(st[j], 1, 2) == 'n:' then
      redis.call('DEL', P .. 's:' .. r .. string.sub(st[j], 3))
    end
  end
  for _, tok in ipairs(redis.call('SMEMBERS', P .. 'runtoks:' .. r)) do
    local ikey = redis.call('HGET', P .. 'tok:' .. tok, 'ikey')
    if ikey then redis.call('HDEL', P .. 'tokkeys', ikey) end
    redis.call('DEL', P .. 'tok:' .. tok)
  end
  redis.call('DEL', P .. 'run:' .. r, P .. 'st:' .. r, P .. 'seq:' .. r, P .. 'rec:' .. r,
             P .. 'wp:' .. r, P .. 'runtoks:' .. r, P .. 'fence:' .. r)
  redis.call('ZREM', P .. 'runs', id)
  redis.call('ZREM', P .. 'finished', id)
  redis.call('SREM', P .. 'unfinished', id)
end
if #ids < most then
  local toks = redis.call('ZRANGEBYSCORE', P .. 'freetoks', '-inf', '(' .. cutoff)
  for _, tok in ipairs(toks) do
    local ikey = redis.call('HGET', P .. 'tok:' .. tok, 'ikey')
    if ikey then redis.call('HDEL', P .. 'tokkeys', ikey) end
    redis.call('DEL', P .. 'tok:' .. tok)
    redis.call('ZREM', P .. 'freetoks', tok)
  end
end
return #ids
"""

#: A durable stream's metadata and one producer's state on it, as one snapshot.
DS_STATE = r"""#!lua flags=no-writes,no-cluster
local P, path, producer = ARGV[1], ARGV[2], ARGV[3]
return {redis.call('HGET', P .. 'ds', path) or '',
        redis.call('HGET', P .. 'dsp:' .. path, producer) or ''}
"""
