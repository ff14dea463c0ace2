-- helper: keep a job's flow spec as job_put_flow publishes it (read by _flow.lua at claim time).
-- nprio: its numeric priority ('' = none); rest: the spec after the score ('' = none); seq: this
-- publish's sequence (ties between equal priorities go in publish order). Writes
-- feed.flow:<f>[id] = score .. '\0' .. rest, or removes it when the job has neither; returns the
-- score ('' = not numbered: the job goes on the plain list).
local function put_flow_spec(k_flow, id, nprio, rest, seq)
  local score = ''
  if nprio ~= '' then score = string.format('%.0f', tonumber(nprio) * 281474976710656 + seq) end
  if score ~= '' or rest ~= '' then
    redis.call('HSET', k_flow, id, score .. '\0' .. rest)
  else
    redis.call('HDEL', k_flow, id)
  end
  return score
end
