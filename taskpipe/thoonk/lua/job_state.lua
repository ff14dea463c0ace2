-- job_state: read one job's state and bookkeeping consistently (read-only).
-- KEYS[1] feed.items:<f>  KEYS[2] feed.claimed:<f>  KEYS[3] feed.stalled:<f>  KEYS[4] feed.delayed:<f>
-- KEYS[5] feed.finished:<f>  KEYS[6] feed.result:<f>:<id>  KEYS[7] feed.cancelled:<f>
-- KEYS[8] feed.attempts:<f>  KEYS[9] feed.reasons:<f>  KEYS[10] feed.workers:<f>
-- KEYS[11] feed.progress:<f>  KEYS[12] feed.leases:<f>  KEYS[13] feed.published:<f>
-- KEYS[14] feed.waiting:<f> (optional: a job waiting for parents reads 'waiting')
-- ARGV[1] id
-- Returns: {state, cancels, attempts, reason, worker, progress, lease_deadline_ms, due_ms,
--           finished_ms, published_ms, result_ttl_ms}
--   state: 'claimed', 'stalled', 'delayed', 'waiting', 'available', 'finished' (result or index entry
--   present), or 'unknown'. Missing values are ''.
-- Events: none.
local id = ARGV[1]
local function s(v) if v then return v end return '' end
local state = 'unknown'
if redis.call('HEXISTS', KEYS[1], id) == 1 then
  if redis.call('ZSCORE', KEYS[2], id) then state = 'claimed'
  elseif redis.call('SISMEMBER', KEYS[3], id) == 1 then state = 'stalled'
  elseif redis.call('ZSCORE', KEYS[4], id) then state = 'delayed'
  elseif KEYS[14] and redis.call('HEXISTS', KEYS[14], id) == 1 then state = 'waiting'
  else state = 'available' end
elseif redis.call('EXISTS', KEYS[6]) == 1 or redis.call('ZSCORE', KEYS[5], id) then
  state = 'finished'
end
return {state, s(redis.call('HGET', KEYS[7], id)), s(redis.call('HGET', KEYS[8], id)),
        s(redis.call('HGET', KEYS[9], id)), s(redis.call('HGET', KEYS[10], id)),
        s(redis.call('HGET', KEYS[11], id)), s(redis.call('ZSCORE', KEYS[12], id)),
        s(redis.call('ZSCORE', KEYS[4], id)), s(redis.call('ZSCORE', KEYS[5], id)),
        s(redis.call('ZSCORE', KEYS[13], id)), tostring(redis.call('PTTL', KEYS[6]))}
