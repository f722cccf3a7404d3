"""The SpamPolicy kind: `naming` (children's names, labels, ports), `crd` (its schema),
`spec` (defaults and cross-field checks), `policy` (spec.policy → the content-hashed bundle
a filter pod loads), `render/` (one pure builder per child object), `status` (conditions
from what a reconcile observed), `suppression_health` (the filter pods' SuppressionFresh),
`webhook` (admission), `reconcile` (read → render → apply → report).

A SpamPolicy may read the UnsubscribeStore's names (where its filter pods find the store)
and status (whether it is Ready); the store never reads the SpamPolicy.
"""
