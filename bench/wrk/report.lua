-- Shared by the benchmark's wrk scripts: when the run ends, print one line
--   IDEMPO_BENCH_JSON {...}
-- with the request count, errors and latency percentiles (microseconds) for bench_http.py.

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'IDEMPO_BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,'
      .. '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
