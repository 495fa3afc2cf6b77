-- ARGV: P, id, reason -> {new_state}  ('cancelled' | 'cancelling' | unchanged terminal state)
local id, reason = ARGV[2], ARGV[3]
local st = hget(id, 'state')
if not st then return redis.error_reply('unknown job ' .. id) end
if st == 'queued' or st == 'waiting' then
  redis.call('HSET', jkey(id), 'error', reason)
  finish(id, 'cancelled', reason, '')
  return 'cancelled'
end
if st == 'running' then
  if hget(id, 'cancel_requested') ~= '1' then
    redis.call('HSET', jkey(id), 'cancel_requested', '1', 'cancel_reason', reason)
    record(id, 'cancel_requested', nil, reason, '')
  end
  return 'cancelling'
end
return st
