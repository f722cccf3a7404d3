"""The shared test-and-benchmark kit: what the tests, the fault suite and the benchmarks all
need, written once.

- `processes`: start a Mailwarden server process and wait until it serves (port file, gRPC
  health), stop it and everything it started;
- `filter` / `store`: a real `mailwarden serve` / `mailwarden unsubscribe-server` for a test,
  with the fixtures that start and always stop them, and the small policies and messages
  the tests share;
- `pg`: a real PostgreSQL (primary, optionally a streaming standby) in temporary directories;
- `kubelet`: what the kubelet does with a rendered pod outside a cluster (container
  environment, ConfigMap volume projection);
- `procfs`: CPU and memory of a process tree from /proc.

Not installed with the product: it is imported from a checkout (the tests and benchmarks
run from the repository root).
"""
