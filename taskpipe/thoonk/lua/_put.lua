-- helper: write one new job's records: its item (HSETNX: the guard that an id is never doubled),
-- its publish time and the publish counter; clear what an earlier run with the same id left
-- (its stored result and finished-index entry), so they are not taken for the new run's.
-- The caller then makes it available (LPUSH/RPUSH) or delays it. Returns true if written,
-- false (nothing written) when an item with that id exists.
local function put_job_record(k_items, k_published, k_publishes, k_finished, k_result, now, id, item)
  if redis.call('HSETNX', k_items, id, item) == 0 then return false end
  redis.call('ZREM', k_finished, id)
  redis.call('DEL', k_result)
  redis.call('ZADD', k_published, now, id)
  redis.call('INCR', k_publishes)
  return true
end
