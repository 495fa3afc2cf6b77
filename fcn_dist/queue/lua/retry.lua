-- ARGV: P, id -> new state, or an error
local function revive(id, new_state, reason)
  redis.call('LREM', P .. 'dead', 0, id)
  redis.call('HSET', jkey(id), 'attempts', 0, 'cancel_requested', '0', 'cancel_reason', '',
    'cancelled_by_parent', '', 'finished_at', '', 'retry_at', '', 'error', '', 'traceback', '',
    'result', '')
  local k = hget(id, 'idem_key')
  if k and k ~= '' then
    local cur = redis.call('HGET', P .. 'idem', k)
    local cst = cur and hget(cur, 'state')
    if not cur or not (cst == 'queued' or cst == 'running' or cst == 'waiting') then
      redis.call('HSET', P .. 'idem', k, id)
    end
  end
  new_score(id)
  if new_state == 'queued' then enqueue(id) end
  record(id, 'retried', new_state, reason, '')
end
local id = ARGV[2]
local st = hget(id, 'state')
if not st then return redis.error_reply('unknown job ' .. id) end
local bad = problem(id)  -- checked before anything is written
if bad then
  return redis.error_reply('job ' .. id .. ' has a corrupt record (' .. bad .. '); fix the field and retry')
end
if st ~= 'failed' and st ~= 'cancelled' then
  return redis.error_reply('job ' .. id .. ' is ' .. st .. '; only failed or cancelled jobs can be retried')
end
local dep = hget(id, 'depends_on')
local new_state = 'queued'
if dep and dep ~= '' then
  local pst = hget(dep, 'state')
  if not pst then
    return redis.error_reply('job ' .. id .. ' cannot be retried: its parent job ' .. dep
      .. ' was purged; submit the chain again')
  elseif pst == 'failed' or pst == 'cancelled' then
    return redis.error_reply('job ' .. id .. ' waits for parent job ' .. dep .. ', which is ' .. pst
      .. '; retry the parent (its staged children follow it)')
  elseif pst == 'succeeded' then
    redis.call('HSET', jkey(id), 'init_from', best_checkpoint(hget(dep, 'result')))
  else
    new_state = 'waiting'
  end
end
revive(id, new_state, 'retried by user')
-- staged children cancelled because of this job wait for it again
local stack = {id}
while #stack > 0 do
  local pid = table.remove(stack)
  for _, cid in ipairs(redis.call('SMEMBERS', P .. 'children:' .. pid)) do
    if hget(cid, 'state') == 'cancelled' and hget(cid, 'cancelled_by_parent') == '1'
      and not problem(cid) then
      revive(cid, 'waiting', 'parent job ' .. pid .. ' retried')
      table.insert(stack, cid)
    end
  end
end
return new_state
