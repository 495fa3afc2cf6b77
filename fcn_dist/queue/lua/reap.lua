-- ARGV: P, limit -> list of job ids whose lease expired (requeued, dead-lettered or cancelled)
promote_due()
local out = {}
local expired = redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(expired) do
  redis.call('ZREM', P .. 'running', id)
  if hget(id, 'state') == 'running' then
    local w = hget(id, 'worker') or ''
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
    table.insert(out, id)
  end
end
return out
