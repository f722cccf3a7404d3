"""The Mailwarden operator (kopf): reconciles SpamPolicy resources into filter Deployments
and UnsubscribeStore resources into unsubscribe store Deployments.

This folder is installed as the package `mailwarden_operator` (see setup.py) and must never
be imported as `operator`, which is Python's standard library.

Layout: `crd.py` defines the CustomResourceDefinitions; `spec.py` the serving defaults;
`policy.py` turns `spec.policy` into the content-hashed policy bundle; `render/` holds one
pure builder per child object kind; `kube.py` + `apply.py` read and write objects;
`status.py` computes status and conditions; `reconcile.py` ties one reconcile together;
`handlers.py` registers it with kopf; `main.py` runs the operator. The UnsubscribeStore
has the same shape: `store_crd.py`, `store_naming.py`, `store_spec.py`, `render/store/`,
`store_status.py`, `store_reconcile.py`.
"""
