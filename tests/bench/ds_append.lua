-- wrk script for bench_http's append workload (tests/bench/bench_http.py, "wrk" writers):
-- POST `n` one-item JSON appends to one durable stream, each item [i, time_ns] (i from 0,
-- the time on CLOCK_REALTIME like Python's time.time_ns()), then stop wrk.
--
--   wrk -t1 -cC -d600s -s ds_append.lua URL -- N PATH [AUTHORIZATION]
--
-- One thread only (-t1): each wrk thread runs its own copy of this script, which counts
-- the items of its own thread. A connection that fails is reconnected by wrk without its
-- request: the run then ends at -d, and the reader reports the missing items.
-- With one connection the items go one at a time, in order; with C connections, C at a
-- time, in any order. Once all `n` appends are sent, the connections still waiting for the
-- last answers send HEAD requests to the stream (wrk always sends a request when a
-- connection is free), so exactly `n` items are appended. An append is answered 204 and
-- a HEAD 200; any other status stops the run, reported on stderr.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } ds_timespec;
int clock_gettime(int clk_id, ds_timespec *tp);
int getpid(void);
int kill(int pid, int sig);
]]
local CLOCK_REALTIME, SIGINT = 0, 2
local now = ffi.new("ds_timespec")
local n, path = 0, "/"
local headers = { ["Content-Type"] = "application/json" }
-- wrk calls request() once before the run, to check it: that call takes item -1, unsent
local sent, appended = -2, 0

function init(args)
  n = tonumber(args[1])
  path = args[2]
  if args[3] then headers["Authorization"] = args[3] end
end

function request()
  if sent >= n - 1 then
    return wrk.format("HEAD", path, headers)
  end
  sent = sent + 1
  ffi.C.clock_gettime(CLOCK_REALTIME, now)
  local body = string.format("[[%d,%d%09d]]", sent, tonumber(now.tv_sec), tonumber(now.tv_nsec))
  return wrk.format("POST", path, headers, body)
end

local function finish()
  -- wrk's main thread sleeps for the whole -d; SIGINT to the process (its main thread)
  -- ends that sleep, and wrk prints its figures and exits as it does on Ctrl-C
  wrk.thread:stop()
  ffi.C.kill(ffi.C.getpid(), SIGINT)
end

function response(status, headers, body)
  if status == 204 then
    appended = appended + 1
    if appended >= n then finish() end
  elseif status ~= 200 then
    io.stderr:write(string.format("ds_append.lua: answered %d: %s\n", status, body))
    finish()
  end
end
