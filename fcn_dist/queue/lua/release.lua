-- ARGV: P, id, worker, reason -> 'ok' | 'lost'
local id, worker = ARGV[2], ARGV[3]
if hget(id, 'state') ~= 'running' or hget(id, 'worker') ~= worker then return 'lost' end
redis.call('ZREM', P .. 'running', id)
local attempts = tonumber(hget(id, 'attempts'))
if attempts > 0 then redis.call('HINCRBY', jkey(id), 'attempts', -1) end
if hget(id, 'cancel_requested') == '1' then
  finish(id, 'cancelled', hget(id, 'cancel_reason') or 'cancelled', worker)
  return 'cancelled'
end
enqueue(id)
record(id, 'released', 'queued', ARGV[4], worker)
return 'ok'
