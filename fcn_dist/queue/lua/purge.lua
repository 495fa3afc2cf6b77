-- ARGV: P, 'ids', force, dry_run, id...  -> {id, outcome, detail} per id
--       outcome: 'purged' | 'would purge' | 'refused' | 'unknown'; detail: the state or why
-- ARGV: P, 'sweep', limit, dead_max, events_age_ms (-1: keep)
--       -> {purged, rescheduled, dead_trimmed, events_trimmed}
-- Removes finished jobs with everything they own: the record, history, logs, their events and
-- every index entry (jobs, state set, queues, finished, dead, idem, chains, children). A sweep
-- does bounded work: at most `limit` jobs, whose retention ran out (`P finished` by expiry) or
-- which fell off the end of a dead-letter list longer than `dead_max`.
local mode = ARGV[2]
local function live(st) return st == 'queued' or st == 'running' or st == 'waiting' end

-- why `id` must not be purged without --force (nil: it may be)
local function why_kept(id)
  local st = hget(id, 'state') or ''
  if live(st) then return 'job ' .. id .. ' is ' .. st .. '; cancel it first or use --force' end
  local kids = {}
  for _, cid in ipairs(redis.call('SMEMBERS', P .. 'children:' .. id)) do
    if live(hget(cid, 'state') or '') then table.insert(kids, cid) end
  end
  if #kids > 0 then
    table.sort(kids)
    return 'job ' .. id .. ' is the parent of live job(s) ' .. table.concat(kids, ', ')
      .. ' (kept so they can be retried); use --force'
  end
  return nil
end

local function purge_job(id)
  local jk = jkey(id)
  local st = redis.call('HGET', jk, 'state') or ''
  local dep = redis.call('HGET', jk, 'depends_on') or ''
  local ck = redis.call('HGET', jk, 'chain_key') or ''
  -- a waiting child can never start without its parent (only reachable with --force)
  for _, cid in ipairs(redis.call('SMEMBERS', P .. 'children:' .. id)) do
    if hget(cid, 'state') == 'waiting' then
      local reason = 'parent job ' .. id .. ' was purged'
      drop_from_queues(cid)
      redis.call('HSET', jkey(cid), 'finished_at', NOWS, 'error', reason, 'cancel_reason', reason,
        'cancelled_by_parent', '1')
      record(cid, 'cancelled', 'cancelled', reason, '')
      clear_idem(cid)
      cascade_cancel(cid, 'was cancelled')
    end
  end
  clear_idem(id)
  drop_from_queues(id)
  redis.call('ZREM', P .. 'jobs', id)
  redis.call('ZREM', P .. 'finished', id)
  if st ~= '' then redis.call('SREM', P .. 'state:' .. st, id) end
  -- dead-lettered jobs are failed ones (oldest at the tail: LREM from there stops at once)
  if st ~= 'succeeded' and st ~= 'cancelled' then redis.call('LREM', P .. 'dead', -1, id) end
  if dep ~= '' then redis.call('SREM', P .. 'children:' .. dep, id) end
  if ck ~= '' then
    local v = redis.call('HGET', P .. 'chains', ck)
    if v and string.find(',' .. v .. ',', ',' .. id .. ',', 1, true) then
      redis.call('HDEL', P .. 'chains', ck)
    end
  end
  redis.call('DEL', jk, P .. 'hist:' .. id, P .. 'logs:' .. id, P .. 'children:' .. id)
end

-- delete the events of the jobs in `gone` (a set) from the stream (capped at ~10000 entries)
local function drop_events(gone)
  local start, dropped = '-', 0
  while true do
    local batch = redis.call('XRANGE', P .. 'events', start, '+', 'COUNT', 500)
    if #batch == 0 then break end
    local del = {}
    for _, e in ipairs(batch) do
      local f = e[2]
      for k = 1, #f, 2 do
        if f[k] == 'job' then
          if gone[f[k + 1]] then table.insert(del, e[1]) end
          break
        end
      end
    end
    if #del > 0 then dropped = dropped + redis.call('XDEL', P .. 'events', unpack(del)) end
    if #batch < 500 then break end
    start = '(' .. batch[#batch][1]
  end
  return dropped
end

if mode == 'ids' then
  local force, dry = ARGV[3] == '1', ARGV[4] == '1'
  local out, todo = {}, {}
  for i = 5, #ARGV do
    local id = ARGV[i]
    local st = hget(id, 'state')
    if not st and redis.call('EXISTS', jkey(id)) == 0 then
      table.insert(out, {id, 'unknown', 'no such job'})
    else
      local why = nil
      if not force then why = why_kept(id) end
      if why then
        table.insert(out, {id, 'refused', why})
      else
        table.insert(out, {id, dry and 'would purge' or 'purged', st or ''})
        table.insert(todo, id)
      end
    end
  end
  if not dry and #todo > 0 then
    local gone = {}
    for _, id in ipairs(todo) do
      purge_job(id)
      gone[id] = true
    end
    drop_events(gone)
  end
  local flat = {}
  for _, r in ipairs(out) do
    table.insert(flat, r[1])
    table.insert(flat, r[2])
    table.insert(flat, r[3])
  end
  return flat
end

if mode == 'sweep' then
  local limit, dead_max, ev_age = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  if not (limit and dead_max and ev_age) then
    return redis.error_reply('sweep: limit, dead_max and events_age_ms must be numbers')
  end
  local purged, later, trimmed, budget = 0, 0, 0, limit
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', NOW, 'LIMIT', 0, limit)) do
    budget = budget - 1
    local st = hget(id, 'state')
    if st and live(st) then
      redis.call('ZREM', P .. 'finished', id)  -- stale entry: it was revived
    elseif why_kept(id) then
      redis.call('ZADD', P .. 'finished', NOW + 3600000, id)  -- a parent of live jobs: look again in 1 h
      later = later + 1
    else
      purge_job(id)
      purged = purged + 1
    end
  end
  -- the dead-letter list is capped: the oldest (at the tail) beyond dead_max go
  local over = redis.call('LLEN', P .. 'dead') - dead_max
  while over > 0 and budget > 0 do
    local id = redis.call('LINDEX', P .. 'dead', -1)
    if hget(id, 'state') == 'failed' and not why_kept(id) then
      purge_job(id)
      purged = purged + 1
    else
      redis.call('RPOP', P .. 'dead')
    end
    trimmed = trimmed + 1
    over, budget = over - 1, budget - 1
  end
  local ev = 0
  if ev_age >= 0 then
    ev = redis.call('XTRIM', P .. 'events', 'MINID', math.max(0, NOW - math.floor(ev_age)))
  end
  return {purged, later, trimmed, ev}
end
return redis.error_reply('purge: unknown mode ' .. tostring(mode))
