-- ARGV: P, id, worker, reason -> 'ok' | 'lost'   (a running job stopped because of a cancel)
local id, worker = ARGV[2], ARGV[3]
local st = hget(id, 'state')
if hget(id, 'worker') ~= worker then return 'lost' end
if st == 'cancelled' then return 'ok' end
if st ~= 'running' then return 'lost' end
local reason = hget(id, 'cancel_reason')
if not reason or reason == '' then reason = ARGV[4] end
redis.call('HSET', jkey(id), 'error', reason)
finish(id, 'cancelled', reason, worker)
return 'ok'
