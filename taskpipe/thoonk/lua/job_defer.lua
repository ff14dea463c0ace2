-- job_defer: release a claimed job to run again later (task raised and has retries left).
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.attempts:<f>  KEYS[6] feed.delayed:<f>  KEYS[7] feed.ids:<f>  KEYS[8] feed.wake:<f>
-- KEYS[9] feed.items:<f>
-- ARGV[1] id  ARGV[2] token ('' = no check)  ARGV[3] delay ms (0 = available now)
-- ARGV[4] '1' to count an attempt  ARGV[5] new payload ('' = keep)
-- Returns: {code, attempts}: code 1 deferred, 0 not claimed, -1 lease lost (nothing changed).
-- Events: none.
--@include _now.lua
--@include _owner.lua
--@include _wake.lua
local id = ARGV[1]
local code = check_owner(KEYS[1], KEYS[3], id, ARGV[2])
if code ~= 1 then return {code, 0} end
unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
local attempts = tonumber(redis.call('HGET', KEYS[5], id) or '0')
if ARGV[4] == '1' then attempts = redis.call('HINCRBY', KEYS[5], id, 1) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[9], id, ARGV[5]) end
local delay = tonumber(ARGV[3])
if delay > 0 then
  redis.call('ZADD', KEYS[6], now_ms() + delay, id)
  push_wake_markers(KEYS[8], 1)  -- a blocked worker re-times its wait to the new due time
else
  redis.call('LPUSH', KEYS[7], id)
  push_wake_markers(KEYS[8], 1)
end
return {1, attempts}
