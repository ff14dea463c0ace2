-- job_retract: remove a job from every state (available, delayed, claimed, stalled, finished).
-- KEYS[1] feed.items:<f>  KEYS[2] feed.ids:<f>  KEYS[3] feed.claimed:<f>  KEYS[4] feed.leases:<f>
-- KEYS[5] feed.tokens:<f>  KEYS[6] feed.workers:<f>  KEYS[7] feed.stalled:<f>  KEYS[8] feed.reasons:<f>
-- KEYS[9] feed.cancelled:<f>  KEYS[10] feed.attempts:<f>  KEYS[11] feed.published:<f>
-- KEYS[12] feed.delayed:<f>  KEYS[13] feed.urgent:<f>  KEYS[14] feed.progress:<f>
-- KEYS[15] feed.finished:<f>  KEYS[16] feed.result:<f>:<id>  KEYS[17] feed.log:<f>:<id>
-- KEYS[18] feed.stalledat:<f>
-- KEYS[19] feed.prio:<f> (optional, flow control: a numbered job's place)
-- KEYS[20] feed.flow:<f> (optional, flow control: the job's flow spec)
-- KEYS[21] feed.waiting:<f> (optional: a job waiting for parents leaves the waiting state too)
-- KEYS[22] feed.record:<f>:<id> (optional, with KEYS[23]: the job's record and its entry in
--          the failed index go too; per-task index entries are dropped when read)
-- KEYS[23] feed.failedidx:<f> (optional)
-- ARGV[4] optional, with KEYS[22]: record ttl ms. > 0: a job retracted before it ended keeps a
--         record (outcome 'retracted', its payload, runs, cancels, publish and retract times;
--         fields as in _record.lua) for that long; an ended job's record is removed either way
-- ARGV[1] id  ARGV[2] feed.retract:<f> channel
-- ARGV[3] optional guard: '' = any state; a number = only if the job is stalled and was stalled
--         at or before that server time in ms (used to clean old stalled jobs without races);
--         'stalled' = only if the job is stalled, whatever its stall time (legacy stalls have none);
--         'waiting' = only if it exists and is not claimed (emptying a channel: running jobs stay)
-- Returns: 1 retracted, 0 no such job, or the guard did not hold (nothing changed).
-- Events: feed.retract:<f> "<id>".
--@include _now.lua
--@include _owner.lua
local id = ARGV[1]
if ARGV[3] == 'waiting' then
  if redis.call('HEXISTS', KEYS[1], id) == 0 or redis.call('ZSCORE', KEYS[3], id) then return 0 end
elseif ARGV[3] == 'stalled' then
  if redis.call('SISMEMBER', KEYS[7], id) == 0 then return 0 end
elseif ARGV[3] and ARGV[3] ~= '' then
  local at = redis.call('ZSCORE', KEYS[18], id)
  if redis.call('SISMEMBER', KEYS[7], id) == 0 or not at or tonumber(at) > tonumber(ARGV[3]) then
    return 0
  end
end
local item = redis.call('HGET', KEYS[1], id)  -- kept in its record when asked (b-history)
local keep = item and KEYS[22] and tonumber(ARGV[4] or '0') > 0
local snap = keep and {redis.call('HGET', KEYS[10], id), redis.call('HGET', KEYS[9], id),
                       redis.call('ZSCORE', KEYS[11], id)} or nil
local existed = redis.call('HDEL', KEYS[1], id)
existed = existed + redis.call('ZREM', KEYS[15], id) + redis.call('DEL', KEYS[16])
if existed == 0 then return 0 end
if KEYS[23] then  -- the job's record (b-history); a retracted job's record outlives its retract
  redis.call('DEL', KEYS[22])
  redis.call('ZREM', KEYS[23], id)
end
-- only an available job can be in the ids list: skip the O(n) LREM for the other states
if not redis.call('ZSCORE', KEYS[3], id) and redis.call('SISMEMBER', KEYS[7], id) == 0
    and not redis.call('ZSCORE', KEYS[12], id) then
  redis.call('LREM', KEYS[2], 0, id)
end
redis.call('ZREM', KEYS[18], id)
if KEYS[20] then  -- flow control (docs/flow-control.md)
  redis.call('ZREM', KEYS[19], id)
  redis.call('HDEL', KEYS[20], id)
end
if KEYS[21] then redis.call('HDEL', KEYS[21], id) end
unclaim(KEYS[3], KEYS[4], KEYS[5], KEYS[6], id)
redis.call('SREM', KEYS[7], id)
redis.call('HDEL', KEYS[8], id)
redis.call('HDEL', KEYS[9], id)
redis.call('HDEL', KEYS[10], id)
redis.call('ZREM', KEYS[11], id)
redis.call('ZREM', KEYS[12], id)
redis.call('SREM', KEYS[13], id)
redis.call('HDEL', KEYS[14], id)
if keep then  -- the record of a job retracted before it ended
  local fields = {'o', 'retracted', 'i', item, 'a', tonumber(snap[1] or '0'), 'f', now_ms()}
  if snap[3] then fields[#fields + 1] = 'p'; fields[#fields + 1] = snap[3] end
  if snap[2] then fields[#fields + 1] = 'c'; fields[#fields + 1] = snap[2] end
  redis.call('HSET', KEYS[22], unpack(fields))
  redis.call('PEXPIRE', KEYS[22], tonumber(ARGV[4]))
end
redis.call('DEL', KEYS[17])
redis.call('PUBLISH', ARGV[2], id)
return 1
