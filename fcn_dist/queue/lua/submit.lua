-- ARGV: P, id, idem_key, force, priority, max_attempts, depends_on, spec, variant, name,
--       backbone, run_dir  ->  {id, created(1|0), state}
local id, idem, force, dep = ARGV[2], ARGV[3], ARGV[4], ARGV[7]
if idem ~= '' and force ~= '1' then
  local ex = redis.call('HGET', P .. 'idem', idem)
  if ex then
    local st = hget(ex, 'state')
    if st == 'queued' or st == 'running' or st == 'waiting' then return {ex, 0, st} end
  end
end
local pst = nil
if dep ~= '' then
  pst = hget(dep, 'state')
  if not pst then return redis.error_reply('unknown parent job ' .. dep) end
end
local jk = jkey(id)
redis.call('HSET', jk, 'id', id, 'spec', ARGV[8], 'variant', ARGV[9], 'name', ARGV[10],
  'backbone', ARGV[11], 'priority', ARGV[5], 'max_attempts', ARGV[6], 'attempts', 0,
  'created_at', NOWS, 'depends_on', dep, 'idem_key', idem, 'run_dir', ARGV[12],
  'init_from', '', 'worker', '', 'error', '', 'cancel_requested', '0')
local seq = new_score(id)
redis.call('HSET', jk, 'seq', seq)
redis.call('ZADD', P .. 'jobs', seq, id)
if idem ~= '' then redis.call('HSET', P .. 'idem', idem, id) end
if dep == '' then
  enqueue(id)
  record(id, 'submitted', 'queued', 'submitted', '')
  return {id, 1, 'queued'}
end
redis.call('SADD', P .. 'children:' .. dep, id)
if pst == 'succeeded' then
  redis.call('HSET', jk, 'init_from', best_checkpoint(hget(dep, 'result')))
  enqueue(id)
  record(id, 'submitted', 'queued', 'submitted; parent job ' .. dep .. ' already succeeded', '')
  return {id, 1, 'queued'}
end
if pst == 'failed' or pst == 'cancelled' then
  local reason = 'parent job ' .. dep .. ' is ' .. pst
  redis.call('HSET', jk, 'finished_at', NOWS, 'error', reason, 'cancel_reason', reason,
    'cancelled_by_parent', '1')
  clear_idem(id)
  record(id, 'cancelled', 'cancelled', reason, '')
  return {id, 1, 'cancelled'}
end
record(id, 'submitted', 'waiting', 'waiting for parent job ' .. dep, '')
return {id, 1, 'waiting'}
