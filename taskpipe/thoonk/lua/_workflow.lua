-- workflow helpers for job_finish and job_abort (which include _wake.lua first): release the
-- dependants (depends_on, chain, chord) of a finishing job in the same atomic step that
-- finishes it. The keys come as arguments: the caller's KEYS and ARGV tables, whose workflow
-- section is always last:
--   keys[base] feed.dependents:<f>, then per dependant k (w of them, only with n = 1): its
--   channel's feed.waiting, feed.items, feed.ids, feed.wake (keys[base + 4*(k-1) + 1 .. 4])
--   argv[#argv] w, the dependants' ids just before it
-- wf_section(keys, argv, kend, aend): {base, w, ids} of that section, which ends at keys[kend]
--   and argv[aend] (default: the last ones; job_finish passes the ends before its record
--   section, which comes after this one).
-- wf_check(wf, keys, id, count): 1 if the job may finish now; -2 if it has dependants the
--   caller did not pass (or passed in a batch of count > 1): nothing is changed for it, the
--   caller reads them and retries.
-- wf_counts(wf, keys, ids) / wf_code(wf, c, count): the same check for a batch: one HMGET of
--   every id's dependant count, then wf_code per job with its count (job_finish).
-- wf_release(wf, keys, id): decrement each dependant's counter of unfinished parents; the one
--   that reaches zero is queued (an item retracted meanwhile is dropped from waiting, not
--   queued). Bounded: w <= the most dependants a parent may have (job_put_waiting).
local function wf_section(keys, argv, kend, aend)
  kend, aend = kend or #keys, aend or #argv
  local w = tonumber(argv[aend])
  local ids = {}
  for k = 1, w do ids[k] = argv[aend - w - 1 + k] end
  return {base = kend - 4 * w, w = w, ids = ids}
end
local function wf_code(wf, c, count)
  if not c then return 1 end
  if count ~= 1 or tonumber(c) ~= wf.w then return -2 end
  return 1
end
local function wf_check(wf, keys, id, count)
  return wf_code(wf, redis.call('HGET', keys[wf.base], id), count)
end
local function wf_counts(wf, keys, ids)
  return redis.call('HMGET', keys[wf.base], unpack(ids))
end
local function wf_release(wf, keys, id)
  if wf.w == 0 then return end
  local fields = {id}
  for k = 1, wf.w do
    local b = wf.base + 4 * (k - 1)
    local did = wf.ids[k]
    fields[#fields + 1] = id .. '\0' .. k
    if redis.call('HEXISTS', keys[b + 1], did) == 1 then
      local left = redis.call('HINCRBY', keys[b + 1], did, -1)
      if left <= 0 then
        redis.call('HDEL', keys[b + 1], did)
        if redis.call('HEXISTS', keys[b + 2], did) == 1 then
          redis.call('LPUSH', keys[b + 3], did)
          push_wake_markers(keys[b + 4], 1)
        end
      end
    end
  end
  redis.call('HDEL', keys[wf.base], unpack(fields))
end
