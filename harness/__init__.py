"""The one Python package that drives the builds: the gates (verify/), the
benchmarks (bench/) and the tests (tests/) all import it.

Each module has one job:
  paths     where the builds, the models and the checkouts are (BACKEND-aware)
  builds    the stock/paged pair of a comparison: binaries, knobs, run order
  runs      running a tool until its output is complete (upstream's log race)
  server    one llama-server on loopback: start, health, requests, stop by PID
  sse       one streaming /completion request, timed token by token
  prompts   deterministic prompt text
  trailers  the patch series and its trailers: knobs, bit-exactness, tests
  errors    the error the user must fix, and the main() wrapper that prints it
  plots, stats, tables, workload, loadrun, procmem, server_log: the benchmark reports
"""
