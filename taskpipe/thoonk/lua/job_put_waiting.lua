-- job_put_waiting: publish a job that waits for parent jobs (depends_on, chain, chord).
-- Every parent is checked before anything is written: a parent that is neither unfinished
-- (its item exists) nor finished (a stored result or a finished-index entry) is unknown, and
-- the call writes nothing. The job is then stored with a counter of its unfinished parents
-- (state 'waiting'), and each unfinished parent records it as a dependant; job_finish of a
-- parent decrements the counter and the finish that brings it to zero queues the job
-- (_workflow.lua). A job whose parents have all finished already is queued at once.
-- Flow control (docs/flow-control.md): a job with a numeric priority, rate-limit or
-- concurrency group gets its flow spec in feed.flow:<f> (as job_put_flow writes it) now;
-- released or queued, it goes to feed.ids like any job, and job_claim's flow path honours
-- the spec (a numbered job is moved to its place among the numbered ones, _flow.lua).
-- KEYS[1] feed.items:<f>    KEYS[2] feed.waiting:<f>   KEYS[3] feed.ids:<f>
-- KEYS[4] feed.published:<f>  KEYS[5] feed.publishes:<f>  KEYS[6] feed.wake:<f>
-- KEYS[7] feed.flow:<f>
-- KEYS[7 + 4*(j-1) + 1 .. 4] per parent j: its channel's feed.items, feed.finished,
--   feed.result:<p>:<parent id>, feed.dependents
-- ARGV[1] id  ARGV[2] item  ARGV[3] "<f>\0<id>" (the dependant entry parents keep)
-- ARGV[4] m parents (1..1000)  ARGV[4 + j] parent j's id
-- ARGV[5 + m] the most dependants one parent may have (bounds job_finish's release loop)
-- ARGV[6 + m] numeric priority 0..9 ('' = none)  ARGV[7 + m] the flow spec's fields after
--   the score ('' = none; see job_put_flow)
-- Returns: {1, unfinished parents} published (0 = queued now); {0} an item with that id
--          exists (nothing written); {-1, j} parent j is unknown (nothing written); {-3, j}
--          parent j has the most dependants allowed already (nothing written).
-- Events: none (as job_put).
--@include _now.lua
--@include _wake.lua
--@include _flow_spec.lua
local id, item, entry, m = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if m < 1 or m > 1000 then return redis.error_reply('ERR job_put_waiting: 1 to 1000 parents') end
if redis.call('HEXISTS', KEYS[1], id) == 1 then return {0} end
local pending = {}
for j = 1, m do
  local b, pid = 7 + 4 * (j - 1), ARGV[4 + j]
  if redis.call('HEXISTS', KEYS[b + 1], pid) == 1 then
    if tonumber(redis.call('HGET', KEYS[b + 4], pid) or '0') >= tonumber(ARGV[5 + m]) then
      return {-3, j}
    end
    pending[#pending + 1] = j
  elseif redis.call('EXISTS', KEYS[b + 3]) == 0 and not redis.call('ZSCORE', KEYS[b + 2], pid) then
    return {-1, j}
  end
end
local now = now_ms()
redis.call('HSET', KEYS[1], id, item)
redis.call('ZADD', KEYS[4], now, id)
local seq = redis.call('INCR', KEYS[5])  -- this publish's sequence
local nprio, rest = ARGV[6 + m] or '', ARGV[7 + m] or ''
if nprio ~= '' or rest ~= '' then put_flow_spec(KEYS[7], id, nprio, rest, seq) end
if #pending == 0 then
  redis.call('LPUSH', KEYS[3], id)
  push_wake_markers(KEYS[6], 1)
  return {1, 0}
end
redis.call('HSET', KEYS[2], id, #pending)
for _, j in ipairs(pending) do
  local b, pid = 7 + 4 * (j - 1), ARGV[4 + j]
  local k = redis.call('HINCRBY', KEYS[b + 4], pid, 1)
  redis.call('HSET', KEYS[b + 4], pid .. '\0' .. k, entry)
end
return {1, #pending}
