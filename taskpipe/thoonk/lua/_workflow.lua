-- workflow helpers for job_finish: release the dependants (depends_on, chain, chord) of a
-- finishing job in the same atomic step that finishes it.
-- The caller appends a workflow section to job_finish's KEYS and ARGV, always:
--   KEYS[#KEYS - 4*w] feed.dependents:<f>, then per dependant k (w of them, only with n = 1):
--   its channel's feed.waiting, feed.items, feed.ids, feed.wake
--   ARGV[#ARGV] w, the dependants' ids before it (ARGV[#ARGV - w .. #ARGV - 1])
-- wf_check(id, n): 1 if the job may finish now; -2 if it has dependants the caller did not
-- pass (or passed in a batch): nothing is changed for it, the caller reads them and retries.
-- wf_release(id): decrement each dependant's counter of unfinished parents; the one that
-- reaches zero is queued (an item retracted meanwhile is dropped from waiting, not queued).
local wf_w = tonumber(ARGV[#ARGV])
local wf_base = #KEYS - 4 * wf_w
local function wf_check(id, count)
  local c = redis.call('HGET', KEYS[wf_base], id)
  if not c then return 1 end
  if count ~= 1 or tonumber(c) ~= wf_w then return -2 end
  return 1
end
local function wf_release(id)
  if wf_w == 0 then return end
  local fields = {id}
  for k = 1, wf_w do
    local b = wf_base + 4 * (k - 1)
    local did = ARGV[#ARGV - wf_w - 1 + k]
    fields[#fields + 1] = id .. '\0' .. k
    if redis.call('HEXISTS', KEYS[b + 1], did) == 1 then
      local left = redis.call('HINCRBY', KEYS[b + 1], did, -1)
      if left <= 0 then
        redis.call('HDEL', KEYS[b + 1], did)
        if redis.call('HEXISTS', KEYS[b + 2], did) == 1 then
          redis.call('LPUSH', KEYS[b + 3], did)
          wake(KEYS[b + 4], 1)
        end
      end
    end
  end
  redis.call('HDEL', KEYS[wf_base], unpack(fields))
end
