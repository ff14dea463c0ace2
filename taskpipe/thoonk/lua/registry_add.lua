-- registry_add: Redis Cluster step 2 of create: register a name in the global `feeds` SET.
-- Idempotent: running it again (a retry, or an open repairing a create that crashed between
-- its two steps) changes nothing and publishes nothing.
-- KEYS[1] feeds  SET of object names
-- ARGV[1] name  ARGV[2] instance id  ARGV[3] newfeed channel  ARGV[4] conffeed channel
-- Returns: 1 if the name was added, 0 if it was already registered.
-- Events: newfeed "<f>\0<instance>", conffeed "<f>\0<instance>" (only when added).
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. '\0' .. ARGV[2])
return 1
