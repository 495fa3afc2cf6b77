-- ARGV: P, id, cap, line... -> number of lines kept | 0
-- A job's log lines (the last `cap` kept); none once its record is gone (purged), so a late
-- push from a worker never leaves a logs key that nothing indexes.
local id, cap = ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', jkey(id)) == 0 then return 0 end
local k = P .. 'logs:' .. id
redis.call('RPUSH', k, unpack(ARGV, 4))
redis.call('LTRIM', k, -cap, -1)
return redis.call('LLEN', k)
