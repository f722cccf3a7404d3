"""Pure builders of the child objects of a SpamPolicy, one module per kind of child.

Each takes the SpamPolicy (its spec already defaulted by `spec.with_defaults`) and returns
the full desired object as a dict; nothing here talks to the cluster.
"""
