-- ARGV: P, force, chain_key, depends_on, retention_s, n, then n stages of 8 fields:
--       id, idem_key, priority, max_attempts, spec, variant, name, backbone
--   -> {id, created(1|0), state} per stage
-- One script for a whole submission: every stage is checked before the first write (Redis
-- keeps the writes of a script that errors), so a submission lands whole or not at all.
-- chain_key ~= '': the stages are a staged chain (each waits for the one before); the chain as
-- a whole is idempotent (`P chains`: chain key -> its job ids) while any of its jobs is active.
-- chain_key == '': independent jobs, each idempotent on its own idem_key (`P idem`).
local force, chain, dep, retention, n = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local F = 8
if not n or n < 1 or n ~= math.floor(n) or #ARGV ~= 6 + n * F then
  return redis.error_reply('submit: malformed arguments (' .. #ARGV .. ' for ' .. tostring(ARGV[6])
    .. ' stages)')
end
if not tonumber(retention) then
  return redis.error_reply('submit: retention must be a number of seconds, got ' .. retention)
end
local function active(st) return st == 'queued' or st == 'running' or st == 'waiting' end
local stages, seen = {}, {}
for i = 1, n do
  local b = 6 + (i - 1) * F
  local s = {id = ARGV[b + 1], idem = ARGV[b + 2], priority = ARGV[b + 3], max_attempts = ARGV[b + 4],
    spec = ARGV[b + 5], variant = ARGV[b + 6], name = ARGV[b + 7], backbone = ARGV[b + 8]}
  local where = 'submit: stage ' .. i .. ' (' .. s.variant .. ')'
  if not s.id:match('^[%w_.-]+$') then return redis.error_reply(where .. ': invalid job id ' .. s.id) end
  if seen[s.id] or redis.call('EXISTS', jkey(s.id)) == 1 then
    return redis.error_reply(where .. ': job ' .. s.id .. ' already exists')
  end
  seen[s.id] = true
  local p, m = tonumber(s.priority), tonumber(s.max_attempts)
  if not p or p ~= math.floor(p) or math.abs(p) > 1000 then
    return redis.error_reply(where .. ': priority must be a whole number in [-1000, 1000], got ' .. s.priority)
  end
  if not m or m ~= math.floor(m) or m < 1 then
    return redis.error_reply(where .. ': max_attempts must be a whole number >= 1, got ' .. s.max_attempts)
  end
  if s.spec == '' or s.variant == '' then return redis.error_reply(where .. ': empty spec or variant') end
  stages[i] = s
end
local pst = nil
if dep ~= '' then
  pst = hget(dep, 'state')
  if not pst then return redis.error_reply('unknown parent job ' .. dep) end
end

-- a live chain with the same stages: return it as it is
if chain ~= '' and force ~= '1' then
  local ex = redis.call('HGET', P .. 'chains', chain)
  if ex then
    local out, live = {}, false
    for cid in string.gmatch(ex, '[^,]+') do
      local st = hget(cid, 'state') or ''
      if active(st) then live = true end
      table.insert(out, cid)
      table.insert(out, 0)
      table.insert(out, st)
    end
    if live and #out == 3 * n then return out end
  end
end

-- create one job; `parent` ('' for none) with its state `ppst`; returns the new state
local function create(s, parent, ppst)
  local id = s.id
  local jk = jkey(id)
  redis.call('HSET', jk, 'id', id, 'spec', s.spec, 'variant', s.variant, 'name', s.name,
    'backbone', s.backbone, 'priority', s.priority, 'max_attempts', s.max_attempts, 'attempts', 0,
    'created_at', NOWS, 'depends_on', parent, 'idem_key', s.idem, 'chain_key', chain,
    'retention', retention, 'run_dir', '', 'init_from', '', 'worker', '', 'error', '',
    'cancel_requested', '0')
  local seq = new_score(id)
  redis.call('HSET', jk, 'seq', seq)
  redis.call('ZADD', P .. 'jobs', seq, id)
  if s.idem ~= '' then redis.call('HSET', P .. 'idem', s.idem, id) end
  if parent == '' then
    enqueue(id)
    record(id, 'submitted', 'queued', 'submitted', '')
    return 'queued'
  end
  redis.call('SADD', P .. 'children:' .. parent, id)
  if ppst == 'succeeded' then
    redis.call('HSET', jk, 'init_from', best_checkpoint(hget(parent, 'result')))
    enqueue(id)
    record(id, 'submitted', 'queued', 'submitted; parent job ' .. parent .. ' already succeeded', '')
    return 'queued'
  end
  if ppst == 'failed' or ppst == 'cancelled' then
    local reason = 'parent job ' .. parent .. ' is ' .. ppst
    redis.call('HSET', jk, 'finished_at', NOWS, 'error', reason, 'cancel_reason', reason,
      'cancelled_by_parent', '1')
    clear_idem(id)
    record(id, 'cancelled', 'cancelled', reason, '')
    return 'cancelled'
  end
  record(id, 'submitted', 'waiting', 'waiting for parent job ' .. parent, '')
  return 'waiting'
end

local out, ids = {}, {}
local parent, ppst = dep, pst
for _, s in ipairs(stages) do
  local ex = nil
  if chain == '' and s.idem ~= '' and force ~= '1' then
    ex = redis.call('HGET', P .. 'idem', s.idem)
    if ex and not active(hget(ex, 'state')) then ex = nil end
  end
  if ex then
    table.insert(out, ex)
    table.insert(out, 0)
    table.insert(out, hget(ex, 'state'))
  else
    local st = create(s, parent, ppst)
    table.insert(out, s.id)
    table.insert(out, 1)
    table.insert(out, st)
    table.insert(ids, s.id)
    if chain ~= '' then parent, ppst = s.id, st end
  end
end
if chain ~= '' then redis.call('HSET', P .. 'chains', chain, table.concat(ids, ',')) end
return out
