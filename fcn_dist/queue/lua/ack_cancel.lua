-- ARGV: P, id, worker, lease, reason -> 'ok' | 'lost'   (a running job stopped because of a cancel)
local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
if not holds(id, worker, lease) then return fenced(id, 'ack_cancel', worker, lease) end
local st, ended = hget(id, 'state'), hget(id, 'lease_ended')
if st == 'cancelled' then return 'ok' end  -- a repeat, or reaped while the cancel was pending
if st ~= 'running' or (ended and ended ~= '') then return fenced(id, 'ack_cancel', worker, lease) end
local reason = hget(id, 'cancel_reason')
if not reason or reason == '' then reason = ARGV[5] end
redis.call('HSET', jkey(id), 'error', reason, 'lease_ended', 'cancelled')
finish(id, 'cancelled', reason, worker)
return 'ok'
