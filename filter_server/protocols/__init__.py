"""The mail-server protocols a filter pod speaks besides gRPC: milter (Postfix, Sendmail),
the spamd protocol (spamc, Exim's `spam =`, amavis, MailScanner) and Rspamd's protocol
(`POST /checkv2`, rspamc, Haraka, Rspamd's milter proxy; and the legacy `RSPAMC/1.3` lines
Exim's `variant=rspamd` sends).

Each adapter only reads its wire format and writes its replies. What happens to a message
in between — admission (call slots, the memory budget, the deadline-aware queue),
classification, suppression, the request and verdict metrics — is the gRPC servicer's own
path (`servicer.Admission`), so a message costs and counts the same whichever door it
came through. `verdict.py` turns one ClassifyResponse into what each protocol says;
`server.py` runs the listeners of one worker process on one asyncio event loop.
"""
