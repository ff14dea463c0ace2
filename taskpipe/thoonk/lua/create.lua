-- create: register a Thoonk object and write its config, atomically.
-- KEYS[1] feeds            SET of object names
-- KEYS[2] feed.config:<f>  HASH config
-- ARGV[1] name  ARGV[2] instance id  ARGV[3] newfeed channel  ARGV[4] conffeed channel
-- ARGV[5..] field, value pairs (must include type; schema is added by the caller)
-- Returns: 1 if created, 0 if the name already existed (nothing written).
-- Events: newfeed "<f>\0<instance>", conffeed "<f>\0<instance>" (only when created).
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[1] .. '\0' .. ARGV[2])
return 1
