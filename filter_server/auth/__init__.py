"""Sender authentication: SPF, DKIM, DMARC and ARC as built-in rules, an RFC 8601
Authentication-Results header, and the outbound compliance gate for bulk mail.

Two phases, so that DNS never holds up classification and CPU work stays in the
classification turn (filter_server/server/turns.py):

1. `gather` (async, `service.Authenticator`, outside the turn): SPF for MAIL FROM and HELO,
   the DKIM/ARC public keys every signature names and the DMARC records, all through one
   caching resolver (`resolver.py`) within the call's deadline. A lookup that cannot be
   answered in time is a temporary error, never a stall.
2. `evaluate` (sync, `evaluate.py`, inside the turn): DKIM and ARC verification with the
   prefetched keys (dkimpy), DMARC alignment and policy, the bulk-mail gate, the rule names
   and the Authentication-Results header.
"""
