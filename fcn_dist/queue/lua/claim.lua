-- ARGV: P, worker, lease_ms -> {HGETALL of the claimed job or {}, {id, reason, ...} of the corrupt
--   records dead-lettered on the way}
local worker, lease_ms = ARGV[2], tonumber(ARGV[3])
touch_worker(worker)
promote_due()
for i = 1, 100 do
  local top = redis.call('ZRANGE', P .. 'ready', 0, 0)
  if #top == 0 then break end
  local id = top[1]
  local st = hget(id, 'state')
  -- a queued record (or one whose state is not a state) is checked before anything is written
  local bad = st and (st == 'queued' or not STATES[st]) and problem(id)
  if bad then
    dead_letter_corrupt(id, bad, '')
  elseif st ~= 'queued' then
    redis.call('ZREM', P .. 'ready', id)  -- a stale entry (cancelled, purged)
  else
    redis.call('ZREM', P .. 'ready', id)
    local jk = jkey(id)
    local deadline = NOW + lease_ms
    local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
    local lease = redis.call('HINCRBY', jk, 'lease', 1)
    redis.call('HSET', jk, 'worker', worker, 'lease_deadline', string.format('%.3f', deadline / 1000),
      'started_at', NOWS, 'heartbeat_at', NOWS, 'cancel_requested', '0', 'retry_at', '',
      'lease_ended', '', 'lease_shifted', '')
    redis.call('ZADD', P .. 'running', deadline, id)
    record(id, 'claimed', 'running', 'attempt ' .. attempts .. ' of ' .. hget(id, 'max_attempts')
      .. ' (lease ' .. lease .. ')', worker)
    return {redis.call('HGETALL', jk), CORRUPT}
  end
end
return {{}, CORRUPT}
