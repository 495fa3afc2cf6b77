-- Shared by every script (prepended to each): the clock, key helpers, history/event
-- recording and the cascades. ARGV[1] is always the key prefix.
local P = ARGV[1]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local NOWS = string.format('%.3f', NOW / 1000)
local function jkey(id) return P .. 'job:' .. id end
local function hget(id, f) return redis.call('HGET', jkey(id), f) end

-- finished jobs (succeeded, failed, cancelled) are indexed in `P finished` by when they expire:
-- finish time + the job's `retention` seconds; a job kept forever (no retention) is not indexed
local function index_finished(id, state)
  local r = tonumber(redis.call('HGET', jkey(id), 'retention') or '')
  if (state == 'succeeded' or state == 'failed' or state == 'cancelled') and r and r >= 0 then
    redis.call('ZADD', P .. 'finished', NOW + math.floor(r * 1000), id)
  else
    redis.call('ZREM', P .. 'finished', id)
  end
end

-- record an event; `new` may be nil (state unchanged)
local function record(id, event, new, reason, worker)
  local jk = jkey(id)
  local old = redis.call('HGET', jk, 'state') or ''
  local to = old
  if new then
    to = new
    if old ~= '' then redis.call('SREM', P .. 'state:' .. old, id) end
    redis.call('SADD', P .. 'state:' .. new, id)
    redis.call('HSET', jk, 'state', new)
    index_finished(id, new)
  end
  redis.call('HSET', jk, 'updated_at', NOWS)
  local attempts = redis.call('HGET', jk, 'attempts') or '0'
  reason = reason or ''
  worker = worker or ''
  redis.call('RPUSH', P .. 'hist:' .. id, cjson.encode({t = NOW / 1000, event = event, from = old,
    to = to, reason = reason, worker = worker, attempt = tonumber(attempts)}))
  redis.call('LTRIM', P .. 'hist:' .. id, -200, -1)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', 10000, '*', 'job', id, 'event', event,
    'from', old, 'to', to, 'reason', reason, 'worker', worker, 'attempt', attempts)
end

local function touch_worker(w)
  if w and w ~= '' then redis.call('ZADD', P .. 'workers', NOW, w) end
end

local function drop_from_queues(id)
  redis.call('ZREM', P .. 'ready', id)
  redis.call('ZREM', P .. 'delayed', id)
  redis.call('ZREM', P .. 'running', id)
end

local function clear_idem(id)
  local k = hget(id, 'idem_key')
  if k and k ~= '' and redis.call('HGET', P .. 'idem', k) == id then
    redis.call('HDEL', P .. 'idem', k)
  end
end

local function enqueue(id)
  redis.call('ZADD', P .. 'ready', hget(id, 'score'), id)
end

-- cancel the waiting/queued descendants of `root` ("parent job X failed|was cancelled")
local function cascade_cancel(root, how)
  local stack = {{root, how}}
  while #stack > 0 do
    local item = table.remove(stack)
    local pid, phow = item[1], item[2]
    for _, cid in ipairs(redis.call('SMEMBERS', P .. 'children:' .. pid)) do
      local st = hget(cid, 'state')
      if st == 'waiting' or st == 'queued' then
        local reason = 'parent job ' .. pid .. ' ' .. phow
        drop_from_queues(cid)
        redis.call('HSET', jkey(cid), 'finished_at', NOWS, 'error', reason,
          'cancel_reason', reason, 'cancelled_by_parent', '1')
        record(cid, 'cancelled', 'cancelled', reason, '')
        clear_idem(cid)
        table.insert(stack, {cid, 'was cancelled'})
      end
    end
  end
end

local function finish(id, state, reason, worker)
  drop_from_queues(id)
  redis.call('HSET', jkey(id), 'finished_at', NOWS, 'cancel_requested', '0')
  clear_idem(id)
  record(id, state, state, reason, worker)
  if state == 'failed' then
    redis.call('LPUSH', P .. 'dead', id)
    cascade_cancel(id, 'failed')
  elseif state == 'cancelled' then
    redis.call('HSET', jkey(id), 'cancel_reason', reason)
    cascade_cancel(id, 'was cancelled')
  end
end

local function best_checkpoint(result)
  local ok, dec = pcall(cjson.decode, result or '')
  if ok and type(dec) == 'table' and type(dec['best_checkpoint']) == 'string' then
    return dec['best_checkpoint']
  end
  return ''
end

-- the parent succeeded: its waiting children become queued with init_from = its checkpoint
local function release_children(pid)
  local ckpt = best_checkpoint(hget(pid, 'result'))
  for _, cid in ipairs(redis.call('SMEMBERS', P .. 'children:' .. pid)) do
    if hget(cid, 'state') == 'waiting' then
      redis.call('HSET', jkey(cid), 'init_from', ckpt)
      enqueue(cid)
      record(cid, 'queued', 'queued', 'parent job ' .. pid .. ' succeeded', '')
    end
  end
end

local function promote_due()
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', id)
    if hget(id, 'state') == 'queued' then enqueue(id) end
  end
end

-- score for the ready queue: high priority first, FIFO (fresh sequence number) within one
local function new_score(id)
  local seq = redis.call('INCR', P .. 'seq')
  local score = -tonumber(hget(id, 'priority')) * 1099511627776 + seq
  redis.call('HSET', jkey(id), 'score', string.format('%.0f', score))
  return seq
end
