-- wrk driver for bench/run.py: a fixed number of requests, then stop; one JSON line of results.
--
--   wrk ... -s bench/wrk.lua URL -- LIMIT fixed
--       every request is the same (headers from wrk's -H flags)
--   wrk ... -s bench/wrk.lua URL -- LIMIT ids HEADER FORMAT SPAN COUNT STRIDE OFFSET
--       request j carries HEADER: string.format(FORMAT, (OFFSET + j * STRIDE) % SPAN),
--       for j = 0 .. COUNT-1, cycling; requests are built in init(), as wrk's docs advise.
--
-- Requests are counted as their responses arrive; at LIMIT the thread stops (run with -t 1,
-- so LIMIT is the run's request count). wrk's -d is only the upper bound in time: wrk's main
-- thread sleeps for the whole -d whatever its threads do, so the thread that reaches LIMIT also
-- sends wrk itself SIGINT, which ends that sleep (wrk's own Ctrl-C path: results are printed).

local ffi = require("ffi")
ffi.cdef("int getpid(void); int kill(int pid, int sig);")

local limit = 0
local seen = 0
local reqs = {}
local n = 0
local i = 0

function init(args)
  limit = tonumber(args[1])
  local mode = args[2]
  if mode == "ids" then
    local header, fmt = args[3], args[4]
    local span, count = tonumber(args[5]), tonumber(args[6])
    local stride, offset = tonumber(args[7]), tonumber(args[8])
    for j = 0, count - 1 do
      local k = (offset + j * stride) % span
      reqs[#reqs + 1] = wrk.format(nil, nil, { [header] = string.format(fmt, k) })
    end
  else
    reqs[1] = wrk.format()
  end
  n = #reqs
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

function response(status, headers, body)
  seen = seen + 1
  if seen == limit then
    wrk.thread:stop()
    ffi.C.kill(ffi.C.getpid(), 2)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "err_connect": %d, "err_read": %d, '
    .. '"err_write": %d, "err_status": %d, "err_timeout": %d, "lat_mean_us": %.1f, '
    .. '"lat_p50_us": %d, "lat_p90_us": %d, "lat_p99_us": %d, "lat_max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
