-- job_finish: finish claimed jobs, store their results with a TTL and publish job.finish.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.items:<f>    KEYS[6] feed.cancelled:<f>  KEYS[7] feed.attempts:<f>
-- KEYS[8] feed.published:<f>  KEYS[9] feed.finishes:<f>  KEYS[10] feed.finished:<f>
-- KEYS[11] feed.failures:<f>  KEYS[12] feed.progress:<f>  KEYS[13] feed.reasons:<f>
-- KEYS[13+i] feed.result:<f>:<id_i> for each of the n jobs
-- Optional follow-up job (only with n = 1), put on another channel by this same step:
-- KEYS[15] target feed.ids  KEYS[16] target feed.items  KEYS[17] target feed.published
-- KEYS[18] target feed.publishes  KEYS[19] target feed.wake  KEYS[20] target feed.finished
-- KEYS[21] target feed.result:<t>:<follow-up id>
-- ARGV[1] job.finish:<f> channel  ARGV[2] keep finished-index entries this many ms
-- ARGV[3] n (<= 1000)
-- ARGV[4 + 5*(i-1) ...] per job: id, token ('' = no fencing check), result ('' = none),
--                       result ttl ms ('0' = do not store), failed ('1'/'0')
-- ARGV[4 + 5n], ARGV[5 + 5n]: follow-up id, follow-up item (when follow-up keys are given)
-- Returns: a list of n codes: 1 finished, 0 not claimed (nothing changed), -1 lease lost
--          (claimed under another token: refused, nothing changed); then the follow-up flag
--          (1 put, 0 an item with that id existed, absent when no follow-up).
-- Events: job.finish:<f> "<id>\0<result>" for each finished job that has a result.
--@include _now.lua
--@include _owner.lua
local n = tonumber(ARGV[3])
if n > 1000 then return redis.error_reply('ERR job_finish: at most 1000 jobs per call') end
local now = now_ms()
local out = {}
local finished_any = false
for i = 1, n do
  local b = 4 + 5 * (i - 1)
  local id, token, result = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local ttl, failed = tonumber(ARGV[b + 3]), ARGV[b + 4]
  local code = check_owner(KEYS[1], KEYS[3], id, token)
  if code == 1 then
    unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('HDEL', KEYS[6], id)
    redis.call('HDEL', KEYS[7], id)
    redis.call('ZREM', KEYS[8], id)
    redis.call('HDEL', KEYS[12], id)
    redis.call('HDEL', KEYS[13], id)
    redis.call('INCR', KEYS[9])
    if failed == '1' then redis.call('INCR', KEYS[11]) end
    redis.call('ZADD', KEYS[10], now, id)
    if ttl > 0 and result ~= '' then
      redis.call('SET', KEYS[13 + i], result, 'PX', ttl)
    end
    if result ~= '' then
      redis.call('PUBLISH', ARGV[1], id .. '\0' .. result)
    end
    finished_any = true
  end
  out[i] = code
end
if finished_any then
  local old = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, 100)
  for _, id in ipairs(old) do redis.call('ZREM', KEYS[10], id) end
end
if #KEYS >= 14 + n and n == 1 and out[1] == 1 then
  local f = 14 + n
  local fid, fitem = ARGV[4 + 5 * n], ARGV[5 + 5 * n]
  if redis.call('HSETNX', KEYS[f + 1], fid, fitem) == 1 then
    redis.call('ZREM', KEYS[f + 5], fid)
    redis.call('DEL', KEYS[f + 6])
    redis.call('LPUSH', KEYS[f], fid)
    redis.call('ZADD', KEYS[f + 2], now, fid)
    redis.call('INCR', KEYS[f + 3])
    wake(KEYS[f + 4], 1)
    out[n + 1] = 1
  else
    out[n + 1] = 0
  end
end
return out
