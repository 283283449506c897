-- wrk script for bench/canary_overhead.py: POST the canary's image request body, then print
-- the latency percentiles (microseconds) on one machine-readable line for the bench to parse.
-- Why a script: wrk sends GET without a body unless a script sets method, body and headers.
wrk.method = "POST"
wrk.body = '{"prompt": "loopback", "seed": 1, "n": 1, "size": "64x64"}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  io.write(string.format("WRK requests=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
