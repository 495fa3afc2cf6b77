-- ARGV: P, id, worker, lease, lease_ms -> 'ok' | 'cancel' | 'lost' | 'ended' (its holder reported
--   the outcome). A lease whose deadline passed but was not reaped (Redis was down) is re-asserted.
local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
touch_worker(worker)
if not holds(id, worker, lease) then return 'lost' end
local ended = hget(id, 'lease_ended') or ''
if ended == 'expired' then return 'lost' end
if ended ~= '' then return 'ended' end
if hget(id, 'state') ~= 'running' then return 'lost' end
local deadline = NOW + tonumber(ARGV[5])
redis.call('ZADD', P .. 'running', deadline, id)
redis.call('HSET', jkey(id), 'lease_deadline', string.format('%.3f', deadline / 1000),
  'heartbeat_at', NOWS, 'lease_shifted', '')
if hget(id, 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
