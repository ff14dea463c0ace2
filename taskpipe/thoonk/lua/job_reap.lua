-- job_reap: return claims whose lease expired, or whose worker is gone, to the queue (cancel
-- count +1), or stall them.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.cancelled:<f>  KEYS[6] feed.ids:<f>  KEYS[7] feed.wake:<f>
-- KEYS[8] feed.stalled:<f>  KEYS[9] feed.reasons:<f>  KEYS[10] feed.published:<f>
-- KEYS[11] feed.stalledat:<f>
-- KEYS[12] feed.items:<f> (read only: a stalled job's payload, for its record)
-- KEYS[13] taskpipe.presence (optional)  ZSET worker -> 0 while seen alive, else ms first seen gone
-- ARGV[1] limit (<= 1000 per call)  ARGV[2] max cancels (a job cancelled more than this many
--         times is stalled with reason 'worker_lost'; '0' = never stall)
-- ARGV[3] (with KEYS[13]) prefix of the workers' alive channels ('<prefix>taskpipe.alive:')
-- ARGV[4] (with KEYS[13]) grace ms: a joined worker with no subscriber on its alive channel
--         (PUBSUB NUMSUB = 0: every connection of its process is closed) for this long is dead
-- Leases whose deadline (server time) has passed are reaped; a valid lease only when its
-- worker joined the presence set and has been gone for the grace. Workers that never joined
-- (other clients, other versions) are reaped by lease only. A dead worker's claims are looked
-- for (HGETALL of KEYS[4]) during DEAD_WINDOW_MS (5 s) after its grace, by every reaper pass
-- of every channel; then it leaves the presence set and any claim of it left is reaped by lease.
-- Cost per pass: one PUBSUB NUMSUB per joined worker; O(claims) only inside a dead window, and
-- at most DEAD_CAP (100) claims of dead workers sent back per call (the next pass does more).
-- Returns: {{requeued ids...}, {stalled ids...}, {dead workers whose claims were sent back},
--          {those ids}, {per stalled id, in order, what its record needs, read before its claim
--          is dropped: worker or '', claim ms or '', publish ms or '', cancel count, item or ''}}
--          (the caller keeps the record with job_reap_record.lua: docs/history.md)
-- Events: none.
--@include _now.lua
--@include _owner.lua
--@include _wake.lua
local now = now_ms()
local limit = math.min(tonumber(ARGV[1]), 1000)
local max_cancels = tonumber(ARGV[2])
local requeued, stalled, dead_workers, dead_ids, details = {}, {}, {}, {}, {}
local DEAD_WINDOW_MS = 5000
local DEAD_CAP = math.min(limit, 100)  -- claims of dead workers sent back per call

local function send_back(id, why)
  local count = redis.call('HINCRBY', KEYS[5], id, 1)
  local stalling = max_cancels > 0 and count > max_cancels
  if stalling then  -- the record's facts, read before unclaim drops them (5 reads, rare)
    local d = #details
    details[d + 1] = redis.call('HGET', KEYS[4], id) or ''
    details[d + 2] = redis.call('ZSCORE', KEYS[1], id) or ''
    details[d + 3] = redis.call('ZSCORE', KEYS[10], id) or ''
    details[d + 4] = count
    details[d + 5] = redis.call('HGET', KEYS[12], id) or ''
  end
  unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
  if stalling then
    redis.call('SADD', KEYS[8], id)
    redis.call('ZADD', KEYS[11], now, id)
    redis.call('HSET', KEYS[9], id, 'worker_lost: ' .. why .. ' ' .. count .. ' times')
    redis.call('ZREM', KEYS[10], id)
    stalled[#stalled + 1] = id
  else
    redis.call('LPUSH', KEYS[6], id)
    requeued[#requeued + 1] = id
  end
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  if redis.call('ZSCORE', KEYS[1], id) then
    send_back(id, 'lease expired')
  else
    redis.call('ZREM', KEYS[2], id)
  end
end

if KEYS[13] and #requeued + #stalled < limit then
  -- O(joined workers) per pass; the claim owners are read only while some worker is dead
  local grace = tonumber(ARGV[4])
  local dead, any = {}, false
  local joined = redis.call('ZRANGE', KEYS[13], 0, -1, 'WITHSCORES')
  for i = 1, #joined, 2 do
    local worker, since = joined[i], tonumber(joined[i + 1])
    local subscribers = tonumber(redis.call('PUBSUB', 'NUMSUB', ARGV[3] .. worker)[2])
    if subscribers > 0 then
      if since ~= 0 then redis.call('ZADD', KEYS[13], 0, worker) end
    elseif since == 0 then
      redis.call('ZADD', KEYS[13], now, worker)  -- first seen gone: wait out the grace
    elseif now - since >= grace + DEAD_WINDOW_MS then
      redis.call('ZREM', KEYS[13], worker)  -- every channel had its window: lease from now on
    elseif now - since >= grace then
      dead[worker], any = true, true
    end
  end
  if any then
    local owners = redis.call('HGETALL', KEYS[4])
    local named = {}
    for i = 1, #owners, 2 do
      local id, worker = owners[i], owners[i + 1]
      if dead[worker] and #dead_ids < DEAD_CAP and #requeued + #stalled < limit
          and redis.call('ZSCORE', KEYS[1], id) then
        send_back(id, 'worker died')
        dead_ids[#dead_ids + 1] = id
        if not named[worker] then
          named[worker] = true
          dead_workers[#dead_workers + 1] = worker
        end
      end
    end
  end
end
push_wake_markers(KEYS[7], #requeued)
return {requeued, stalled, dead_workers, dead_ids, details}
