-- job_announce: publish job events on a channel's event stream, in one call.
-- KEYS: none (it only publishes; on a Redis Cluster a PUBLISH reaches every node)
-- ARGV[1] events channel  ARGV[2..] messages "<kind>\0<id>\0<data>" (<= 1000)
-- Returns: the number of messages published.
-- Events: feed.jobevent:<f> one message per ARGV[2..] (the worker's outcome events).
local last = math.min(#ARGV, 1001)
for i = 2, last do
  redis.call('PUBLISH', ARGV[1], ARGV[i])
end
return last - 1
