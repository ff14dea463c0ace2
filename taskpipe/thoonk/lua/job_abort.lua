-- job_abort: end a running (claimed) job as aborted, at once: its claim and lease are
-- released, its item removed (so it never runs again by itself), its result set to the
-- caller's "aborted" record and announced on job.finish, who and when kept in
-- feed.aborted:<f>:<id>, its job record kept (outcome 'aborted', _record.lua) when the call
-- has a record section, its "aborted" event published on the job event stream (unless ARGV[7]
-- is empty), and its dependants (depends_on, chain, chord) released as by job_finish
-- (_workflow.lua). The worker running it sees the abort (feed.aborted:<f>:<id>, which names
-- the claim it ended by its fencing token) and stops the task; a later run of the same id (the id
-- published again, or requeued) has another token and is not stopped by it.
-- KEYS[1] feed.claimed:<f>  KEYS[2] feed.leases:<f>  KEYS[3] feed.tokens:<f>
-- KEYS[4] feed.workers:<f>  KEYS[5] feed.items:<f>  KEYS[6] feed.cancelled:<f>
-- KEYS[7] feed.attempts:<f>  KEYS[8] feed.published:<f>  KEYS[9] feed.finishes:<f>
-- KEYS[10] feed.finished:<f>  KEYS[11] feed.failures:<f>  KEYS[12] feed.progress:<f>
-- KEYS[13] feed.reasons:<f>  KEYS[14] feed.aborted:<f>:<id>  KEYS[15] feed.result:<f>:<id>
-- KEYS[16 ..] the workflow section of _workflow.lua (1 + 4w KEYS, last 1 + w ARGV), then the
--          optional record section of _record.lua for one job (4 KEYS: feed.failedidx:<f>,
--          feed.labelstats:<f>, feed.record:<f>:<id>, feed.labelidx:<f>:<label>; 7 ARGV: item
--          cap, index keep ms, 'aborted', label, '', '', '\0record'), as job_finish takes it
-- ARGV[1] id  ARGV[2] result record  ARGV[3] result (and record) ttl ms  ARGV[4] job.finish:<f>
-- ARGV[5] who  ARGV[6] keep the feed.aborted:<f>:<id> record ("<who>\0<token>\0<ms>": the
--         claim's fencing token, '' if it had none) this many ms
-- ARGV[7] the feed.jobevent:<f> channel ('' = announce nothing)  ARGV[8] the event's data: a
--         JSON object, to which this script adds "attempt" (the run it ended: 1 for the first)
-- Returns: 1 aborted; 0 the job is not claimed (nothing changed); -2 it has dependants not
--          passed in the workflow section (nothing changed: retry with them).
-- Events: job.finish:<f> "<id>\0<record>"; feed.jobevent:<f> "aborted\0<id>\0<data>".
--@include _now.lua
--@include _owner.lua
--@include _wake.lua
--@include _workflow.lua
--@include _record.lua
local id = ARGV[1]
if check_owner(KEYS[1], KEYS[3], id, '') ~= 1 then return 0 end
local rec = record_section(1, KEYS, ARGV)  -- the job's record (docs/history.md)
local wf = wf_section(KEYS, ARGV, rec and rec.k - 1 or #KEYS, rec and rec.a - 1 or #ARGV)
local code = wf_check(wf, KEYS, id, 1)
if code ~= 1 then return code end
local now = now_ms()
local now_str = tostring(now)
local attempt = tonumber(redis.call('HGET', KEYS[7], id) or '0') + 1  -- the run it ends
local token = redis.call('HGET', KEYS[3], id) or ''  -- and its claim: only it is stopped
if rec then  -- what the job is about to lose, for its record
  record_read_all(rec, {id}, {1}, {redis.call('ZSCORE', KEYS[1], id)}, KEYS[5], KEYS[6], KEYS[7],
                  KEYS[8], KEYS[4])
end
unclaim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], id)
redis.call('HDEL', KEYS[5], id)
redis.call('HDEL', KEYS[6], id)
redis.call('HDEL', KEYS[7], id)
redis.call('ZREM', KEYS[8], id)
redis.call('HDEL', KEYS[12], id)
redis.call('HDEL', KEYS[13], id)
redis.call('INCR', KEYS[9])
redis.call('INCR', KEYS[11])
redis.call('ZADD', KEYS[10], now, id)
redis.call('SET', KEYS[14], ARGV[5] .. '\0' .. token .. '\0' .. now_str, 'PX',
           tonumber(ARGV[6]))
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[15], ARGV[2], 'PX', ttl)
  if rec then
    record_write(rec, 1, 1, id, now_str, ARGV[3])
    record_trim(rec, now)
  end
end
redis.call('PUBLISH', ARGV[4], id .. '\0' .. ARGV[2])
if ARGV[7] ~= '' then
  local rest = string.sub(ARGV[8], 2)  -- the caller's JSON object after its '{'
  if rest ~= '}' then rest = ',' .. rest end
  redis.call('PUBLISH', ARGV[7], 'aborted\0' .. id .. '\0{"attempt":' .. attempt .. rest)
end
wf_release(wf, KEYS, id)
return 1
