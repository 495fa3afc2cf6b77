-- ARGV: P, id, worker, lease, error, traceback, backoff_base_ms, backoff_max_ms, retryable
--   -> 'queued' (retry scheduled) | 'failed' | 'cancelled' | 'lost'
local id, worker, lease, err = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not holds(id, worker, lease) then return fenced(id, 'fail', worker, lease) end
local ended = hget(id, 'lease_ended')
if ended == 'failed' then return hget(id, 'state') end  -- a repeated call after a lost reply
if hget(id, 'state') ~= 'running' or (ended and ended ~= '') then
  return fenced(id, 'fail', worker, lease)
end
local bad = problem(id)
if bad then
  dead_letter_corrupt(id, bad .. ' (the attempt failed: ' .. err .. ')', worker)
  redis.call('HSET', jkey(id), 'traceback', ARGV[6], 'lease_ended', 'failed')
  return 'failed'
end
redis.call('ZREM', P .. 'running', id)
redis.call('HSET', jkey(id), 'error', err, 'traceback', ARGV[6], 'lease_ended', 'failed')
local attempts = tonumber(hget(id, 'attempts'))
local maxa = tonumber(hget(id, 'max_attempts'))
if ARGV[9] == '1' and attempts < maxa and hget(id, 'cancel_requested') ~= '1' then
  local delay = math.min(tonumber(ARGV[7]) * (2 ^ (attempts - 1)), tonumber(ARGV[8]))
  local due = NOW + math.floor(delay)
  redis.call('ZADD', P .. 'delayed', due, id)
  redis.call('HSET', jkey(id), 'retry_at', string.format('%.3f', due / 1000))
  record(id, 'retry_scheduled', 'queued', 'attempt ' .. attempts .. ' of ' .. maxa .. ' failed: '
    .. err .. '; retry in ' .. string.format('%.1f', delay / 1000) .. 's', worker)
  return 'queued'
end
if hget(id, 'cancel_requested') == '1' then
  finish(id, 'cancelled', hget(id, 'cancel_reason') or 'cancelled', worker)
  return 'cancelled'
end
local why = 'attempt ' .. attempts .. ' of ' .. maxa .. ' failed: ' .. err
if ARGV[9] ~= '1' then why = 'failed (not retryable): ' .. err end
finish(id, 'failed', why, worker)
return 'failed'
