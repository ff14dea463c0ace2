-- job_finish: finish claimed jobs, store their results with a TTL and publish job.finish.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.items:<f>    KEYS[6] feed.cancelled:<f>  KEYS[7] feed.attempts:<f>
-- KEYS[8] feed.published:<f>  KEYS[9] feed.finishes:<f>  KEYS[10] feed.finished:<f>
-- KEYS[11] feed.failures:<f>  KEYS[12] feed.progress:<f>  KEYS[13] feed.reasons:<f>
-- KEYS[13+i] feed.result:<f>:<id_i> for each of the n jobs
-- KEYS[13+n+k] feed.query:<f>:<id> for the k-th job (of q) whose result mode is '2'
-- Optional follow-up job (only with n = 1), put on another channel <t> by this same step, at
-- f = 14+n+q: KEYS[f] feed.ids:<t>  KEYS[f+1] feed.items:<t>  KEYS[f+2] feed.published:<t>
-- KEYS[f+3] feed.publishes:<t>  KEYS[f+4] feed.wake:<t>  KEYS[f+5] feed.finished:<t>
-- KEYS[f+6] feed.result:<t>:<follow-up id>
-- Then, always, the workflow section (_workflow.lua): 1 + 4w KEYS and 1 + w ARGV, last but for
-- the optional record section after it.
-- ARGV[1] job.finish:<f> channel  ARGV[2] keep finished-index entries this many ms
-- ARGV[3] n (<= 1000)
-- ARGV[4 + 6*(i-1) ...] per job: id, token ('' = no fencing check), result,
--                       result ttl ms ('0' = do not store), failed ('1'/'0'),
--                       result mode: '0' a plain acknowledgement (no result, nothing published),
--                       '1' a result (even an empty one), '2' a result, and keep the job's item
--                       beside it in feed.query:<f>:<id> for the same ttl (thoonk.py get_result)
-- ARGV[4 + 6n], ARGV[5 + 6n]: follow-up id, follow-up item (when follow-up keys are given)
-- Returns: a list of n codes: 1 finished, 0 not claimed (nothing changed), -1 lease lost
--          (claimed under another token: refused, nothing changed), -2 the job has
--          dependants not passed in the workflow section (nothing changed: retry with them); then the follow-up flag
--          (1 put, 0 an item with that id existed, absent when no follow-up).
-- Events: job.finish:<f> "<id>\0<result>" for each finished job that has a result, an empty
--   one included ("<id>\0", as thoonk.py and thoonk.js publish whenever a result is given).
-- Owner checks first; then the bookkeeping of all finished jobs (unclaim, HDEL of their
-- fields, counters, finished index) with one command per key for the whole batch; then each
-- finished job's result and event, in order (all inside this one atomic call).
-- Optional record section (job records and their indexes, after everything above): see
-- _record.lua; the record of a job expires with its result.
--@include _now.lua
--@include _owner.lua
--@include _wake.lua
--@include _put.lua
--@include _workflow.lua
--@include _record.lua
local n = tonumber(ARGV[3])
if n > 1000 then return redis.error_reply('ERR job_finish: at most 1000 jobs per call') end
if n < 1 then return {} end
local rec = record_section(n, KEYS, ARGV)  -- job records (b-history)
local now = now_ms()
-- numbers go to redis.call as strings made once: Redis formats each number argument with
-- snprintf("%.17g"), which cost more than the command itself (callgrind, docs/performance.md)
local now_str = tostring(now)
-- the workflow section (_workflow.lua) comes before the record section (_record.lua)
local wf = wf_section(KEYS, ARGV, rec and rec.k - 1 or #KEYS, rec and rec.a - 1 or #ARGV)
local out = {}
local done, seen, scored, finished, started = {}, {}, {}, {}, {}
local failures = 0
local ids, fenced = {}, false
local qkey, q = {}, 0  -- job index -> KEYS index of its feed.query key (mode '2' jobs only)
for i = 1, n do
  local b = 4 + 6 * (i - 1)
  ids[i] = ARGV[b]
  if ARGV[b + 1] ~= '' then fenced = true end
  if ARGV[b + 5] == '2' then
    q = q + 1
    qkey[i] = 13 + n + q
  end
end
-- the owner and workflow checks of the whole batch: one command per key (_owner.lua's
-- check_owner and _workflow.lua's wf_check, read for every job at once); nothing is written
-- before every job is checked, so reading first is the same as checking each in turn
local claimed_at = redis.call('ZMSCORE', KEYS[1], unpack(ids))
local holders = fenced and redis.call('HMGET', KEYS[3], unpack(ids)) or {}
local parents_of = wf_counts(wf, KEYS, ids)
for i = 1, n do
  local b = 4 + 6 * (i - 1)
  local id, token = ids[i], ARGV[b + 1]
  local code = 0  -- an id twice in one call: the second is "not claimed", as if run in turn
  if not seen[id] and claimed_at[i] then
    code = 1
    if token ~= '' and holders[i] ~= token then code = -1 end  -- lease lost
  end
  if code == 1 then code = wf_code(wf, parents_of[i], n) end  -- workflow: dependants passed?
  if code == 1 then
    seen[id] = true
    done[#done + 1] = id
    finished[#finished + 1] = i
    started[#started + 1] = claimed_at[i]
    scored[#scored + 1] = now_str
    scored[#scored + 1] = id
    if ARGV[b + 4] == '1' then failures = failures + 1 end
  end
  out[i] = code
end
if #done > 0 then
  -- the bookkeeping of every finished job, one command per key for the whole batch. The
  -- deletes come first: over maxmemory (noeviction) Redis refuses a script whose first write
  -- may grow memory, and a worker must still be able to finish jobs then.
  if rec then  -- job records: what each job is about to lose (b-history)
    record_read_all(rec, done, finished, started, KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[4])
  end
  redis.call('ZREM', KEYS[1], unpack(done))   -- claimed
  redis.call('ZREM', KEYS[2], unpack(done))   -- leases
  redis.call('HDEL', KEYS[3], unpack(done))   -- tokens
  redis.call('HDEL', KEYS[4], unpack(done))   -- workers
  local queries = {}  -- the items to keep beside their results (mode '2'), read before the HDEL
  for j, i in ipairs(finished) do
    local b = 4 + 6 * (i - 1)
    if qkey[i] and tonumber(ARGV[b + 3]) > 0 then
      if rec then queries[i] = rec.items[j] else queries[i] = redis.call('HGET', KEYS[5], ARGV[b]) end
    end
  end
  redis.call('HDEL', KEYS[5], unpack(done))   -- items
  redis.call('HDEL', KEYS[6], unpack(done))   -- cancelled
  redis.call('HDEL', KEYS[7], unpack(done))   -- attempts
  redis.call('ZREM', KEYS[8], unpack(done))   -- published
  redis.call('HDEL', KEYS[12], unpack(done))  -- progress
  redis.call('HDEL', KEYS[13], unpack(done))  -- reasons
  redis.call('INCRBY', KEYS[9], #done)
  if failures > 0 then redis.call('INCRBY', KEYS[11], failures) end
  redis.call('ZADD', KEYS[10], unpack(scored))
  local old = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, 100)
  if #old > 0 then redis.call('ZREM', KEYS[10], unpack(old)) end
  -- then each finished job's result and event, in order
  for j, i in ipairs(finished) do
    local b = 4 + 6 * (i - 1)
    local id, result, ttl_str, mode = ARGV[b], ARGV[b + 2], ARGV[b + 3], ARGV[b + 5]
    local ttl = tonumber(ttl_str)
    if mode ~= '0' then
      if ttl > 0 then
        redis.call('SET', KEYS[13 + i], result, 'PX', ttl_str)
        if queries[i] then
          redis.call('SET', KEYS[qkey[i]], queries[i], 'PX', ttl_str)
        end
      end
      redis.call('PUBLISH', ARGV[1], id .. '\0' .. result)
    end
    if rec and ttl > 0 then record_write(rec, j, i, id, now_str, ttl_str) end  -- job records (b-history)
  end
  if rec then record_trim(rec, now) end
end
if n == 1 and out[1] == 1 then wf_release(wf, KEYS, ARGV[4]) end  -- workflow: queue dependants
if wf.base - 1 >= 14 + n + q and n == 1 and out[1] == 1 then
  local f = 14 + n + q
  local fid, fitem = ARGV[4 + 6 * n], ARGV[5 + 6 * n]
  if put_job_record(KEYS[f + 1], KEYS[f + 2], KEYS[f + 3], KEYS[f + 5], KEYS[f + 6], now, fid,
                    fitem) then
    redis.call('LPUSH', KEYS[f], fid)
    push_wake_markers(KEYS[f + 4], 1)
    out[n + 1] = 1
  else
    out[n + 1] = 0
  end
end
return out
