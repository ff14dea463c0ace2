-- job_retract: remove a job from every state (available, delayed, claimed, stalled, finished).
-- KEYS[1] feed.items:<f>  KEYS[2] feed.ids:<f>  KEYS[3] feed.claimed:<f>  KEYS[4] feed.leases:<f>
-- KEYS[5] feed.tokens:<f>  KEYS[6] feed.workers:<f>  KEYS[7] feed.stalled:<f>  KEYS[8] feed.reasons:<f>
-- KEYS[9] feed.cancelled:<f>  KEYS[10] feed.attempts:<f>  KEYS[11] feed.published:<f>
-- KEYS[12] feed.delayed:<f>  KEYS[13] feed.urgent:<f>  KEYS[14] feed.progress:<f>
-- KEYS[15] feed.finished:<f>  KEYS[16] feed.result:<f>:<id>  KEYS[17] feed.log:<f>:<id>
-- KEYS[18] feed.stalledat:<f>
-- ARGV[1] id  ARGV[2] feed.retract:<f> channel
-- ARGV[3] optional guard: '' = any state; a number = only if the job is stalled and was stalled
--         at or before that server time in ms (used to clean old stalled jobs without races);
--         'stalled' = only if the job is stalled, whatever its stall time (legacy stalls have none)
-- Returns: 1 retracted, 0 no such job, or the guard did not hold (nothing changed).
-- Events: feed.retract:<f> "<id>".
--@include _owner.lua
local id = ARGV[1]
if ARGV[3] == 'stalled' then
  if redis.call('SISMEMBER', KEYS[7], id) == 0 then return 0 end
elseif ARGV[3] and ARGV[3] ~= '' then
  local at = redis.call('ZSCORE', KEYS[18], id)
  if redis.call('SISMEMBER', KEYS[7], id) == 0 or not at or tonumber(at) > tonumber(ARGV[3]) then
    return 0
  end
end
local existed = redis.call('HDEL', KEYS[1], id)
existed = existed + redis.call('ZREM', KEYS[15], id) + redis.call('DEL', KEYS[16])
if existed == 0 then return 0 end
-- only an available job can be in the ids list: skip the O(n) LREM for the other states
if not redis.call('ZSCORE', KEYS[3], id) and redis.call('SISMEMBER', KEYS[7], id) == 0
    and not redis.call('ZSCORE', KEYS[12], id) then
  redis.call('LREM', KEYS[2], 0, id)
end
redis.call('ZREM', KEYS[18], id)
unclaim(KEYS[3], KEYS[4], KEYS[5], KEYS[6], id)
redis.call('SREM', KEYS[7], id)
redis.call('HDEL', KEYS[8], id)
redis.call('HDEL', KEYS[9], id)
redis.call('HDEL', KEYS[10], id)
redis.call('ZREM', KEYS[11], id)
redis.call('ZREM', KEYS[12], id)
redis.call('SREM', KEYS[13], id)
redis.call('HDEL', KEYS[14], id)
redis.call('DEL', KEYS[17])
redis.call('PUBLISH', ARGV[2], id)
return 1
