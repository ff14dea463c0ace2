-- job_extend: renew the leases of claimed jobs whose fencing token still matches.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>
-- ARGV[1] lease ms  ARGV[2..] id, token pairs (at most 1000 pairs)
-- Returns: the ids whose lease was NOT renewed (not claimed any more, or claimed under another token).
-- Events: none.
--@include _now.lua
local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
local last = math.min(#ARGV, 2001)
for i = 2, last, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[1], id) and redis.call('HGET', KEYS[3], id) == token then
    redis.call('ZADD', KEYS[2], deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
