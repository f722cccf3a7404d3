"""Mailwarden's public contract and client: what senders, filter pods, the store and the
operator agree on — the generated gRPC code (``filter.v1``, ``unsubscribe.v1``), ``wire``
(names and numbers on the wire), ``addresses``, ``tokens``, ``suppression``,
``unsubscribe_headers`` and ``client`` (FilterClient). None of these imports anything else
of the repository, and all of them run with `pip install mailwarden` alone.

``cli`` and ``commands/`` are the `mailwarden` command; its subcommands import the
components (filter_server, unsubscribe_store, mailwarden_operator, mailwarden_local) only
when they run.
"""
