-- job_promote: move due delayed jobs to available (bounded batch), by Redis server time.
-- KEYS[1] feed.delayed:<f>  KEYS[2] feed.urgent:<f>  KEYS[3] feed.items:<f>
-- KEYS[4] feed.ids:<f>      KEYS[5] feed.wake:<f>
-- ARGV[1] limit (capped at 1000 so one call stays well under a few ms; callers loop while it
--         returns limit)
-- Returns: {moved, next_due_ms or -1}
-- Events: none.
--@include _now.lua
--@include _promote.lua
--@include _wake.lua
local limit = math.min(tonumber(ARGV[1]), 1000)
local moved = promote(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now_ms(), limit)
push_wake_markers(KEYS[5], moved)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local nxt = -1
if first[2] then nxt = tonumber(first[2]) end
return {moved, nxt}
