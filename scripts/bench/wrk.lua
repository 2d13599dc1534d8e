-- wrk script for scripts/bench.sh (see BENCHMARKS.md).
--
-- Environment:
--   BENCH_PATHS   a file with one request path per line; wrk thread i gets line i (round
--                 robin), so `-t C -c C` puts each connection on its own path (process)
--   BENCH_METHOD  GET or POST
--   BENCH_BODY    the JSON body of every request (empty: none)
--   BENCH_TOKEN   sent as `Authorization: Bearer ...` when not empty
--   BENCH_OUT     where done() writes the summary as JSON
--
-- wrk counts only socket errors and statuses >= 400 as errors; response() counts every
-- status, so the caller can count exactly the answers it expected (201 for a charged step).

local paths = nil
local counter = 0
local threads = {}

local function read_lines(name)
  local lines = {}
  for line in io.lines(name) do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  if #lines == 0 then
    error("no paths in " .. name)
  end
  return lines
end

function setup(thread)
  if paths == nil then
    paths = read_lines(os.getenv("BENCH_PATHS"))
  end
  counter = counter + 1
  thread:set("bench_path", paths[(counter - 1) % #paths + 1])
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  local method = os.getenv("BENCH_METHOD") or "GET"
  local body = os.getenv("BENCH_BODY") or ""
  local token = os.getenv("BENCH_TOKEN") or ""
  local headers = {}
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  if body ~= "" then
    headers["Content-Type"] = "application/json"
  else
    body = nil
  end
  prepared = wrk.format(method, bench_path, headers, body)
end

function request()
  return prepared
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    if counts then
      for status, count in pairs(counts) do
        merged[status] = (merged[status] or 0) + count
      end
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    parts[#parts + 1] = string.format('"%d": %d', status, count)
  end
  local errors = summary.errors
  local json = string.format(
    '{"requests": %d, "duration_us": %d, "statuses": {%s}, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %.1f, "p99": %.1f, "p999": %.1f, "max": %.1f, "mean": %.1f}}\n',
    summary.requests, summary.duration, table.concat(parts, ", "),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(json)
  out:close()
end
