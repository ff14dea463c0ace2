-- job_claim: claim up to N available jobs, walking channels in strict order.
-- For each channel c, 17 keys: the key +n below is KEYS[17*(c-1) + n]:
--   +1 feed.ids:<f>  +2 feed.items:<f>  +3 feed.claimed:<f>  +4 feed.leases:<f>
--   +5 feed.delayed:<f>  +6 feed.urgent:<f>  +7 feed.cancelled:<f>  +8 feed.config:<f>
--   +9 feed.tokens:<f>  +10 feed.workers:<f>  +11 feed.fence:<f>  +12 feed.attempts:<f>
--   +13 feed.prio:<f>  +14 feed.flow:<f>  +15 feed.rate:<f>  +16 feed.slots:<f>  (flow control)
--   +17 feed.published:<f>  (read only: each claimed job's publish ms, for the wait time)
-- ARGV[1] max jobs to claim (<= 1000)  ARGV[2] lease ms  ARGV[3] worker name
-- ARGV[4] promote limit per channel (due delayed jobs moved to available first; capped at 1000
--         as in job_promote, so one claim stays well under a few ms)
-- ARGV[5] run now (optional, default all): the first this-many claims go to free slots; later
--   ones are prefetched (they wait in the worker's buffer). A job whose cancel count is not 0
--   is never prefetched: at a prefetch position it is put back at the head, with every job
--   popped after it, and the claim ends there (so prefetching adds at most one to any job's
--   cancel count: a job lost while buffered has count 0 until then, 1 after).
-- Semantics: a paused channel (config paused=1) is skipped. Nothing is taken from channel c+1
--   while channel c still has an available job. Each claim, atomically: RPOP the id, ZADD claimed
--   (claim ms), ZADD leases (deadline), a new fencing token (fence counter) in tokens, the worker
--   name in workers. Ids with no item (retracted) or already claimed are dropped. The commands
--   run once per channel batch (RPOP count, HMGET, ZMSCORE, multi-member ZADD/HSET): Redis >= 6.2.
-- Once the batch is full the walk stops (later channels are not looked at, their due delayed jobs
--   wait for a claim that reaches them; next_due then covers the channels looked at only).
-- Flow control (see _flow.lua): a channel with a rate limit or concurrency cap in its config,
--   or jobs with flow specs (numeric priority, per-task/per-key limits), is claimed by
--   flow_claim: the list first, then numbered jobs (feed.prio, lowest score first); a job over
--   a limit stays queued in its place and next_due becomes the ms its rate slot opens.
-- Returns: {now_ms, next_due_ms or -1 (-2: a job was held back for a free slot, see ARGV[5]),
--          {channel_index, id, item, cancel_count, token, attempts, published_ms or 0}...}
--   (published_ms: one ZMSCORE per channel batch; 0 for a job with no publish time, e.g. one
--   put by an original Thoonk client)
-- Events: none.
--@include _now.lua
--@include _promote.lua
--@include _flow.lua
local want = math.min(tonumber(ARGV[1]), 1000)
local lease = tonumber(ARGV[2])
local worker = ARGV[3]
local plimit = math.min(tonumber(ARGV[4]), 1000)
local run_now = tonumber(ARGV[5] or ARGV[1])
local now = now_ms()
local now_s = math.floor(now / 1000)
local out = {now, -1}
local got = 0
local pops_left = want * 4 + 64
local nch = #KEYS / 17
local next_due = -1
local stop = false  -- a job that may not be prefetched ended this claim
for c = 1, nch do
  local b = 17 * (c - 1)
  local k_ids, k_items, k_claimed, k_leases = KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4]
  local k_delayed, k_urgent = KEYS[b + 5], KEYS[b + 6]
  local cfg = redis.call('HMGET', KEYS[b + 8], 'paused', 'flow.rate', 'flow.cap')
  if cfg[1] ~= '1' then
    -- the first delayed job: promote only when it is due, and it gives next_due at the end
    local first = redis.call('ZRANGE', k_delayed, 0, 0, 'WITHSCORES')
    if plimit > 0 and first[2] and tonumber(first[2]) <= now then
      promote(k_delayed, k_urgent, k_items, k_ids, now, plimit)
      first = redis.call('ZRANGE', k_delayed, 0, 0, 'WITHSCORES')
    end
    local ids, items = {}, {}
    local ccs = {}
    local k = 0
    local flowing = cfg[2] or cfg[3] or redis.call('EXISTS', KEYS[b + 14]) == 1
    if flowing and got < want then  -- flow control: see _flow.lua
      local st = flow_open(cfg, k_ids, k_items, k_claimed, KEYS[b + 7], KEYS[b + 13],
                           KEYS[b + 14], KEYS[b + 15], KEYS[b + 16])
      local used, held_stop, wait_until
      ids, items, ccs, used, held_stop, wait_until = flow_claim(st, want - got, got, run_now,
                                                               pops_left, now)
      pops_left = pops_left - used
      k = #ids
      if held_stop then stop = true end
      if wait_until and (next_due < 0 or wait_until < next_due) then next_due = wait_until end
    end
    -- pop in bulk (RPOP count), keep ids that have an item and are not claimed yet
    local seen = {}
    local more = not flowing
    while more and got + #ids < want and pops_left > 0 do
      local asked = math.min(want - got - #ids, pops_left)
      local popped = redis.call('RPOP', k_ids, asked)
      if not popped then break end
      more = #popped == asked  -- fewer than asked: the list is empty now
      pops_left = pops_left - #popped
      local its = redis.call('HMGET', k_items, unpack(popped))
      local claimed = redis.call('ZMSCORE', k_claimed, unpack(popped))
      for j, id in ipairs(popped) do
        if its[j] and not claimed[j] and not seen[id] then
          seen[id] = true
          ids[#ids + 1] = id
          items[#items + 1] = its[j]
        end
      end
    end
    if not flowing then k = #ids end
    if k > 0 and not flowing then
      ccs = redis.call('HMGET', KEYS[b + 7], unpack(ids))
      for j = 1, k do  -- bounded: k <= want
        if got + j > run_now and ccs[j] and tonumber(ccs[j]) > 0 then  -- never prefetched: back
          for back = k, j, -1 do redis.call('RPUSH', k_ids, ids[back]) end
          k = j - 1
          stop = true
          break
        end
      end
    end
    if k > 0 then
      -- each claim, one command per key for the batch: claimed (claim ms), leases (deadline),
      -- a new fencing token (the fence counter, + the server second: unique even if Redis lost
      -- the counter), the worker name
      -- (the claim ms and the deadline go as strings made once: Redis formats every number
      -- argument of redis.call with snprintf, which cost more than the ZADD itself)
      local last = redis.call('INCRBY', KEYS[b + 11], k)
      local claimed_at, deadlines, tokens, workers = {}, {}, {}, {}
      local toks = {}
      local now_str, deadline_str = tostring(now), tostring(now + lease)
      local tok_suffix = ':' .. now_s
      for j = 1, k do
        local id = ids[j]
        claimed_at[2 * j - 1], claimed_at[2 * j] = now_str, id
        deadlines[2 * j - 1], deadlines[2 * j] = deadline_str, id
        toks[j] = (last - k + j) .. tok_suffix
        tokens[2 * j - 1], tokens[2 * j] = id, toks[j]
        workers[2 * j - 1], workers[2 * j] = id, worker
      end
      redis.call('ZADD', k_claimed, unpack(claimed_at))
      redis.call('ZADD', k_leases, unpack(deadlines))
      redis.call('HSET', KEYS[b + 9], unpack(tokens))
      redis.call('HSET', KEYS[b + 10], unpack(workers))
      local atts = redis.call('HMGET', KEYS[b + 12], unpack(ids, 1, k))
      local pubs = redis.call('ZMSCORE', KEYS[b + 17], unpack(ids, 1, k))  -- the wait time
      for j = 1, k do
        got = got + 1
        out[got + 2] = {c, ids[j], items[j], ccs[j] and tonumber(ccs[j]) or 0, toks[j],
                        atts[j] and tonumber(atts[j]) or 0, pubs[j] and tonumber(pubs[j]) or 0}
      end
    end
    if first[2] then
      local due = tonumber(first[2])
      if next_due < 0 or due < next_due then next_due = due end
    end
  end
  -- a full batch ends the walk: later channels (a sharded channel's other shards) cost nothing
  -- then, and next_due is only read when a claim came back short
  if stop or got >= want then break end
end
out[2] = next_due
if stop then out[2] = -2 end
return out
