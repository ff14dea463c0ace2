-- job_reap: return claims whose lease expired to the queue (cancel count +1), or stall them.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.cancelled:<f>  KEYS[6] feed.ids:<f>  KEYS[7] feed.wake:<f>
-- KEYS[8] feed.stalled:<f>  KEYS[9] feed.reasons:<f>  KEYS[10] feed.published:<f>
-- KEYS[11] feed.stalledat:<f>
-- ARGV[1] limit (<= 1000 per call)  ARGV[2] max cancels (a job cancelled more than this many
--         times is stalled with reason 'worker_lost'; '0' = never stall)
-- Only leases whose deadline (server time) has passed are touched; a valid lease never is.
-- Returns: {{requeued ids...}, {stalled ids...}}
-- Events: none.
--@include _now.lua
--@include _owner.lua
local now = now_ms()
local limit = math.min(tonumber(ARGV[1]), 1000)
local max_cancels = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
local requeued, stalled = {}, {}
for _, id in ipairs(expired) do
  if redis.call('ZSCORE', KEYS[1], id) then
    unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
    local count = redis.call('HINCRBY', KEYS[5], id, 1)
    if max_cancels > 0 and count > max_cancels then
      redis.call('SADD', KEYS[8], id)
      redis.call('ZADD', KEYS[11], now, id)
      redis.call('HSET', KEYS[9], id, 'worker_lost: lease expired ' .. count .. ' times')
      redis.call('ZREM', KEYS[10], id)
      stalled[#stalled + 1] = id
    else
      redis.call('LPUSH', KEYS[6], id)
      requeued[#requeued + 1] = id
    end
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
wake(KEYS[7], #requeued)
return {requeued, stalled}
