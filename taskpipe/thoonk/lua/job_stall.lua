-- job_stall: park a claimed job; it is never dispatched until retried.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.stalled:<f>  KEYS[6] feed.reasons:<f>  KEYS[7] feed.published:<f>
-- KEYS[8] feed.stalledat:<f>  ZSET id -> stall ms
-- ARGV[1] id  ARGV[2] token ('' = no fencing check)  ARGV[3] reason (kept until retry)
-- Returns: 1 stalled, 0 not claimed, -1 lease lost (nothing changed).
-- Unlike the original clients, the cancel count is kept (history survives a stall).
-- Events: none.
--@include _now.lua
--@include _owner.lua
local id = ARGV[1]
local code = check_owner(KEYS[1], KEYS[3], id, ARGV[2])
if code ~= 1 then return code end
unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
redis.call('SADD', KEYS[5], id)
redis.call('ZADD', KEYS[8], now_ms(), id)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[6], id, ARGV[3]) end
redis.call('ZREM', KEYS[7], id)
return 1
