-- ARGV: P, id, worker, lease_ms -> 'ok' | 'cancel' | 'lost'
local id, worker = ARGV[2], ARGV[3]
touch_worker(worker)
if hget(id, 'state') ~= 'running' or hget(id, 'worker') ~= worker then return 'lost' end
local deadline = NOW + tonumber(ARGV[4])
redis.call('ZADD', P .. 'running', deadline, id)
redis.call('HSET', jkey(id), 'lease_deadline', string.format('%.3f', deadline / 1000),
  'heartbeat_at', NOWS)
if hget(id, 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
