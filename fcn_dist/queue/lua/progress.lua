-- ARGV: P, id, worker, lease, progress_json -> 'ok' | 'lost'
-- The run's progress, recorded only while the caller still holds the job's lease (never
-- recreates a record that was purged or reassigned).
local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
if hget(id, 'state') ~= 'running' or not holds(id, worker, lease) then return 'lost' end
redis.call('HSET', jkey(id), 'progress', ARGV[5])
return 'ok'
