-- ARGV: P, id, worker, result_json -> 'ok' | 'lost'
local id, worker = ARGV[2], ARGV[3]
local st = hget(id, 'state')
if hget(id, 'worker') ~= worker then return 'lost' end
if st == 'succeeded' then return 'ok' end  -- a repeated call after a lost reply
if st ~= 'running' then return 'lost' end
redis.call('HSET', jkey(id), 'result', ARGV[4], 'error', '', 'traceback', '')
finish(id, 'succeeded', 'completed', worker)
release_children(id)
return 'ok'
