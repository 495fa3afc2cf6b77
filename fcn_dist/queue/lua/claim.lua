-- ARGV: P, worker, lease_ms -> HGETALL of the claimed job, or false
local worker = ARGV[2]
touch_worker(worker)
promote_due()
for i = 1, 100 do
  local top = redis.call('ZRANGE', P .. 'ready', 0, 0)
  if #top == 0 then return false end
  local id = top[1]
  redis.call('ZREM', P .. 'ready', id)
  if hget(id, 'state') == 'queued' then
    local jk = jkey(id)
    local deadline = NOW + tonumber(ARGV[3])
    local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
    redis.call('HSET', jk, 'worker', worker, 'lease_deadline', string.format('%.3f', deadline / 1000),
      'started_at', NOWS, 'heartbeat_at', NOWS, 'cancel_requested', '0', 'retry_at', '')
    redis.call('ZADD', P .. 'running', deadline, id)
    record(id, 'claimed', 'running', 'attempt ' .. attempts .. ' of ' .. hget(id, 'max_attempts'), worker)
    return redis.call('HGETALL', jk)
  end
end
return false
