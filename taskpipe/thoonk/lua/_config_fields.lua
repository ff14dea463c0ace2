-- helper: write config field/value pairs from ARGV[first..] into a config hash.
-- An empty value deletes the field; the `type` field is never changed here.
local function apply_config_fields(k_config, first)
  for i = first, #ARGV, 2 do
    if ARGV[i] ~= 'type' then
      if ARGV[i + 1] == '' then
        redis.call('HDEL', k_config, ARGV[i])
      else
        redis.call('HSET', k_config, ARGV[i], ARGV[i + 1])
      end
    end
  end
end
