-- job_release: give back claimed jobs that were never started (a worker's prefetched jobs at
-- shutdown) to the HEAD of the queue, in their claim order, cancel count unchanged.
-- Unlike job_cancel (back of the queue, count +1: the job ran, or its worker died), a release
-- undoes the claim as if it had not been made.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>  KEYS[4] feed.workers:<f>
-- KEYS[5] feed.ids:<f>  KEYS[6] feed.wake:<f>
-- ARGV: id, token pairs in claim order (at most 1000 pairs; token '' = no fencing check)
-- Returns: a list of codes, one per job: 1 released, 0 not claimed, -1 lease lost (untouched).
-- Events: none.
--@include _owner.lua
--@include _wake.lua
local n = #ARGV / 2
if n > 1000 or n ~= math.floor(n) then
  return redis.error_reply('ERR job_release: 1 to 1000 (id, token) pairs')
end
local out = {}
local released = 0
-- the last claimed goes back first, so the first claimed ends up at the very head (RPOP side)
for i = n, 1, -1 do
  local id = ARGV[2 * i - 1]
  local code = check_owner(KEYS[1], KEYS[3], id, ARGV[2 * i])
  out[i] = code
  if code == 1 then
    unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
    redis.call('RPUSH', KEYS[5], id)
    released = released + 1
  end
end
push_wake_markers(KEYS[6], released)
return out
