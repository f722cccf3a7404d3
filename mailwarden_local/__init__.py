"""Local mode (`mailwarden local`): the data plane on one machine, in one command.

It trains the statistical model on the SpamAssassin corpus (cached), starts an unsubscribe
store on embedded SQLite and N filter replicas as `mailwarden serve` processes on
127.0.0.1, classifies held-out mail through the balancing client, shows one one-click
unsubscribe reaching Classify, and keeps everything running until Ctrl-C.

An application of the components, not one of them: it starts them as separate processes,
exactly as a cluster would, and needs the `server` and `store` extras. Modules:
``corpus`` (the deterministic train/test split), ``model`` (train or reuse the cached
model), ``policy`` (the example policy in local form), ``processes`` (start, wait, stop),
``demo`` (what it shows), ``main`` (the command).
"""
