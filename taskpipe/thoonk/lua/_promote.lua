-- helper: move due delayed jobs of one channel to available, in due order, at most `limit`.
-- Ids whose item is gone (retracted) are dropped. Urgent (priority) ids go to the head.
-- Returns the number promoted.
local function promote(k_delayed, k_urgent, k_items, k_ids, now, limit)
  local due = redis.call('ZRANGEBYSCORE', k_delayed, '-inf', now, 'LIMIT', 0, limit)
  local moved = 0
  for _, id in ipairs(due) do
    redis.call('ZREM', k_delayed, id)
    if redis.call('HEXISTS', k_items, id) == 1 then
      if redis.call('SREM', k_urgent, id) == 1 then
        redis.call('RPUSH', k_ids, id)
      else
        redis.call('LPUSH', k_ids, id)
      end
      moved = moved + 1
    else
      redis.call('SREM', k_urgent, id)
    end
  end
  return moved
end
