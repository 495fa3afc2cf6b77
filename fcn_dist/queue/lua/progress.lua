-- ARGV: P, id, worker, progress_json -> 'ok' | 'lost'
-- The run's progress, recorded only while the caller still runs the job (never recreates a
-- record that was purged or reassigned).
local id, worker = ARGV[2], ARGV[3]
if hget(id, 'state') ~= 'running' or hget(id, 'worker') ~= worker then return 'lost' end
redis.call('HSET', jkey(id), 'progress', ARGV[4])
return 'ok'
