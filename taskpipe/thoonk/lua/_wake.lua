-- helper: wake blocked workers: push `count` (at most 16) markers on a channel's wake-up list,
-- which is kept to its newest 64 markers. Workers block on the list (BLPOP) instead of polling.
local function push_wake_markers(k_wake, count)
  if count > 0 then
    local markers = {}
    for i = 1, math.min(count, 16) do markers[i] = '1' end
    if redis.call('LPUSH', k_wake, unpack(markers)) > 64 then redis.call('LTRIM', k_wake, 0, 63) end
  end
end
