"""The job queue: job records and atomic state transitions on Redis.

## Redis data model

Every key starts with the queue's prefix `P` (default `fcn:`; `--prefix` / `FCN_REDIS_PREFIX`).
All times are the **Redis server's** clock (`TIME` inside the scripts), so workers on hosts with
skewed clocks agree on lease deadlines. Every state change is one Lua script (atomic on the
server). The keys of one queue are computed inside the scripts from the prefix, so one queue
lives on one Redis node (for Redis Cluster put a hash tag in the prefix, e.g. `{fcn}:`).

| key | type | contents |
|---|---|---|
| `P job:<id>` | hash | the job record (fields below) |
| `P jobs` | zset | every job id, scored by submission sequence (listing order) |
| `P state:<state>` | set | job ids per state (listing and `counts()`) |
| `P ready` | zset | claimable job ids; score `-priority * 2**40 + seq` (high priority first, FIFO within a priority); `ZRANGE 0 0` is the next job |
| `P running` | zset | claimed job ids scored by lease deadline (ms); expired ones are reaped |
| `P delayed` | zset | jobs waiting out a retry backoff, scored by due time (ms); moved to `ready` when due |
| `P dead` | list | dead-lettered job ids (newest first); `fcn-jobs dead` |
| `P children:<id>` | set | staged jobs waiting for job `<id>` |
| `P idem` | hash | idempotency key -> job id of the active (waiting/queued/running) job; cleared when it finishes |
| `P hist:<id>` | list | state history of a job, JSON entries `{t, event, from, to, reason, worker, attempt}` (last 200) |
| `P logs:<id>` | list | log lines the worker pushed while running the job (last 2000) |
| `P events` | stream | one entry per state change: `job, event, from, to, reason, worker, attempt` (`MAXLEN ~ 10000`) |
| `P workers` | zset | worker id -> last time it claimed or heartbeated (ms) |
| `P seq` | string | submission counter (FIFO order) |

Job record fields (`P job:<id>`): `id`, `spec` (the validated `JobSpec` as canonical JSON, never
pickle), `variant`, `backbone`, `name`, `state`, `attempts`, `max_attempts`, `priority`, `score`,
`seq`, `created_at`, `updated_at`, `started_at`, `finished_at`, `heartbeat_at` (seconds since the
epoch, server clock), `worker` (last claimer), `lease_deadline`, `retry_at`, `error` (one line),
`traceback` (tail), `result` (the run's JSON result summary), `depends_on` (parent job id for
staged chains), `init_from` (the parent's `best_checkpoint`, set when the parent succeeds),
`idem_key`, `run_dir`, `cancel_requested` (`1` while a running job is being cancelled),
`cancel_reason`, `cancelled_by_parent`.

### States and transitions

```
            submit (no parent / parent done)            claim (attempts += 1, lease)
  submit ─────────────────────────────────> queued ──────────────────────────────> running
  (staged child)                               ^  ^                                 │ │ │ │
  ──> waiting ── parent succeeded ─────────────┘  └── fail, attempts < max (backoff  │ │ │ │
        │        (init_from = parent's best         via `delayed`); lease expired ──┘ │ │ │
        │         checkpoint)                        (attempt counts); release        │ │ │
        │                                            (SIGTERM; attempt not counted)   │ │ │
        └── parent failed/cancelled ──> cancelled <── cancel (queued/waiting at once;   │ │ │
                                           ^           running: flag seen at heartbeat)─┘ │ │
                                           │                                              │ │
  retry (attempts reset) <── failed <──────┼── fail with attempts >= max / non-retryable ─┘ │
                           (dead list)     │   lease expired with attempts >= max           │
                                           │                                                │
                          succeeded <──────┼── complete (result summary) ───────────────────┘
```

- `waiting -> queued`: the parent succeeded; the child's `init_from` is the parent's
  `result.best_checkpoint`.
- `waiting|queued -> cancelled`: `cancel`, or the parent failed or was cancelled (the reason names
  the parent; cancellation cascades down the chain).
- `queued -> running`: `claim` (one script: pop the best ready job, lease it, bump `attempts`,
  set `worker`) — a job runs on exactly one worker at a time.
- `running -> running`: `heartbeat` extends the lease only if the caller still owns the job; it
  answers `cancel` when a cancel was requested, `lost` when the job is no longer the caller's.
- `running -> queued`: `release` (SIGTERM; the attempt is given back), a retryable `fail` with
  attempts left (after an exponential backoff `base * 2**(attempts-1)`, capped), or `reap` of an
  expired lease (the attempt counts).
- `running -> failed`: `fail` with no attempts left or a non-retryable error, or an expired lease
  with no attempts left; the id goes to `P dead`.
- `running -> succeeded`: `complete` (owner-checked) stores the result summary.
- `running -> cancelled`: the worker saw the cancel flag and stopped (`ack_cancel`), or its lease
  expired while a cancel was pending.
- `failed|cancelled -> queued|waiting`: `retry` resets attempts, takes the id off `P dead`, and
  revives the staged children that were cancelled because of this job.
- Idempotency: `submit` of the same spec JSON (variant included) and chain position returns the
  active job's id while it is waiting, queued or running, unless `force`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from fcn_dist import config
from fcn_dist.errors import QueueError

STATES = ("waiting", "queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("waiting", "queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
DEFAULT_PREFIX = "fcn:"
DEFAULT_MAX_ATTEMPTS = 3
PRIORITY_LIMIT = 1000  # |priority| <= 1000 keeps ready-queue scores exact in a double
EVENTS_MAXLEN = 10000
LOG_LINES_MAX = 2000
LOG_LINE_CHARS = 2000
TRACEBACK_CHARS = 4000
ERROR_CHARS = 1000

T = TypeVar("T")


class RedisUnavailable(QueueError):
    """Redis cannot be reached (refused, timed out, loading); callers may retry with backoff."""


class LeaseLost(QueueError):
    """The worker no longer owns the job (its lease expired and another worker took it)."""


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------- Lua scripts
# One prelude shared by every script: the clock, key helpers, history/event recording and the
# cascades. ARGV[1] is always the key prefix.
_PRELUDE = r"""
local P = ARGV[1]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local NOWS = string.format('%.3f', NOW / 1000)
local function jkey(id) return P .. 'job:' .. id end
local function hget(id, f) return redis.call('HGET', jkey(id), f) end

-- record an event; `new` may be nil (state unchanged)
local function record(id, event, new, reason, worker)
  local jk = jkey(id)
  local old = redis.call('HGET', jk, 'state') or ''
  local to = old
  if new then
    to = new
    if old ~= '' then redis.call('SREM', P .. 'state:' .. old, id) end
    redis.call('SADD', P .. 'state:' .. new, id)
    redis.call('HSET', jk, 'state', new)
  end
  redis.call('HSET', jk, 'updated_at', NOWS)
  local attempts = redis.call('HGET', jk, 'attempts') or '0'
  reason = reason or ''
  worker = worker or ''
  redis.call('RPUSH', P .. 'hist:' .. id, cjson.encode({t = NOW / 1000, event = event, from = old,
    to = to, reason = reason, worker = worker, attempt = tonumber(attempts)}))
  redis.call('LTRIM', P .. 'hist:' .. id, -200, -1)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', 10000, '*', 'job', id, 'event', event,
    'from', old, 'to', to, 'reason', reason, 'worker', worker, 'attempt', attempts)
end

local function touch_worker(w)
  if w and w ~= '' then redis.call('ZADD', P .. 'workers', NOW, w) end
end

local function drop_from_queues(id)
  redis.call('ZREM', P .. 'ready', id)
  redis.call('ZREM', P .. 'delayed', id)
  redis.call('ZREM', P .. 'running', id)
end

local function clear_idem(id)
  local k = hget(id, 'idem_key')
  if k and k ~= '' and redis.call('HGET', P .. 'idem', k) == id then
    redis.call('HDEL', P .. 'idem', k)
  end
end

local function enqueue(id)
  redis.call('ZADD', P .. 'ready', hget(id, 'score'), id)
end

-- cancel the waiting/queued descendants of `root` ("parent job X failed|was cancelled")
local function cascade_cancel(root, how)
  local stack = {{root, how}}
  while #stack > 0 do
    local item = table.remove(stack)
    local pid, phow = item[1], item[2]
    for _, cid in ipairs(redis.call('SMEMBERS', P .. 'children:' .. pid)) do
      local st = hget(cid, 'state')
      if st == 'waiting' or st == 'queued' then
        local reason = 'parent job ' .. pid .. ' ' .. phow
        drop_from_queues(cid)
        redis.call('HSET', jkey(cid), 'finished_at', NOWS, 'error', reason,
          'cancel_reason', reason, 'cancelled_by_parent', '1')
        record(cid, 'cancelled', 'cancelled', reason, '')
        clear_idem(cid)
        table.insert(stack, {cid, 'was cancelled'})
      end
    end
  end
end

local function finish(id, state, reason, worker)
  drop_from_queues(id)
  redis.call('HSET', jkey(id), 'finished_at', NOWS, 'cancel_requested', '0')
  clear_idem(id)
  record(id, state, state, reason, worker)
  if state == 'failed' then
    redis.call('LPUSH', P .. 'dead', id)
    cascade_cancel(id, 'failed')
  elseif state == 'cancelled' then
    redis.call('HSET', jkey(id), 'cancel_reason', reason)
    cascade_cancel(id, 'was cancelled')
  end
end

local function best_checkpoint(result)
  local ok, dec = pcall(cjson.decode, result or '')
  if ok and type(dec) == 'table' and type(dec['best_checkpoint']) == 'string' then
    return dec['best_checkpoint']
  end
  return ''
end

-- the parent succeeded: its waiting children become queued with init_from = its checkpoint
local function release_children(pid)
  local ckpt = best_checkpoint(hget(pid, 'result'))
  for _, cid in ipairs(redis.call('SMEMBERS', P .. 'children:' .. pid)) do
    if hget(cid, 'state') == 'waiting' then
      redis.call('HSET', jkey(cid), 'init_from', ckpt)
      enqueue(cid)
      record(cid, 'queued', 'queued', 'parent job ' .. pid .. ' succeeded', '')
    end
  end
end

local function promote_due()
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', id)
    if hget(id, 'state') == 'queued' then enqueue(id) end
  end
end

-- score for the ready queue: high priority first, FIFO (fresh sequence number) within one
local function new_score(id)
  local seq = redis.call('INCR', P .. 'seq')
  local score = -tonumber(hget(id, 'priority')) * 1099511627776 + seq
  redis.call('HSET', jkey(id), 'score', string.format('%.0f', score))
  return seq
end
"""

# ARGV: P, id, idem_key, force, priority, max_attempts, depends_on, spec, variant, name,
#       backbone, run_dir  ->  {id, created(1|0), state}
_SUBMIT = r"""
local id, idem, force, dep = ARGV[2], ARGV[3], ARGV[4], ARGV[7]
if idem ~= '' and force ~= '1' then
  local ex = redis.call('HGET', P .. 'idem', idem)
  if ex then
    local st = hget(ex, 'state')
    if st == 'queued' or st == 'running' or st == 'waiting' then return {ex, 0, st} end
  end
end
local pst = nil
if dep ~= '' then
  pst = hget(dep, 'state')
  if not pst then return redis.error_reply('unknown parent job ' .. dep) end
end
local jk = jkey(id)
redis.call('HSET', jk, 'id', id, 'spec', ARGV[8], 'variant', ARGV[9], 'name', ARGV[10],
  'backbone', ARGV[11], 'priority', ARGV[5], 'max_attempts', ARGV[6], 'attempts', 0,
  'created_at', NOWS, 'depends_on', dep, 'idem_key', idem, 'run_dir', ARGV[12],
  'init_from', '', 'worker', '', 'error', '', 'cancel_requested', '0')
local seq = new_score(id)
redis.call('HSET', jk, 'seq', seq)
redis.call('ZADD', P .. 'jobs', seq, id)
if idem ~= '' then redis.call('HSET', P .. 'idem', idem, id) end
if dep == '' then
  enqueue(id)
  record(id, 'submitted', 'queued', 'submitted', '')
  return {id, 1, 'queued'}
end
redis.call('SADD', P .. 'children:' .. dep, id)
if pst == 'succeeded' then
  redis.call('HSET', jk, 'init_from', best_checkpoint(hget(dep, 'result')))
  enqueue(id)
  record(id, 'submitted', 'queued', 'submitted; parent job ' .. dep .. ' already succeeded', '')
  return {id, 1, 'queued'}
end
if pst == 'failed' or pst == 'cancelled' then
  local reason = 'parent job ' .. dep .. ' is ' .. pst
  redis.call('HSET', jk, 'finished_at', NOWS, 'error', reason, 'cancel_reason', reason,
    'cancelled_by_parent', '1')
  clear_idem(id)
  record(id, 'cancelled', 'cancelled', reason, '')
  return {id, 1, 'cancelled'}
end
record(id, 'submitted', 'waiting', 'waiting for parent job ' .. dep, '')
return {id, 1, 'waiting'}
"""

# ARGV: P, worker, lease_ms -> HGETALL of the claimed job, or false
_CLAIM = r"""
local worker = ARGV[2]
touch_worker(worker)
promote_due()
for i = 1, 100 do
  local top = redis.call('ZRANGE', P .. 'ready', 0, 0)
  if #top == 0 then return false end
  local id = top[1]
  redis.call('ZREM', P .. 'ready', id)
  if hget(id, 'state') == 'queued' then
    local jk = jkey(id)
    local deadline = NOW + tonumber(ARGV[3])
    local attempts = redis.call('HINCRBY', jk, 'attempts', 1)
    redis.call('HSET', jk, 'worker', worker, 'lease_deadline', string.format('%.3f', deadline / 1000),
      'started_at', NOWS, 'heartbeat_at', NOWS, 'cancel_requested', '0', 'retry_at', '')
    redis.call('ZADD', P .. 'running', deadline, id)
    record(id, 'claimed', 'running', 'attempt ' .. attempts .. ' of ' .. hget(id, 'max_attempts'), worker)
    return redis.call('HGETALL', jk)
  end
end
return false
"""

# ARGV: P, id, worker, lease_ms -> 'ok' | 'cancel' | 'lost'
_HEARTBEAT = r"""
local id, worker = ARGV[2], ARGV[3]
touch_worker(worker)
if hget(id, 'state') ~= 'running' or hget(id, 'worker') ~= worker then return 'lost' end
local deadline = NOW + tonumber(ARGV[4])
redis.call('ZADD', P .. 'running', deadline, id)
redis.call('HSET', jkey(id), 'lease_deadline', string.format('%.3f', deadline / 1000),
  'heartbeat_at', NOWS)
if hget(id, 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
"""

# ARGV: P, id, worker, result_json -> 'ok' | 'lost'
_COMPLETE = r"""
local id, worker = ARGV[2], ARGV[3]
local st = hget(id, 'state')
if hget(id, 'worker') ~= worker then return 'lost' end
if st == 'succeeded' then return 'ok' end  -- a repeated call after a lost reply
if st ~= 'running' then return 'lost' end
redis.call('HSET', jkey(id), 'result', ARGV[4], 'error', '', 'traceback', '')
finish(id, 'succeeded', 'completed', worker)
release_children(id)
return 'ok'
"""

# ARGV: P, id, worker, error, traceback, backoff_base_ms, backoff_max_ms, retryable
#   -> 'queued' (retry scheduled) | 'failed' | 'lost'
_FAIL = r"""
local id, worker, err = ARGV[2], ARGV[3], ARGV[4]
local st = hget(id, 'state')
if hget(id, 'worker') ~= worker then return 'lost' end
if st ~= 'running' then
  if st == 'failed' or st == 'queued' then return st end  -- a repeated call after a lost reply
  return 'lost'
end
redis.call('ZREM', P .. 'running', id)
redis.call('HSET', jkey(id), 'error', err, 'traceback', ARGV[5])
local attempts = tonumber(hget(id, 'attempts'))
local maxa = tonumber(hget(id, 'max_attempts'))
if ARGV[8] == '1' and attempts < maxa and hget(id, 'cancel_requested') ~= '1' then
  local delay = math.min(tonumber(ARGV[6]) * (2 ^ (attempts - 1)), tonumber(ARGV[7]))
  local due = NOW + math.floor(delay)
  redis.call('ZADD', P .. 'delayed', due, id)
  redis.call('HSET', jkey(id), 'retry_at', string.format('%.3f', due / 1000))
  record(id, 'retry_scheduled', 'queued', 'attempt ' .. attempts .. ' of ' .. maxa .. ' failed: '
    .. err .. '; retry in ' .. string.format('%.1f', delay / 1000) .. 's', worker)
  return 'queued'
end
if hget(id, 'cancel_requested') == '1' then
  finish(id, 'cancelled', hget(id, 'cancel_reason') or 'cancelled', worker)
  return 'cancelled'
end
local why = 'attempt ' .. attempts .. ' of ' .. maxa .. ' failed: ' .. err
if ARGV[8] ~= '1' then why = 'failed (not retryable): ' .. err end
finish(id, 'failed', why, worker)
return 'failed'
"""

# ARGV: P, id, worker, reason -> 'ok' | 'lost'
_RELEASE = r"""
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
"""

# ARGV: P, id, worker, reason -> 'ok' | 'lost'   (a running job stopped because of a cancel)
_ACK_CANCEL = r"""
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
"""

# ARGV: P, id, reason -> {new_state}  ('cancelled' | 'cancelling' | unchanged terminal state)
_CANCEL = r"""
local id, reason = ARGV[2], ARGV[3]
local st = hget(id, 'state')
if not st then return redis.error_reply('unknown job ' .. id) end
if st == 'queued' or st == 'waiting' then
  redis.call('HSET', jkey(id), 'error', reason)
  finish(id, 'cancelled', reason, '')
  return 'cancelled'
end
if st == 'running' then
  if hget(id, 'cancel_requested') ~= '1' then
    redis.call('HSET', jkey(id), 'cancel_requested', '1', 'cancel_reason', reason)
    record(id, 'cancel_requested', nil, reason, '')
  end
  return 'cancelling'
end
return st
"""

# ARGV: P, id -> new state, or an error
_RETRY = r"""
local function revive(id, new_state, reason)
  redis.call('LREM', P .. 'dead', 0, id)
  redis.call('HSET', jkey(id), 'attempts', 0, 'cancel_requested', '0', 'cancel_reason', '',
    'cancelled_by_parent', '', 'finished_at', '', 'retry_at', '', 'error', '', 'traceback', '',
    'result', '')
  local k = hget(id, 'idem_key')
  if k and k ~= '' then
    local cur = redis.call('HGET', P .. 'idem', k)
    local cst = cur and hget(cur, 'state')
    if not cur or not (cst == 'queued' or cst == 'running' or cst == 'waiting') then
      redis.call('HSET', P .. 'idem', k, id)
    end
  end
  new_score(id)
  if new_state == 'queued' then enqueue(id) end
  record(id, 'retried', new_state, reason, '')
end
local id = ARGV[2]
local st = hget(id, 'state')
if not st then return redis.error_reply('unknown job ' .. id) end
if st ~= 'failed' and st ~= 'cancelled' then
  return redis.error_reply('job ' .. id .. ' is ' .. st .. '; only failed or cancelled jobs can be retried')
end
local dep = hget(id, 'depends_on')
local new_state = 'queued'
if dep and dep ~= '' then
  local pst = hget(dep, 'state')
  if pst == 'failed' or pst == 'cancelled' then
    return redis.error_reply('job ' .. id .. ' waits for parent job ' .. dep .. ', which is ' .. pst
      .. '; retry the parent (its staged children follow it)')
  elseif pst == 'succeeded' then
    redis.call('HSET', jkey(id), 'init_from', best_checkpoint(hget(dep, 'result')))
  else
    new_state = 'waiting'
  end
end
revive(id, new_state, 'retried by user')
-- staged children cancelled because of this job wait for it again
local stack = {id}
while #stack > 0 do
  local pid = table.remove(stack)
  for _, cid in ipairs(redis.call('SMEMBERS', P .. 'children:' .. pid)) do
    if hget(cid, 'state') == 'cancelled' and hget(cid, 'cancelled_by_parent') == '1' then
      revive(cid, 'waiting', 'parent job ' .. pid .. ' retried')
      table.insert(stack, cid)
    end
  end
end
return new_state
"""

# ARGV: P, limit -> list of job ids whose lease expired (requeued, dead-lettered or cancelled)
_REAP = r"""
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
"""

# ARGV: P -> {ready, delayed, running, due_in_ms of the next delayed job or -1}
_PENDING = r"""
local nxt = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
local due = -1
if #nxt > 0 then due = math.max(0, tonumber(nxt[2]) - NOW) end
return {redis.call('ZCARD', P .. 'ready'), redis.call('ZCARD', P .. 'delayed'),
  redis.call('ZCARD', P .. 'running'), due}
"""


# --------------------------------------------------------------------------- job record
def _f(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


@dataclass
class Job:
    """A read-only view of one job record (``P job:<id>``)."""

    id: str
    state: str
    spec_json: str
    variant: str = ""
    backbone: str = ""
    name: str = ""
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    priority: int = 0
    created_at: float | None = None
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    lease_deadline: float | None = None
    retry_at: float | None = None
    worker: str = ""
    error: str = ""
    traceback: str = ""
    result: dict[str, Any] | None = None
    depends_on: str = ""
    init_from: str = ""
    idem_key: str = ""
    run_dir: str = ""
    dashboard: dict[str, str] | None = None  # Ray dashboard links, recorded by the worker
    cancel_requested: bool = False
    cancel_reason: str = ""
    raw: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> "Job":
        """Build from the ``HGETALL`` of a job record."""
        result = None
        if h.get("result"):
            try:
                result = json.loads(h["result"])
            except ValueError:
                result = {"unparsed": h["result"]}
        dashboard = None
        if h.get("dashboard"):
            try:
                dashboard = json.loads(h["dashboard"])
            except ValueError:
                dashboard = None
        return cls(
            id=h.get("id", ""),
            state=h.get("state", ""),
            spec_json=h.get("spec", "{}"),
            variant=h.get("variant", ""),
            backbone=h.get("backbone", ""),
            name=h.get("name", ""),
            attempts=int(h.get("attempts") or 0),
            max_attempts=int(h.get("max_attempts") or DEFAULT_MAX_ATTEMPTS),
            priority=int(h.get("priority") or 0),
            created_at=_f(h.get("created_at")),
            updated_at=_f(h.get("updated_at")),
            started_at=_f(h.get("started_at")),
            finished_at=_f(h.get("finished_at")),
            heartbeat_at=_f(h.get("heartbeat_at")),
            lease_deadline=_f(h.get("lease_deadline")),
            retry_at=_f(h.get("retry_at")),
            worker=h.get("worker", ""),
            error=h.get("error", ""),
            traceback=h.get("traceback", ""),
            result=result,
            depends_on=h.get("depends_on", ""),
            init_from=h.get("init_from", ""),
            idem_key=h.get("idem_key", ""),
            run_dir=h.get("run_dir", ""),
            dashboard=dashboard,
            cancel_requested=h.get("cancel_requested") == "1",
            cancel_reason=h.get("cancel_reason", ""),
            raw=dict(h),
        )

    @property
    def spec(self):
        """The job's :class:`~fcn_dist.spec.JobSpec`, parsed and validated from its JSON."""
        from fcn_dist.spec import JobSpec

        return JobSpec.from_json(self.spec_json, source=f"job {self.id} spec")

    @property
    def spec_dict(self) -> dict[str, Any]:
        """The spec as a plain dict (no validation; for display)."""
        try:
            return json.loads(self.spec_json)
        except ValueError:
            return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the record (spec as a dict)."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("raw", "spec_json")}
        d["spec"] = self.spec_dict
        return d


@dataclass(frozen=True)
class Submission:
    """What :meth:`JobQueue.submit` did: the job id, whether it is new, and its state."""

    id: str
    created: bool
    state: str
    variant: str = ""


def idempotency_key(spec_json: str, chain: str = "") -> str:
    """The idempotency key of a spec: sha256 of its canonical JSON (variant included) and its
    position in a staged chain (``""`` for a stand-alone job)."""
    return hashlib.sha256(f"v1\n{spec_json}\n{chain}".encode()).hexdigest()[:32]


def _wrap_redis_errors(fn: Callable[..., T]) -> Callable[..., T]:
    @wraps(fn)
    def inner(self: "JobQueue", *a: Any, **kw: Any) -> T:
        try:
            return fn(self, *a, **kw)
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as e:
            raise QueueError(f"redis at {self.safe_url} refused the credentials: {e}") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError, OSError) as e:
            raise RedisUnavailable(f"redis unavailable at {self.safe_url}: {_one_line(e)}") from None
        except redis.exceptions.ResponseError as e:
            msg = str(e)
            if "NOAUTH" in msg or "WRONGPASS" in msg or "NOPERM" in msg:
                raise QueueError(f"redis at {self.safe_url} refused the credentials: {msg}") from None
            if "LOADING" in msg:
                raise RedisUnavailable(f"redis unavailable at {self.safe_url}: {msg}") from None
            # errors raised by our scripts: "unknown job X", "job X is running; ..."
            raise QueueError(_script_message(msg)) from None

    return inner


def _script_message(msg: str) -> str:
    # redis prefixes error_reply strings with "ERR " in some versions, sometimes appends context
    msg = msg.strip()
    if msg.startswith("ERR "):
        msg = msg[4:]
    return msg.split(" script: ")[0].split("\n")[0]


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


# --------------------------------------------------------------------------- the queue
class JobQueue:
    """The job queue on Redis (see the module docstring for the data model).

    ``url`` falls back to ``$FCN_REDIS_URL`` (``fcn_dist.config.redis_url``); ``prefix`` isolates
    one queue's keys (tests use one per test). Connection problems raise :class:`RedisUnavailable`
    (a :class:`QueueError`); callers that should survive a Redis restart retry with
    :meth:`call_with_retry`.
    """

    def __init__(self, url: str | None = None, prefix: str = DEFAULT_PREFIX, *,
                 socket_timeout: float = 10.0, connect_timeout: float = 3.0,
                 backoff_base: float = 5.0, backoff_max: float = 300.0):
        self.url = config.redis_url(url)
        self.safe_url = redact_url(self.url)
        if not prefix:
            raise QueueError("the queue prefix must not be empty")
        self.prefix = prefix
        self.backoff_base = backoff_base  # seconds before the 2nd attempt; doubles each time
        self.backoff_max = backoff_max
        try:
            self.redis = redis.Redis.from_url(
                self.url, decode_responses=True, socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout, health_check_interval=15,
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
            )
        except ValueError as e:
            raise QueueError(f"invalid redis url {self.safe_url}: {e}") from None
        r = self.redis
        self._submit = r.register_script(_PRELUDE + _SUBMIT)
        self._claim = r.register_script(_PRELUDE + _CLAIM)
        self._heartbeat = r.register_script(_PRELUDE + _HEARTBEAT)
        self._complete = r.register_script(_PRELUDE + _COMPLETE)
        self._fail = r.register_script(_PRELUDE + _FAIL)
        self._release = r.register_script(_PRELUDE + _RELEASE)
        self._ack_cancel = r.register_script(_PRELUDE + _ACK_CANCEL)
        self._cancel = r.register_script(_PRELUDE + _CANCEL)
        self._retry = r.register_script(_PRELUDE + _RETRY)
        self._reap = r.register_script(_PRELUDE + _REAP)
        self._pending = r.register_script(_PRELUDE + _PENDING)

    def __repr__(self) -> str:
        return f"JobQueue({self.safe_url!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self.redis.close()

    def key(self, *parts: str) -> str:
        """The full Redis key for ``parts`` (``key('job', id)`` -> ``fcn:job:<id>``)."""
        return self.prefix + ":".join(parts)

    # ------------------------------------------------------------------ connection
    @_wrap_redis_errors
    def ping(self) -> bool:
        """Check the server answers (raises :class:`RedisUnavailable` if not)."""
        return bool(self.redis.ping())

    def call_with_retry(self, fn: Callable[[], T], *, attempts: int | None = None,
                        base: float = 0.5, cap: float = 30.0,
                        on_retry: Callable[[float, Exception], None] | None = None,
                        should_stop: Callable[[], bool] | None = None) -> T:
        """Call ``fn`` until it does not raise :class:`RedisUnavailable`, sleeping an exponential
        backoff (``base`` doubling up to ``cap`` seconds) between tries; ``attempts=None`` means
        forever (or until ``should_stop()``). ``on_retry(delay, error)`` is told of each wait."""
        n = 0
        delay = base
        while True:
            try:
                return fn()
            except RedisUnavailable as e:
                n += 1
                if (attempts is not None and n >= attempts) or (should_stop and should_stop()):
                    raise
                if on_retry:
                    on_retry(delay, e)
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    if should_stop and should_stop():
                        raise
                    time.sleep(min(0.2, max(0.0, end - time.monotonic())))
                delay = min(cap, delay * 2)

    # ------------------------------------------------------------------ submit
    @_wrap_redis_errors
    def submit(self, spec, *, priority: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               depends_on: str | None = None, force: bool = False, chain: str = "",
               job_id: str | None = None) -> Submission:
        """Enqueue one job for ``spec`` (a validated :class:`~fcn_dist.spec.JobSpec`).

        With ``depends_on`` the job waits for that job to succeed and then starts from its best
        checkpoint. Idempotent: while a job with the same spec (and ``chain`` position) is
        waiting, queued or running its id is returned with ``created=False``, unless ``force``.
        """
        if not (-PRIORITY_LIMIT <= int(priority) <= PRIORITY_LIMIT):
            raise QueueError(f"priority must be in [-{PRIORITY_LIMIT}, {PRIORITY_LIMIT}], got {priority}")
        if int(max_attempts) < 1:
            raise QueueError(f"max_attempts must be >= 1, got {max_attempts}")
        spec_json = spec.to_json()
        jid = job_id or uuid.uuid4().hex[:12]
        idem = idempotency_key(spec_json, chain)
        out = self._submit(args=[
            self.prefix, jid, idem, "1" if force else "0", int(priority), int(max_attempts),
            depends_on or "", spec_json, spec.variant, spec.name, spec.backbone, "",
        ])
        return Submission(id=out[0], created=bool(int(out[1])), state=out[2], variant=spec.variant)

    def submit_variants(self, spec, variants: Iterable[str], *, staged: bool = False,
                        priority: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                        force: bool = False) -> list[Submission]:
        """Submit ``spec`` once per variant. ``staged``: a chain in 32s -> 16s -> 8s order where
        each job waits for the previous one and starts from its best checkpoint."""
        order = {"32s": 0, "16s": 1, "8s": 2}
        variants = list(dict.fromkeys(variants))
        unknown = [v for v in variants if v not in order]
        if unknown:
            raise QueueError(f"unknown variant(s) {', '.join(unknown)}; choose from 32s, 16s, 8s")
        if staged:
            variants.sort(key=lambda v: order.get(v, 99))
        subs: list[Submission] = []
        parent: str | None = None
        for i, v in enumerate(variants):
            # only the variant changes, and it is valid: no need to re-validate the whole spec
            s = dataclasses.replace(spec, variant=v)
            chain = ""
            if staged and parent is not None:
                chain = f"after:{parent}"  # a new parent job means a new chain
            sub = self.submit(s, priority=priority, max_attempts=max_attempts,
                              depends_on=parent if staged else None, force=force, chain=chain)
            subs.append(sub)
            parent = sub.id
        return subs

    # ------------------------------------------------------------------ worker side
    @_wrap_redis_errors
    def claim(self, worker_id: str, lease_seconds: float = 30.0) -> Job | None:
        """Atomically take the best ready job, lease it to ``worker_id`` and count the attempt.
        Due delayed retries are promoted first. ``None`` when nothing is ready."""
        out = self._claim(args=[self.prefix, worker_id, int(lease_seconds * 1000)])
        if not out:
            return None
        return Job.from_hash(dict(zip(out[::2], out[1::2])))

    @_wrap_redis_errors
    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float = 30.0) -> str:
        """Extend the lease if ``worker_id`` still owns the job: ``"ok"``, ``"cancel"`` (a cancel
        was requested: stop the run) or ``"lost"`` (the job is no longer this worker's)."""
        return self._heartbeat(args=[self.prefix, job_id, worker_id, int(lease_seconds * 1000)])

    @_wrap_redis_errors
    def complete(self, job_id: str, worker_id: str, result: dict[str, Any] | None = None) -> None:
        """Mark the job succeeded with its JSON result summary; queue its staged children.
        Raises :class:`LeaseLost` if the worker no longer owns the job."""
        payload = json.dumps(result if result is not None else {}, default=str, sort_keys=True)
        if self._complete(args=[self.prefix, job_id, worker_id, payload]) != "ok":
            raise LeaseLost(f"job {job_id} is no longer leased to worker {worker_id}")

    @_wrap_redis_errors
    def fail(self, job_id: str, worker_id: str, error: str, traceback: str = "", *,
             retryable: bool = True) -> str:
        """Record a failed attempt. Returns ``"queued"`` (a retry after the backoff),
        ``"failed"`` (dead-lettered: no attempts left or not retryable) or ``"cancelled"``.
        Raises :class:`LeaseLost` if the worker no longer owns the job."""
        err = " ".join(str(error).split())[:ERROR_CHARS] or "failed"
        out = self._fail(args=[
            self.prefix, job_id, worker_id, err, str(traceback)[-TRACEBACK_CHARS:],
            int(self.backoff_base * 1000), int(self.backoff_max * 1000), "1" if retryable else "0",
        ])
        if out == "lost":
            raise LeaseLost(f"job {job_id} is no longer leased to worker {worker_id}")
        return out

    @_wrap_redis_errors
    def release(self, job_id: str, worker_id: str, reason: str = "released by worker") -> str:
        """Put a running job back in the ready queue without counting the attempt (SIGTERM).
        Returns ``"ok"`` or ``"cancelled"`` (a cancel was pending). Raises :class:`LeaseLost`."""
        out = self._release(args=[self.prefix, job_id, worker_id, reason])
        if out == "lost":
            raise LeaseLost(f"job {job_id} is no longer leased to worker {worker_id}")
        return out

    @_wrap_redis_errors
    def ack_cancel(self, job_id: str, worker_id: str, reason: str = "cancelled") -> None:
        """The worker stopped a running job because a cancel was requested: mark it cancelled."""
        if self._ack_cancel(args=[self.prefix, job_id, worker_id, reason]) != "ok":
            raise LeaseLost(f"job {job_id} is no longer leased to worker {worker_id}")

    @_wrap_redis_errors
    def reap(self, limit: int = 100) -> list[str]:
        """Return jobs whose lease expired to the ready queue (the attempt counts; with no
        attempts left they are dead-lettered) and promote due delayed retries. Atomic; every
        worker calls it in its loop. Returns the ids handled."""
        return list(self._reap(args=[self.prefix, int(limit)]) or [])

    @_wrap_redis_errors
    def set_run_dir(self, job_id: str, run_dir: str) -> None:
        """Record where the job's Ray run and checkpoints live."""
        self.redis.hset(self.key("job", job_id), "run_dir", str(run_dir))

    @_wrap_redis_errors
    def set_dashboard(self, job_id: str, links: dict[str, str]) -> None:
        """Record the Ray dashboard links of the job's run (shown by ``fcn-jobs show``)."""
        self.redis.hset(self.key("job", job_id), "dashboard", json.dumps(links, sort_keys=True))

    @_wrap_redis_errors
    def append_logs(self, job_id: str, lines: Iterable[str]) -> None:
        """Push log lines of a job (capped at the last ``LOG_LINES_MAX``)."""
        lines = [str(x)[:LOG_LINE_CHARS] for x in lines]
        if not lines:
            return
        k = self.key("logs", job_id)
        with self.redis.pipeline(transaction=True) as p:
            p.rpush(k, *lines)
            p.ltrim(k, -LOG_LINES_MAX, -1)
            p.execute()

    # ------------------------------------------------------------------ user side
    @_wrap_redis_errors
    def cancel(self, job_id: str, reason: str = "cancelled by user") -> str:
        """Cancel a job: waiting/queued -> ``"cancelled"`` at once; running -> ``"cancelling"``
        (the worker sees the flag at its next heartbeat and stops the run). A finished job is
        left alone and its state returned. Staged children are cancelled with a reason."""
        job_id = self.resolve(job_id)
        return self._cancel(args=[self.prefix, job_id, reason])

    @_wrap_redis_errors
    def retry(self, job_id: str) -> str:
        """Re-queue a failed (dead-lettered) or cancelled job with attempts reset; its staged
        children cancelled because of it wait for it again. Returns the new state."""
        job_id = self.resolve(job_id)
        return self._retry(args=[self.prefix, job_id])

    @_wrap_redis_errors
    def resolve(self, job_id: str) -> str:
        """The full id of a job given its id or a unique prefix of it (at least 4 characters)."""
        job_id = str(job_id).strip()
        if not job_id or any(c in job_id for c in "*?[]\\ \n"):
            raise QueueError(f"invalid job id {job_id!r}")
        if self.redis.exists(self.key("job", job_id)):
            return job_id
        if len(job_id) >= 4:
            matches = [k[len(self.key("job", "")):] for k in
                       self.redis.scan_iter(match=self.key("job", job_id + "*"), count=1000)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise QueueError(f"job id prefix {job_id!r} is ambiguous: {', '.join(sorted(matches)[:5])}")
        raise QueueError(f"unknown job {job_id}")

    @_wrap_redis_errors
    def get(self, job_id: str) -> Job:
        """The job record (raises :class:`QueueError` for an unknown id)."""
        job_id = self.resolve(job_id)
        h = self.redis.hgetall(self.key("job", job_id))
        if not h:
            raise QueueError(f"unknown job {job_id}")
        return Job.from_hash(h)

    @_wrap_redis_errors
    def list(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        """Jobs in submission order (oldest first), optionally only those in ``state``."""
        if state is not None and state not in STATES:
            raise QueueError(f"unknown state {state!r}; choose from {', '.join(STATES)}")
        ids = self.redis.zrange(self.key("jobs"), 0, -1)
        if state is not None:
            members = self.redis.smembers(self.key("state", state))
            ids = [i for i in ids if i in members]
        if limit is not None:
            ids = ids[-limit:]
        return self._jobs(ids)

    def _jobs(self, ids: list[str]) -> list[Job]:
        with self.redis.pipeline(transaction=False) as p:
            for i in ids:
                p.hgetall(self.key("job", i))
            return [Job.from_hash(h) for h in p.execute() if h]

    @_wrap_redis_errors
    def dead_letters(self) -> list[Job]:
        """Dead-lettered jobs, newest first."""
        return self._jobs(self.redis.lrange(self.key("dead"), 0, -1))

    @_wrap_redis_errors
    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's state history, oldest first."""
        return [json.loads(x) for x in self.redis.lrange(self.key("hist", job_id), 0, -1)]

    @_wrap_redis_errors
    def logs(self, job_id: str, tail: int | None = None) -> list[str]:
        """The log lines the worker pushed for the job (the last ``tail`` if given)."""
        start = -int(tail) if tail else 0
        return self.redis.lrange(self.key("logs", job_id), start, -1)

    @_wrap_redis_errors
    def events(self, count: int = 100, job_id: str | None = None) -> list[dict[str, str]]:
        """The latest ``count`` state-change events, oldest first (``id`` = stream entry id)."""
        entries = self.redis.xrevrange(self.key("events"), count=count if job_id is None else None)
        out = [{"id": eid, **fields} for eid, fields in reversed(entries)
               if job_id is None or fields.get("job") == job_id]
        return out[-count:]

    @_wrap_redis_errors
    def counts(self) -> dict[str, int]:
        """Queue depth: jobs per state, plus ``ready``, ``delayed`` (backoff), ``running_leases``,
        ``dead`` and ``total`` (for monitoring)."""
        with self.redis.pipeline(transaction=False) as p:
            for s in STATES:
                p.scard(self.key("state", s))
            p.zcard(self.key("ready"))
            p.zcard(self.key("delayed"))
            p.zcard(self.key("running"))
            p.llen(self.key("dead"))
            p.zcard(self.key("jobs"))
            vals = p.execute()
        out = dict(zip(STATES, vals[: len(STATES)]))
        out.update(zip(("ready", "delayed", "running_leases", "dead", "total"), vals[len(STATES):]))
        return out

    @_wrap_redis_errors
    def pending(self) -> dict[str, float]:
        """What a worker could still get: ``ready``, ``delayed``, ``running`` counts and
        ``next_due`` (seconds until the next delayed retry, -1 if none)."""
        ready, delayed, running, due = self._pending(args=[self.prefix])
        return {"ready": int(ready), "delayed": int(delayed), "running": int(running),
                "next_due": (int(due) / 1000.0) if int(due) >= 0 else -1.0}

    @_wrap_redis_errors
    def workers(self, within_seconds: float = 120.0) -> dict[str, float]:
        """Workers seen (claim or heartbeat) in the last ``within_seconds``: id -> last seen."""
        now = time.time()
        rows = self.redis.zrangebyscore(self.key("workers"), (now - within_seconds) * 1000, "+inf",
                                        withscores=True)
        return {w: s / 1000.0 for w, s in rows}
