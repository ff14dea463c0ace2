-- helper: check that a job is claimed, and (when token ~= '') that the caller holds its lease.
-- Returns 1 if so, 0 if the job is not claimed, -1 if it is claimed under another token.
local function check_owner(k_claimed, k_tokens, id, token)
  if not redis.call('ZSCORE', k_claimed, id) then return 0 end
  if token ~= '' and redis.call('HGET', k_tokens, id) ~= token then return -1 end
  return 1
end
-- helper: drop a job's claim records (claimed, lease, token, worker).
local function unclaim(k_claimed, k_leases, k_tokens, k_workers, id)
  redis.call('ZREM', k_claimed, id)
  redis.call('ZREM', k_leases, id)
  redis.call('HDEL', k_tokens, id)
  redis.call('HDEL', k_workers, id)
end
