-- ARGV: P -> {ready, delayed, running, due_in_ms of the next delayed job or -1}
local nxt = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
local due = -1
if #nxt > 0 then due = math.max(0, tonumber(nxt[2]) - NOW) end
return {redis.call('ZCARD', P .. 'ready'), redis.call('ZCARD', P .. 'delayed'),
  redis.call('ZCARD', P .. 'running'), due}
