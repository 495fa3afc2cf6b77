-- ARGV: P, id, worker, error, traceback, backoff_base_ms, backoff_max_ms, retryable
--   -> 'queued' (retry scheduled) | 'failed' | 'lost'
local id, worker, err = ARGV[2], ARGV[3], ARGV[4]
local st = hget(id, 'state')
if hget(id, 'worker') ~= worker then return 'lost' end
if st ~= 'running' then
  if st == 'failed' or st == 'queued' then return st end  -- a repeated call after a lost reply
  return 'lost'
end
redis.call('ZREM', P .. 'running', id)
redis.call('HSET', jkey(id), 'error', err, 'traceback', ARGV[5])
local attempts = tonumber(hget(id, 'attempts'))
local maxa = tonumber(hget(id, 'max_attempts'))
if ARGV[8] == '1' and attempts < maxa and hget(id, 'cancel_requested') ~= '1' then
  local delay = math.min(tonumber(ARGV[6]) * (2 ^ (attempts - 1)), tonumber(ARGV[7]))
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
if ARGV[8] ~= '1' then why = 'failed (not retryable): ' .. err end
finish(id, 'failed', why, worker)
return 'failed'
