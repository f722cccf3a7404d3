"""The filter server: gRPC `mailwarden.filter.v1.Filter` with health, reflection, Prometheus
metrics, policy hot reload, TLS, and a supervisor running one worker process per core.

Modules, one job each:
    config       ServeConfig: every knob of `mailwarden serve`, with its default
    logs         structured JSON logging
    metrics      the Prometheus metrics and the /metrics HTTP endpoint
    policy       PolicyHolder: the live compiled policy, reloaded off the request path
    suppression  the seam through which an unsubscribe store answers
    suppression_cache  the store's client: its suppressions in memory, kept by Watch
    store_suppression  answers Classify from the suppression cache
    servicer     the Filter service itself
    tls          server credentials from a cert-manager style directory, with rotation
    ports        port reservation (SO_REUSEPORT) and the port file
    worker       one serving process: gRPC server, health, signals, drain
    supervisor   the parent of K workers: signals, restarts, aggregated metrics
"""
