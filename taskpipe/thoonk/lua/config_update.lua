-- config_update: change fields of an existing object's config.
-- KEYS[1] feeds  KEYS[2] feed.config:<f>
-- ARGV[1] name  ARGV[2] instance id  ARGV[3] conffeed channel
-- ARGV[4..] field, value pairs; an empty value deletes the field (type cannot be changed here)
-- Returns: 1, or 0 if the object does not exist (nothing written).
-- Events: conffeed "<f>\0<instance>".
--@include _config_fields.lua
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
apply_config_fields(KEYS[2], 4)
redis.call('PUBLISH', ARGV[3], ARGV[1] .. '\0' .. ARGV[2])
return 1
