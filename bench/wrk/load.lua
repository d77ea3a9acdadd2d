-- wrk script for `make bench`: POSTs prediction requests and prints one JSON line of results.
--
--   wrk -t2 -c64 -d10s -s load.lua http://127.0.0.1:8000/predict -- <format> <mode> <nonce>
--
-- format: berth (Berth's {"features": [...]} / {"instances": [[...]]}, also what the Flask
--         tutorial app reads), v2 (Open Inference Protocol, for MLServer) or bentoml
--         ({"features": [[...], ...]}: the rows of a batchable BentoML API, one or many)
-- mode:   distinct (a new row every request: cache misses), repeated (one row: cache hits),
--         batch (100 new rows per request)
-- nonce:  makes this run's rows differ from every earlier run's, so nothing hits an old cache

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

local format, mode, nonce, counter

function init(args)
  format = args[1] or "berth"
  mode = args[2] or "distinct"
  nonce = tonumber(args[3] or "0")
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

-- Every (thread, counter, nonce) gives a different row, all within iris's ranges.
local function row(n)
  return string.format("[%.4f,%.4f,%.6f,%.6f]",
    4.3 + (n % 3600) / 1000,
    2.0 + (math.floor(n / 3600) % 2400) / 1000,
    1.0 + thread_id / 100 + (nonce % 1000) / 100000,
    0.1 + (math.floor(n / 8640000) % 100) / 100 + (math.floor(nonce / 1000) % 1000) / 1000000)
end

local function body_of(rows, count)
  if format == "v2" then
    local flat = table.concat(rows, ","):gsub("[%[%]]", "")
    return string.format(
      '{"inputs":[{"name":"predict","shape":[%d,4],"datatype":"FP64","data":[%s]}]}', count, flat)
  end
  if format == "bentoml" then
    return '{"features":[' .. table.concat(rows, ",") .. ']}'
  end
  if count == 1 then
    return '{"features":' .. rows[1] .. '}'
  end
  return '{"instances":[' .. table.concat(rows, ",") .. ']}'
end

local repeated_body

function request()
  if mode == "repeated" then
    repeated_body = repeated_body or body_of({"[5.1,3.5,1.4,0.2]"}, 1)
    return wrk.format(nil, nil, nil, repeated_body)
  end
  local count = (mode == "batch") and 100 or 1
  local rows = {}
  for i = 1, count do
    counter = counter + 1
    rows[i] = row(counter)
  end
  return wrk.format(nil, nil, nil, body_of(rows, count))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
