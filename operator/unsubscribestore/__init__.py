"""The UnsubscribeStore kind: `naming` (children's names, labels, mounts, ports), `crd`
(its schema), `spec` (defaults and cross-field checks), `render/` (one pure builder per
child object), `status` (conditions from what a reconcile observed), `reconcile` (read →
render → apply → report, with the signing-key Secret created once and never replaced).

It knows nothing of SpamPolicies; they read its names and status.
"""
