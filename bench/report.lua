-- Every wrk row's result, `bench-result {json}`, as bench/jobs.py prints the job rows'
-- (scripts/bench.py reads both); create.lua loads it too. Latencies are in microseconds.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'bench-result {"rps": %f, "p50_ms": %f, "p99_ms": %f, "requests": %d, "errors": %d, '
      .. '"non_2xx_3xx": %d, "timeouts": %d}\n',
    summary.requests / summary.duration * 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, e.status, e.timeout))
end
