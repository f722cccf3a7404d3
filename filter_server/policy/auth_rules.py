"""The built-in rules sender authentication and the bulk-mail gate fire, with their
descriptions and default scores (`authentication.scores` in a policy overrides any).

Defaults are modest, in line with SpamAssassin's and Rspamd's stock scores: passing
authentication proves who sent a message, not that it is wanted, and failures are common in
forwarded and list mail (which ARC exists for). A DMARC failure under the domain owner's
`reject` policy is the strong signal. The gate's rules score enough to reach the default
reject threshold on their own: a policy turns the gate on to stop non-compliant bulk mail.
"""

from __future__ import annotations

# name -> (default score, description)
AUTH_RULES: dict[str, tuple[float, str]] = {
    "SPF_PASS": (-0.1, "SPF: the client may send for the MAIL FROM domain"),
    "SPF_FAIL": (1.0, "SPF: the MAIL FROM domain says this client may not send for it"),
    "SPF_SOFTFAIL": (0.7, "SPF: the MAIL FROM domain says this client probably may not "
                          "send for it"),
    "SPF_NEUTRAL": (0.0, "SPF: the MAIL FROM domain says nothing about this client"),
    "SPF_NONE": (0.0, "SPF: no SPF record for the MAIL FROM domain"),
    "SPF_PERMERROR": (0.0, "SPF: the MAIL FROM domain's SPF record is broken"),
    "SPF_TEMPERROR": (0.0, "SPF: DNS did not answer in time (not evidence either way)"),
    "SPF_HELO_PASS": (0.0, "SPF: the client may use its HELO name"),
    "SPF_HELO_FAIL": (0.5, "SPF: the HELO name's domain says this client may not use it"),
    "SPF_HELO_SOFTFAIL": (0.3, "SPF: the HELO name's domain says this client probably may "
                               "not use it"),
    "SPF_HELO_NEUTRAL": (0.0, "SPF: the HELO name's domain says nothing about this client"),
    "SPF_HELO_NONE": (0.0, "SPF: no SPF record for the HELO name"),
    "SPF_HELO_PERMERROR": (0.0, "SPF: the HELO name's SPF record is broken"),
    "SPF_HELO_TEMPERROR": (0.0, "SPF: DNS did not answer in time for the HELO name"),
    "DKIM_VALID": (-0.1, "DKIM: at least one signature verifies"),
    "DKIM_VALID_AU": (-0.1, "DKIM: a signature of the From domain (or a parent) verifies"),
    "DKIM_INVALID": (0.5, "DKIM: signed, but no signature verifies"),
    "DKIM_NONE": (0.0, "DKIM: the message is not signed"),
    "DKIM_TEMPERROR": (0.0, "DKIM: a signing key could not be fetched in time"),
    "DMARC_PASS": (-0.5, "DMARC: SPF or DKIM passed for a domain aligned with From"),
    "DMARC_REJECT": (4.0, "DMARC: failed, and the From domain asks to reject such mail"),
    "DMARC_QUARANTINE": (2.0, "DMARC: failed, and the From domain asks to quarantine such "
                              "mail"),
    "DMARC_FAIL_NONE": (0.1, "DMARC: failed; the From domain only monitors (p=none)"),
    "DMARC_MISSING": (0.0, "DMARC: the From domain publishes no DMARC record"),
    "DMARC_PERMERROR": (0.0, "DMARC: broken record, or not one From address"),
    "DMARC_TEMPERROR": (0.0, "DMARC: DNS did not answer in time (not evidence either way)"),
    "DMARC_ARC_OVERRIDE": (0.0, "DMARC failed but a valid ARC chain sealed by a trusted "
                                "forwarder vouches for the original authentication"),
    "ARC_VALID": (-0.1, "ARC: the chain of forwarders' seals verifies"),
    "ARC_INVALID": (0.5, "ARC: the chain of forwarders' seals is broken"),
    "ARC_TEMPERROR": (0.0, "ARC: a sealing key could not be fetched in time"),
}

# The bulk-mail gate (`authentication.bulkGate`): what mailbox providers require of bulk
# mail (RFC 8058 one-click unsubscribe covered by an aligned DKIM signature, List-Id, a
# visible unsubscribe link).
BULK_SCORE = 20.0
BULK_RULES: dict[str, tuple[float, str]] = {
    "BULK_NO_LIST_UNSUBSCRIBE": (BULK_SCORE, "bulk mail without a List-Unsubscribe header"),
    "BULK_UNSUBSCRIBE_NOT_HTTPS": (BULK_SCORE, "List-Unsubscribe has no https: URI for "
                                               "one-click"),
    "BULK_NO_ONECLICK": (BULK_SCORE, "List-Unsubscribe-Post is not exactly "
                                     "'List-Unsubscribe=One-Click'"),
    "BULK_ONECLICK_TOKEN_INVALID": (BULK_SCORE, "the one-click token does not verify with "
                                                "the unsubscribe store's keys"),
    "BULK_ONECLICK_WRONG_RECIPIENT": (BULK_SCORE, "the one-click token names someone who "
                                                  "is not a recipient"),
    "BULK_ONECLICK_WRONG_LIST": (BULK_SCORE, "the one-click token is for another list "
                                             "than the request's list_scope"),
    "BULK_ONECLICK_TOKEN_UNCHECKED": (0.0, "the filter has no signing keys, so the "
                                           "one-click token was not checked"),
    "BULK_DKIM_MISSING": (BULK_SCORE, "bulk mail without a DKIM signature that verifies"),
    "BULK_DKIM_NOT_ALIGNED": (BULK_SCORE, "no verified DKIM signature aligns with From"),
    "BULK_DKIM_MISSES_LIST_UNSUBSCRIBE": (BULK_SCORE, "the aligned DKIM signature does not "
                                                      "cover List-Unsubscribe"),
    "BULK_DKIM_MISSES_LIST_UNSUBSCRIBE_POST": (BULK_SCORE, "the aligned DKIM signature "
                                                           "does not cover "
                                                           "List-Unsubscribe-Post"),
    "BULK_DKIM_TEMPERROR": (0.0, "the signing key could not be fetched in time, so DKIM "
                                 "coverage is unknown"),
    "BULK_NO_LIST_ID": (BULK_SCORE, "bulk mail without a List-Id header"),
    "BULK_NO_VISIBLE_UNSUBSCRIBE": (BULK_SCORE, "no unsubscribe link or text in the body"),
    "BULK_COMPLIANT": (0.0, "bulk mail that meets every requirement of the gate"),
}

ALL_RULES: dict[str, tuple[float, str]] = {**AUTH_RULES, **BULK_RULES}
