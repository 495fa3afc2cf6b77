-- ARGV: P, id, worker, lease, result_json -> 'ok' | 'lost'
local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
if not holds(id, worker, lease) then return fenced(id, 'complete', worker, lease) end
local ended = hget(id, 'lease_ended')
if ended == 'completed' then return 'ok' end  -- a repeated call after a lost reply
if hget(id, 'state') ~= 'running' or (ended and ended ~= '') then
  return fenced(id, 'complete', worker, lease)
end
redis.call('HSET', jkey(id), 'result', ARGV[5], 'error', '', 'traceback', '', 'lease_ended', 'completed')
finish(id, 'succeeded', 'completed', worker)
release_children(id)
return 'ok'
