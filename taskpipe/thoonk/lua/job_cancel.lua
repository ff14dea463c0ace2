-- job_cancel: send a claimed job back to the queue (Thoonk cancel), its cancel count +1.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.cancelled:<f>  KEYS[6] feed.ids:<f>  KEYS[7] feed.wake:<f>
-- KEYS[8] feed.delayed:<f> (optional: only with a not-before delay)
-- ARGV[1] id  ARGV[2] token ('' = no fencing check)
-- ARGV[3] not-before delay ms (optional; > 0 with KEYS[8]: the job waits in the delayed set that
--         long, e.g. sent back at shutdown while its old thread may still run it)
-- Returns: {code, cancel_count}: code 1 done, 0 not claimed, -1 lease lost (nothing changed).
-- The id goes to the back of the queue (LPUSH), as in the v1 contract.
-- Events: none.
--@include _now.lua
--@include _owner.lua
--@include _wake.lua
local id = ARGV[1]
local code = check_owner(KEYS[1], KEYS[3], id, ARGV[2])
if code ~= 1 then return {code, 0} end
unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
local count = redis.call('HINCRBY', KEYS[5], id, 1)
local delay = tonumber(ARGV[3] or '0') or 0
if delay > 0 and KEYS[8] then
  redis.call('ZADD', KEYS[8], now_ms() + delay, id)
else
  redis.call('LPUSH', KEYS[6], id)
end
push_wake_markers(KEYS[7], 1)  -- a blocked worker claims it, or re-times its wait to the due time
return {1, count}
