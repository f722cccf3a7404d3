"""The Mailwarden operator (kopf): reconciles SpamPolicy resources into filter Deployments
and UnsubscribeStore resources into unsubscribe store Deployments.

This folder is installed as the package `mailwarden_operator` (see setup.py) and must never
be imported as `operator`, which is Python's standard library.

Layout, one folder per kind over a shared layer:
- `common/`: what both kinds use — the API client (`kube`, `apply`), Events, metrics,
  per-object locks, the webhook certificate watcher, and the builders of CRDs, spec
  defaults, status conditions and shared child objects;
- `spampolicy/` and `unsubscribestore/`: each kind's naming, crd, spec, render/, status and
  reconcile (`spampolicy` may read the store's naming and status, never the reverse);
- at the top, what joins the kinds: `crd` (writes every CRD), `handlers` (kopf
  registration), `resync` (the periodic resync), `main` (runs the operator).
"""
