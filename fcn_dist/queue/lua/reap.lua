-- ARGV: P, limit -> {ids whose lease expired (requeued, dead-lettered or cancelled),
--   {id, reason, ...} of the corrupt records dead-lettered}
promote_due()
local out = {}
local expired = redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(expired) do
  local st = hget(id, 'state')
  if st ~= 'running' and (not st or STATES[st]) then
    redis.call('ZREM', P .. 'running', id)  -- a stale entry (finished, purged)
  else
    local w = hget(id, 'worker') or ''
    local bad = problem(id)  -- before anything is written to the record
    if bad then
      dead_letter_corrupt(id, bad .. ' (lease of worker ' .. w .. ' expired)', w)
      redis.call('HSET', jkey(id), 'lease_ended', 'expired')
    else
      redis.call('ZREM', P .. 'running', id)
      redis.call('HSET', jkey(id), 'lease_ended', 'expired')
      local attempts = tonumber(hget(id, 'attempts'))
      local maxa = tonumber(hget(id, 'max_attempts'))
      if hget(id, 'cancel_requested') == '1' then
        local reason = (hget(id, 'cancel_reason') or 'cancelled') .. ' (worker ' .. w .. ' stopped heartbeating)'
        redis.call('HSET', jkey(id), 'error', reason)
        finish(id, 'cancelled', reason, w)
      elseif attempts >= maxa then
        local err = 'lease expired: worker ' .. w .. ' stopped heartbeating (attempt ' .. attempts
          .. ' of ' .. maxa .. ')'
        redis.call('HSET', jkey(id), 'error', err, 'traceback', '')
        finish(id, 'failed', err, w)
      else
        enqueue(id)
        record(id, 'lease_expired', 'queued', 'lease of worker ' .. w .. ' expired (attempt ' .. attempts
          .. ' of ' .. maxa .. ' used)', w)
      end
    end
    table.insert(out, id)
  end
end
return {out, CORRUPT}
