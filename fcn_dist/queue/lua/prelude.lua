-- Shared by every script (prepended to each): the clock, key helpers, history/event
-- recording, record validation, lease fencing and the cascades. ARGV[1] is always the key prefix.
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

-- append to the job's history and the event stream (the record itself is not touched)
local function note(id, event, from, to, reason, worker)
  local attempts = hget(id, 'attempts') or '0'
  reason = reason or ''
  worker = worker or ''
  redis.call('RPUSH', P .. 'hist:' .. id, cjson.encode({t = NOW / 1000, event = event, from = from,
    to = to, reason = reason, worker = worker, attempt = tonumber(attempts)}))
  redis.call('LTRIM', P .. 'hist:' .. id, -200, -1)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', 10000, '*', 'job', id, 'event', event,
    'from', from, 'to', to, 'reason', reason, 'worker', worker, 'attempt', attempts)
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
  note(id, event, old, to, reason, worker)
end

-- Validation. Redis keeps the writes a script made before an error, so every script checks the
-- fields it computes with before its first write to a record. These are the fields and rules of
-- fcn_dist.queue.job.record_problem (a test keeps the two lists equal); timestamps are only shown
-- (an unreadable one is displayed as '-'), never computed with.
local STATES = {waiting = true, queued = true, running = true, succeeded = true, failed = true,
  cancelled = true}
local INTEGERS = {'attempts', 'max_attempts', 'priority'}  -- required
local NUMBERS = {'score'}                                  -- required
local COUNTERS = {'lease'}                                 -- optional, >= 0
local DIGITS = 15  -- at most, so that HINCRBY (64-bit) never fails on an integer field

local function shown(v)
  if v == nil or v == false then return 'missing' end
  return "'" .. string.sub(v, 1, 40) .. "'"
end

-- nil if the record is sound, else why not (one line)
local function problem(id)
  local st = hget(id, 'state')
  if not STATES[st or ''] then return 'state ' .. shown(st) .. ' is not a job state' end
  for _, f in ipairs(INTEGERS) do
    local v = hget(id, f)
    if not (v and string.find(v, '^%-?%d+$') and #v <= DIGITS + 1) then
      return f .. ' ' .. shown(v) .. ' is not an integer'
    end
  end
  for _, f in ipairs(NUMBERS) do
    local v = hget(id, f)
    if not (v and string.find(v, '^%-?%d+%.?%d*$')) then
      return f .. ' ' .. shown(v) .. ' is not a number'
    end
  end
  for _, f in ipairs(COUNTERS) do
    local v = hget(id, f)
    if v and not (string.find(v, '^%d+$') and #v <= DIGITS) then
      return f .. ' ' .. shown(v) .. ' is not a counter'
    end
  end
  if tonumber(hget(id, 'max_attempts')) < 1 then return 'max_attempts must be >= 1' end
  if tonumber(hget(id, 'attempts')) < 0 then return 'attempts must be >= 0' end
  return nil
end

-- Fencing: claim hands out a lease number (per job, never reused); the holder presents it with
-- its worker id, so a zombie of an earlier attempt (even under the same worker id) is refused.
local function holds(id, worker, lease)
  return lease ~= '' and hget(id, 'lease') == lease and hget(id, 'worker') == worker
end

-- a refused call from a stale lease: noted in the job's history (never recreates a purged record)
local function fenced(id, what, worker, lease)
  local st = hget(id, 'state')
  if st then
    note(id, 'fenced', st, st, what .. ' with stale lease ' .. lease .. ' refused (current lease '
      .. (hget(id, 'lease') or '-') .. ' of worker ' .. (hget(id, 'worker') or '-') .. ', ' .. st .. ')', worker)
  end
  return 'lost'
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

local function finish(id, state, reason, worker, event)
  drop_from_queues(id)
  redis.call('HSET', jkey(id), 'finished_at', NOWS, 'cancel_requested', '0')
  clear_idem(id)
  record(id, event or state, state, reason, worker)
  if state == 'failed' then
    redis.call('LPUSH', P .. 'dead', id)
    cascade_cancel(id, 'failed')
  elseif state == 'cancelled' then
    redis.call('HSET', jkey(id), 'cancel_reason', reason)
    cascade_cancel(id, 'was cancelled')
  end
end

-- A record that cannot be parsed goes to the dead-letter list with the reason (the operator fixes
-- the field and runs `fcn-jobs retry`); the caller carries on with the next job.
local CORRUPT = {}  -- {id, reason, ...} dead-lettered by this script (claim and reap return it)
local function dead_letter_corrupt(id, why, worker)
  local reason = 'corrupt record: ' .. why
  redis.call('HSET', jkey(id), 'error', reason, 'traceback', '')
  finish(id, 'failed', reason, worker, 'corrupt')
  table.insert(CORRUPT, id)
  table.insert(CORRUPT, reason)
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
    local bad = hget(cid, 'state') == 'waiting' and problem(cid)
    if bad then
      dead_letter_corrupt(cid, bad, '')
    elseif hget(cid, 'state') == 'waiting' then
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
    if hget(id, 'state') == 'queued' then
      local bad = problem(id)
      if bad then dead_letter_corrupt(id, bad, '') else enqueue(id) end
    end
  end
end

-- score for the ready queue: high priority first, FIFO (fresh sequence number) within one
local function new_score(id)
  local seq = redis.call('INCR', P .. 'seq')
  local score = -tonumber(hget(id, 'priority')) * 1099511627776 + seq
  redis.call('HSET', jkey(id), 'score', string.format('%.0f', score))
  return seq
end

-- The queue's "last seen alive" clock (P alive, ms), moved by every script. Lease time only runs
-- while the queue is seen alive: after a silence longer than QUIET_MS (the server stopped or
-- restarted, unreachable, refusing writes), the first script moves the deadline of every running
-- lease that had not run out when the silence began by the silence's length, so an outage
-- neither expires leases nor charges attempts, and the holder re-asserts its lease at its next
-- heartbeat. A lease moves once until its holder heartbeats again: a dead worker's lease still
-- runs out when only slow pollers keep the queue alive.
local QUIET_MS = 1000
local function resume_clock()
  local last = tonumber(redis.call('GET', P .. 'alive'))
  redis.call('SET', P .. 'alive', NOW)
  if not last or NOW - last <= QUIET_MS then return end
  local gap = NOW - last
  local leases = redis.call('ZRANGEBYSCORE', P .. 'running', last, '+inf', 'WITHSCORES')
  for i = 1, #leases, 2 do
    local id = leases[i]
    if hget(id, 'state') == 'running' and hget(id, 'lease_shifted') ~= '1' then
      local deadline = tonumber(leases[i + 1]) + gap
      redis.call('ZADD', P .. 'running', deadline, id)
      redis.call('HSET', jkey(id), 'lease_deadline', string.format('%.3f', deadline / 1000),
        'lease_shifted', '1')
      note(id, 'lease_resumed', 'running', 'running', string.format('the queue was silent for %.1fs '
        .. '(redis down or unreachable): lease deadline moved by as much', gap / 1000), hget(id, 'worker'))
    end
  end
end
resume_clock()
