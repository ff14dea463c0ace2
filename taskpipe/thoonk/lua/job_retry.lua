-- job_retry: make a stalled job available again (at the back of the queue).
-- KEYS[1] feed.stalled:<f>  KEYS[2] feed.reasons:<f>  KEYS[3] feed.ids:<f>
-- KEYS[4] feed.published:<f>  KEYS[5] feed.wake:<f>  KEYS[6] feed.cancelled:<f>
-- KEYS[7] feed.attempts:<f>  KEYS[8] feed.items:<f>  KEYS[9] feed.stalledat:<f>
-- ARGV[1] id  ARGV[2] '1' to reset the cancel and attempt counters (a fresh budget), else '0'
-- Returns: 1 retried, 0 not stalled (nothing changed).
-- Events: none.
--@include _now.lua
--@include _owner.lua
--@include _wake.lua
local id = ARGV[1]
if redis.call('SREM', KEYS[1], id) == 0 then return 0 end
redis.call('HDEL', KEYS[2], id)
redis.call('ZREM', KEYS[9], id)
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[6], id)
  redis.call('HDEL', KEYS[7], id)
end
if redis.call('HEXISTS', KEYS[8], id) == 1 then
  redis.call('LPUSH', KEYS[3], id)
  redis.call('ZADD', KEYS[4], now_ms(), id)
  push_wake_markers(KEYS[5], 1)
end
return 1
