"""What both kinds share: the API client (`kube`, `apply`), Events, metrics, per-object
locks, the webhook certificate watcher, and the builders both kinds' CRDs, specs, statuses
and child objects are made from (`naming`, `crd`, `spec`, `status`, `render`).

Nothing here knows a kind: `spampolicy/` and `unsubscribestore/` build on it, never the
reverse.
"""
