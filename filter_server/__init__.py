"""The filter pod: `mailwarden serve`.

Floors, lowest first (`lint-imports` keeps them): ``message`` (MIME parsing, limits) and
``patterns`` (Hyperscan); ``policy`` (schema, validation, loading) and ``bayes`` (the
statistical model); ``engine`` (a compiled policy classifying one message); ``server``
(gRPC, health, metrics, workers, and the unsubscribe store's client, the suppression cache).
"""
