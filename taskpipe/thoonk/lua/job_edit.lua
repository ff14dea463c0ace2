-- job_edit: replace the payload of a job that is still waiting (available, delayed or stalled).
-- KEYS[1] feed.items:<f>  KEYS[2] feed.claimed:<f>
-- ARGV[1] id  ARGV[2] the new payload
-- Returns: 1 edited; 0 no such waiting job (finished, retracted or never published);
--          -1 claimed: a worker holds it (nothing changed).
-- Events: none.
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 0 then return 0 end
if redis.call('ZSCORE', KEYS[2], id) then return -1 end
redis.call('HSET', KEYS[1], id, ARGV[2])
return 1
