-- ARGV: P, id, worker, lease, reason -> 'ok' | 'cancelled' | 'failed' (corrupt) | 'lost'
local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
if not holds(id, worker, lease) then return fenced(id, 'release', worker, lease) end
local st, ended = hget(id, 'state'), hget(id, 'lease_ended')
if ended == 'released' then  -- a repeated call after a lost reply
  if st == 'cancelled' or st == 'failed' then return st end
  return 'ok'
end
if st ~= 'running' or (ended and ended ~= '') then return fenced(id, 'release', worker, lease) end
local bad = problem(id)
if bad then
  dead_letter_corrupt(id, bad, worker)
  redis.call('HSET', jkey(id), 'lease_ended', 'released')
  return 'failed'
end
redis.call('ZREM', P .. 'running', id)
redis.call('HSET', jkey(id), 'lease_ended', 'released')
local attempts = tonumber(hget(id, 'attempts'))
if attempts > 0 then redis.call('HINCRBY', jkey(id), 'attempts', -1) end
if hget(id, 'cancel_requested') == '1' then
  finish(id, 'cancelled', hget(id, 'cancel_reason') or 'cancelled', worker)
  return 'cancelled'
end
enqueue(id)
record(id, 'released', 'queued', ARGV[5], worker)
return 'ok'
