-- job_progress: record a claimed job's progress and announce it.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.tokens:<f>  KEYS[3] feed.progress:<f>
-- ARGV[1] id  ARGV[2] token ('' = no check)  ARGV[3] progress text  ARGV[4] events channel
-- Returns: 1 recorded, 0 not claimed, -1 lease lost.
-- Events: feed.jobevent:<f> "progress\0<id>\0<progress>".
--@include _owner.lua
local code = check_owner(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if code ~= 1 then return code end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'progress\0' .. ARGV[1] .. '\0' .. ARGV[3])
return 1
