-- Shared by the scenario scripts: request settings from the environment (set by run.py) and
-- one JSON result line at the end.
--   BENCH_METHOD     GET, POST, ...
--   BENCH_PATH       the request path (a script may treat parts of it as a template)
--   BENCH_BODY_FILE  the request body (optional)
--   BENCH_HEADERS    "Name: value" lines (optional)

local common = {}

function common.read_file(path)
   local file = assert(io.open(path, "rb"))
   local content = file:read("*a")
   file:close()
   return content
end

function common.configure()
   wrk.method = os.getenv("BENCH_METHOD") or "GET"
   wrk.path = os.getenv("BENCH_PATH") or wrk.path
   local body_file = os.getenv("BENCH_BODY_FILE")
   if body_file and body_file ~= "" then
      wrk.body = common.read_file(body_file)
   end
   for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name then
         wrk.headers[name] = value
      end
   end
end

-- latency is in microseconds; wrk counts responses with status >= 400 in errors.status.
function common.done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect, e.read, e.write, e.status, e.timeout))
end

return common
