-- job_reap: return claims whose lease expired, or whose worker is gone, to the queue (cancel
-- count +1); find those to stall instead (past max cancels), which job_reap_stall stalls.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.cancelled:<f>  KEYS[6] feed.ids:<f>  KEYS[7] feed.wake:<f>
-- KEYS[8] feed.items:<f> (read only: the payload of a job to stall, which names its task)
-- KEYS[9] taskpipe.presence (optional)  ZSET worker -> 0 while seen alive, else ms first seen gone
-- ARGV[1] limit (<= 1000 per call)  ARGV[2] max cancels (a job that would be cancelled more than
--         this many times is to be stalled with reason 'worker_lost'; '0' = never stall)
-- ARGV[3] (with KEYS[9]) prefix of the workers' alive channels ('<prefix>taskpipe.alive:')
-- ARGV[4] (with KEYS[9]) grace ms: a joined worker with no subscriber on its alive channel
--         (PUBSUB NUMSUB = 0: every connection of its process is closed) for this long is dead
-- Leases whose deadline (server time) has passed are reaped; a valid lease only when its
-- worker joined the presence set and has been gone for the grace. Workers that never joined
-- (other clients, other versions) are reaped by lease only. A dead worker's claims are looked
-- for (HGETALL of KEYS[4]) during DEAD_WINDOW_MS (5 s) after its grace, by every reaper pass
-- of every channel; then it leaves the presence set and any claim of it left is reaped by lease.
-- Cost per pass: one PUBSUB NUMSUB per joined worker; O(claims) only inside a dead window, and
-- at most DEAD_CAP (100) claims of dead workers sent back per call (the next pass does more).
-- A job to stall is left as it is (claimed, its lease expired): the caller stalls it with
-- job_reap_stall, which keeps its record in the same step (a script cannot name the record key
-- of a job it finds). A reaper stopped between the two calls leaves it claimed: the next pass
-- finds it again.
-- Returns: {{requeued ids...}, {ids to stall...}, {dead workers whose claims were found},
--          {those ids (requeued or to stall)}, {per id to stall, in order: its token, why
--          ('lease expired' or 'worker died'), its item or ''}}
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

local pending = {}  -- ids to stall found by this call (the dead-worker walk may meet them again)
local function send_back(id, why)
  local count = tonumber(redis.call('HGET', KEYS[5], id) or '0') + 1
  if max_cancels > 0 and count > max_cancels then  -- to stall: job_reap_stall does it
    local d = #details
    details[d + 1] = redis.call('HGET', KEYS[3], id) or ''
    details[d + 2] = why
    details[d + 3] = redis.call('HGET', KEYS[8], id) or ''
    stalled[#stalled + 1] = id
    pending[id] = true
    return
  end
  redis.call('HINCRBY', KEYS[5], id, 1)
  unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
  redis.call('LPUSH', KEYS[6], id)
  requeued[#requeued + 1] = id
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  if redis.call('ZSCORE', KEYS[1], id) then
    send_back(id, 'lease expired')
  else
    redis.call('ZREM', KEYS[2], id)
  end
end

if KEYS[9] and #requeued + #stalled < limit then
  -- O(joined workers) per pass; the claim owners are read only while some worker is dead
  local grace = tonumber(ARGV[4])
  local dead, any = {}, false
  local joined = redis.call('ZRANGE', KEYS[9], 0, -1, 'WITHSCORES')
  for i = 1, #joined, 2 do
    local worker, since = joined[i], tonumber(joined[i + 1])
    local subscribers = tonumber(redis.call('PUBSUB', 'NUMSUB', ARGV[3] .. worker)[2])
    if subscribers > 0 then
      if since ~= 0 then redis.call('ZADD', KEYS[9], 0, worker) end
    elseif since == 0 then
      redis.call('ZADD', KEYS[9], now, worker)  -- first seen gone: wait out the grace
    elseif now - since >= grace + DEAD_WINDOW_MS then
      redis.call('ZREM', KEYS[9], worker)  -- every channel had its window: lease from now on
    elseif now - since >= grace then
      dead[worker], any = true, true
    end
  end
  if any then
    local owners = redis.call('HGETALL', KEYS[4])
    local named = {}
    for i = 1, #owners, 2 do
      local id, worker = owners[i], owners[i + 1]
      if dead[worker] and not pending[id] and #dead_ids < DEAD_CAP
          and #requeued + #stalled < limit and redis.call('ZSCORE', KEYS[1], id) then
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
