-- helper: flow control inside job_claim (rate limits, concurrency caps, numeric priorities).
-- See docs/flow-control.md. A channel is "flow active" when its config has flow.rate or
-- flow.cap, or its feed.flow:<f> hash is not empty; only then does job_claim call flow_claim.
-- Per job spec (feed.flow:<f> id -> 6 fields joined by NUL): priority score ('' = none),
-- rate group, rate interval ms, rate burst, concurrency group, concurrency cap ('' = none).
-- Rate limits are GCRA (one number per bucket in feed.rate:<f>: the theoretical arrival time
-- ms); a job is admitted when tat - (burst - 1) * interval <= now, and tat moves on by interval.
-- Concurrency: feed.slots:<f> maps every claimed job that has a flow spec to its concurrency
-- group ('' = none); entries whose job is no longer claimed (finished, reaped, aborted,
-- cancelled) are dropped when counting, so a slot lives exactly as long as the claim (its
-- lease): a SIGKILLed worker's slot is freed when the reaper takes its job back.
-- Cleanup: the flow spec must outlive a claim (a requeued job keeps its priority and groups),
-- so it is dropped once the job is gone: each claim sweeps a sample of feed.slots (claimed or
-- recently finished jobs, 2 per job claimed + 8) and drops the specs of jobs whose item is
-- gone, keeping feed.slots near the number of claimed flow jobs; retract drops its own.
local FLOW_CAP_RECHECK_MS = 100  -- a job held by a full cap is looked at again this soon
local FLOW_SCAN_CHUNK = 1000     -- unpack() bound for the slots reconcile
local FLOW_SWEEP_MAX = 500       -- at most this many feed.slots entries swept per claim

-- of `ids` (claimed no longer): drop their slots, and the flow specs of those that are gone
local function flow_forget(st, ids)
  if #ids == 0 then return end
  for base = 1, #ids, FLOW_SCAN_CHUNK do
    local part = {unpack(ids, base, math.min(#ids, base + FLOW_SCAN_CHUNK - 1))}
    redis.call('HDEL', st.k_slots, unpack(part))
    local alive = redis.call('HMGET', st.k_items, unpack(part))
    local gone = {}
    for j, id in ipairs(part) do
      if not alive[j] then gone[#gone + 1] = id end
    end
    if #gone > 0 then redis.call('HDEL', st.k_flow, unpack(gone)) end
  end
end

local function flow_parse(spec)
  if not spec then return nil end
  local f, pos = {}, 1
  for i = 1, 6 do
    local z = string.find(spec, '\0', pos, true)
    if not z then f[i] = string.sub(spec, pos); pos = #spec + 2
    else f[i] = string.sub(spec, pos, z - 1); pos = z + 1 end
  end
  local s = {score = tonumber(f[1])}
  if f[2] ~= '' then s.rg, s.rt, s.rb = f[2], tonumber(f[3]), tonumber(f[4]) end
  if f[5] ~= '' then s.cg, s.cap = f[5], tonumber(f[6]) end
  return s
end

-- "interval_ms:burst" (channel config flow.rate) -> interval, burst
local function flow_rate_cfg(v)
  if not v then return nil end
  local t, bu = string.match(v, '^([%d%.]+):(%d+)$')
  if not t then return nil end
  return tonumber(t), tonumber(bu)
end

local function flow_open(k_config_vals, k_ids, k_items, k_claimed, k_cancelled, k_prio, k_flow,
                         k_rate, k_slots)
  local st = {k_ids = k_ids, k_items = k_items, k_claimed = k_claimed, k_cancelled = k_cancelled,
              k_prio = k_prio, k_flow = k_flow, k_rate = k_rate, k_slots = k_slots,
              tat = {}, dirty = {}, newslots = {}}
  st.crt, st.crb = flow_rate_cfg(k_config_vals[2])
  st.ccap = tonumber(k_config_vals[3] or '')
  if st.ccap then st.claimed_n = redis.call('ZCARD', k_claimed) end
  return st
end

local function flow_counts(st)
  if st.counts then return st.counts end
  local counts = {}
  local all = redis.call('HGETALL', st.k_slots)
  local stale = {}
  for base = 1, #all, 2 * FLOW_SCAN_CHUNK do  -- bounded: the hash holds claimed jobs only
    local ids, groups = {}, {}
    for i = base, math.min(#all, base + 2 * FLOW_SCAN_CHUNK - 1), 2 do
      ids[#ids + 1] = all[i]
      groups[#groups + 1] = all[i + 1]
    end
    local sc = redis.call('ZMSCORE', st.k_claimed, unpack(ids))
    for j, id in ipairs(ids) do
      if not sc[j] then stale[#stale + 1] = id
      elseif groups[j] ~= '' then counts[groups[j]] = (counts[groups[j]] or 0) + 1 end
    end
  end
  flow_forget(st, stale)
  st.swept = true
  st.counts = counts
  return counts
end

-- GCRA: may one more job of `group` start now? Returns ok, new tat (ok) or the ms it may (not ok)
local function flow_gcra(st, group, interval, burst, now)
  local tat = st.tat[group]
  if tat == nil then
    tat = tonumber(redis.call('HGET', st.k_rate, group) or '0') or 0
    st.tat[group] = tat
  end
  if tat < now then tat = now end
  local allow_at = tat - (burst - 1) * interval
  if allow_at > now then return false, allow_at end
  return true, tat + interval
end

-- 'take', or 'channel' / 'group' (what is full) and the ms a rate slot opens (nil for a cap)
local function flow_admit(st, id, spec, now)
  if st.ccap and st.claimed_n >= st.ccap then return 'channel', nil end
  local ok, ctat, gtat
  if st.crt then
    ok, ctat = flow_gcra(st, '#channel', st.crt, st.crb, now)
    if not ok then return 'channel', ctat end
  end
  local counts
  if spec and spec.rg then
    ok, gtat = flow_gcra(st, spec.rg, spec.rt, spec.rb, now)
    if not ok then return 'group', gtat end
  end
  if spec and spec.cg then
    counts = flow_counts(st)
    if (counts[spec.cg] or 0) >= spec.cap then return 'group', nil end
  end
  if ctat then st.tat['#channel'] = ctat; st.dirty['#channel'] = true end
  if gtat then st.tat[spec.rg] = gtat; st.dirty[spec.rg] = true end
  if counts then counts[spec.cg] = (counts[spec.cg] or 0) + 1 end
  if spec then  -- every claimed flow job: its slot (group or '') and the sweep of its spec
    st.newslots[#st.newslots + 1] = id
    st.newslots[#st.newslots + 1] = spec.cg or ''
  end
  if st.ccap then st.claimed_n = st.claimed_n + 1 end
  return 'take', nil
end

-- Claim up to `want` jobs of one flow-active channel: the list first (its head, Thoonk's
-- priority jobs, then FIFO), then numbered jobs by priority (0 first) and publish order.
-- `first_pos`: claims made before this channel; `run_now`: see job_claim ARGV[5].
-- Returns ids, items, cancel counts, pops used, stop (a job that may not be prefetched ended
-- the claim), wait_until (ms a held job may start, or nil).
local function flow_claim(st, want, first_pos, run_now, pops_left, now)
  local ids, items, ccs = {}, {}, {}
  local held_list, held_prio = {}, {}
  local blocked, stop, wait_until = false, false, nil
  local seen = {}
  local source = 'list'
  local used = 0
  while #ids < want and used < pops_left and not blocked and not stop and source do
    local asked = math.min(want - #ids, pops_left - used)
    local popped, scores = {}, nil
    if source == 'list' then
      popped = redis.call('RPOP', st.k_ids, asked) or {}
      if #popped < asked then source = 'prio' end
      if #popped == 0 then asked = 0 end
    else
      local z = redis.call('ZPOPMIN', st.k_prio, asked)
      scores = {}
      for i = 1, #z, 2 do popped[#popped + 1] = z[i]; scores[#scores + 1] = z[i + 1] end
      if #popped < asked then source = nil end
    end
    used = used + #popped
    if #popped > 0 then
      local its = redis.call('HMGET', st.k_items, unpack(popped))
      local cl = redis.call('ZMSCORE', st.k_claimed, unpack(popped))
      local fl = redis.call('HMGET', st.k_flow, unpack(popped))
      local cc = redis.call('HMGET', st.k_cancelled, unpack(popped))
      for j, id in ipairs(popped) do
        if its[j] and not cl[j] and not seen[id] then
          local spec = flow_parse(fl[j])
          local hold = blocked or stop
          if scores == nil and spec and spec.score then
            -- a numbered job that came back through the list (sent back, promoted when due):
            -- back to its place among the numbered jobs (not seen: it may be popped from there)
            redis.call('ZADD', st.k_prio, spec.score, id)
            hold = false
          elseif not hold then
            seen[id] = true
            if first_pos + #ids + 1 > run_now and tonumber(cc[j] or '0') > 0 then
              stop = true  -- never prefetched: back, with every job after it
              hold = true
            else
              local verdict, t = flow_admit(st, id, spec, now)
              if verdict == 'take' then
                ids[#ids + 1] = id
                items[#items + 1] = its[j]
                ccs[#ccs + 1] = cc[j]
              else
                hold = true
                if t == nil then t = now + FLOW_CAP_RECHECK_MS end
                if wait_until == nil or t < wait_until then wait_until = t end
                if verdict == 'channel' then blocked = true end
              end
            end
          end
          if hold then
            seen[id] = true
            if scores then held_prio[#held_prio + 1] = scores[j]; held_prio[#held_prio + 1] = id
            else held_list[#held_list + 1] = id end
          end
        end
      end
    end
  end
  for i = #held_list, 1, -1 do redis.call('RPUSH', st.k_ids, held_list[i]) end
  if #held_prio > 0 then redis.call('ZADD', st.k_prio, unpack(held_prio)) end
  for group in pairs(st.dirty) do redis.call('HSET', st.k_rate, group, st.tat[group]) end
  -- sweep: slots of jobs claimed no longer, flow specs of jobs gone (bounded, see the top)
  if not st.swept then
    local sample = redis.call('HRANDFIELD', st.k_slots, math.min(2 * #ids + 8, FLOW_SWEEP_MAX))
    if type(sample) == 'table' and #sample > 0 then
      local sc = redis.call('ZMSCORE', st.k_claimed, unpack(sample))
      local stale = {}
      for j, id in ipairs(sample) do
        if not sc[j] then stale[#stale + 1] = id end
      end
      flow_forget(st, stale)
    end
  end
  -- (after the sweep: this call's claims are not in feed.claimed yet)
  if #st.newslots > 0 then redis.call('HSET', st.k_slots, unpack(st.newslots)) end
  -- and a few specs of jobs never claimed through here (a legacy client took them)
  local strays = redis.call('HRANDFIELD', st.k_flow, 2)
  if type(strays) == 'table' and #strays > 0 then
    local alive = redis.call('HMGET', st.k_items, unpack(strays))
    for j, id in ipairs(strays) do
      if not alive[j] then redis.call('HDEL', st.k_flow, id) end
    end
  end
  return ids, items, ccs, used, stop, wait_until
end
