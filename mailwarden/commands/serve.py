"""`mailwarden serve`: the filter server (gRPC Filter + health + reflection, /metrics)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXTRA = "server"


def register(sub: argparse._SubParsersAction) -> None:
    from filter_server.server.config import (
        DEFAULT_GRPC_PORT,
        DEFAULT_MAX_MESSAGE_BYTES,
        DEFAULT_METRICS_PORT,
        ServeConfig,
    )
    from mailwarden import wire

    d = ServeConfig(policy_dir=Path("."))
    parser = sub.add_parser(
        "serve", help="run the gRPC filter server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve mailwarden.filter.v1.Filter with grpc.health.v1 health and server "
        "reflection, Prometheus metrics on a separate port, and policy hot reload. Logs are "
        "JSON lines on stderr. SIGTERM: health NOT_SERVING at once, serve on for "
        "--drain-seconds, then stop taking calls and let calls in flight finish within "
        "--grace-seconds. Exit codes: 0 stopped, 2 configuration error, 3 policy did not "
        "load, 4 workers kept crashing.")
    parser.add_argument("--policy-dir", required=True, type=Path, metavar="DIR",
                        help="policy directory (policy.yaml and its model file; the "
                        "kubelet's ConfigMap layout with ..data works and is reloaded "
                        "atomically)")
    parser.add_argument("--host", default=d.host,
                        help="address to listen on, for gRPC and metrics ([::] = all)")
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, metavar="N",
                        help="gRPC port (0 = pick a free one; see --port-file)")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, metavar="M",
                        help="Prometheus /metrics port (0 = pick a free one)")
    parser.add_argument("--health-port", type=int, default=None, metavar="H",
                        help="also serve grpc.health.v1 (and nothing else) in plaintext on "
                        "this port, for probes of a server whose gRPC port is behind "
                        "--tls-dir (the kubelet's gRPC probe speaks plaintext) [default: "
                        "none]")
    parser.add_argument("--workers", type=int, default=None, metavar="K",
                        help="worker processes sharing the gRPC port (SO_REUSEPORT) "
                        "[default: the CPUs this process may use]")
    parser.add_argument("--drain-seconds", type=float, default=d.drain_seconds, metavar="S",
                        help="after SIGTERM, keep serving this long while NOT_SERVING "
                        "propagates to load balancers and clients")
    parser.add_argument("--grace-seconds", type=float, default=d.grace_seconds, metavar="G",
                        help="then wait this long for calls in flight before cancelling them")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        metavar="B", help="largest message accepted; larger ones get "
                        "RESOURCE_EXHAUSTED")
    parser.add_argument("--max-connection-age-ms", type=int, default=d.max_connection_age_ms,
                        metavar="A", help="close client connections after this age (GOAWAY) "
                        "so clients re-resolve and new replicas get traffic")
    parser.add_argument("--max-connection-age-grace-ms", type=int,
                        default=d.max_connection_age_grace_ms, metavar="MS",
                        help="time calls on an aged connection get to finish")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=d.max_concurrent_rpcs,
                        metavar="C", help="Filter calls in flight per worker; more get "
                        "RESOURCE_EXHAUSTED at once (an open ClassifyStream counts as one)")
    parser.add_argument("--tls-dir", type=Path, default=None, metavar="D",
                        help="serve TLS from D/tls.crt and D/tls.key (cert-manager Secret "
                        "layout); rotated files are picked up without a restart")
    parser.add_argument("--require-client-cert", action="store_true",
                        help="mutual TLS: require client certificates signed by D/ca.crt")
    parser.add_argument("--log-level", default=d.log_level,
                        choices=("debug", "info", "warning", "error"),
                        help="debug adds one line per verdict (costs throughput)")
    parser.add_argument("--policy-poll-seconds", type=float, default=d.policy_poll_seconds,
                        metavar="S", help="how often to check the policy directory for a "
                        "new version")
    parser.add_argument("--shadow-policy-dir", type=Path, default=None, metavar="DIR",
                        help="a candidate policy (same layout as --policy-dir) evaluated "
                        "in shadow on a sample of traffic: it never answers; how its "
                        "verdicts compare is exported as mailwarden_shadow_* metrics")
    parser.add_argument("--shadow-sample-rate", type=float, default=d.shadow_sample_rate,
                        metavar="F", help="fraction of messages offered to the shadow "
                        "policy (0-1)")
    parser.add_argument("--shadow-cpu-fraction", type=float, default=d.shadow_cpu_fraction,
                        metavar="F", help="average share of one CPU per worker the shadow "
                        "evaluation may use (0-1); samples beyond it are skipped")
    parser.add_argument("--policy-wait-seconds", type=float, default=d.policy_wait_seconds,
                        metavar="S", help="at startup, wait up to S seconds for a missing "
                        "or invalid policy to become valid (health stays NOT_SERVING); "
                        "0 = fail at once")
    parser.add_argument("--port-file", type=Path, default=None, metavar="FILE",
                        help="once listening, write the bound ports as JSON "
                        '({"grpc_port": N, "metrics_port": M, "pid": P}) to FILE')
    parser.add_argument("--suppression-store", default=None, metavar="HOST:PORT",
                        help="gRPC address of an UnsubscribeStore: keep its suppressions in "
                        "memory (Watch stream) and report suppressed recipients in every "
                        "response; without it responses say SUPPRESSION_DISABLED")
    parser.add_argument("--suppression-store-tls-dir", type=Path, default=None, metavar="DIR",
                        help="connect to the --suppression-store over TLS: DIR/ca.crt "
                        "verifies the store, DIR/tls.crt + DIR/tls.key (when present) are "
                        "the client certificate for a store that requires one; re-read at "
                        "every reconnection [default: plaintext]")
    parser.add_argument("--suppression-stale-after", type=float,
                        default=d.suppression_stale_after, metavar="S",
                        help="answers are marked SUPPRESSION_STALE when the cache has not "
                        "been confirmed up to date for S seconds")
    parser.add_argument("--suppression-key-file", type=Path,
                        default=os.environ.get("MAILWARDEN_SUPPRESSION_KEY_FILE") or None,
                        metavar="FILE", help="HMAC key (>= 32 bytes, raw or hex) of the "
                        "suppression fingerprints the pod holds instead of addresses "
                        "[$MAILWARDEN_SUPPRESSION_KEY_FILE; default: a random key per pod]")
    parser.add_argument("--suppression-index-dir", type=Path, default=None, metavar="DIR",
                        help="where the supervisor writes the suppression index all workers "
                        "map (an emptyDir in a pod) [default: a private temporary directory]")
    mail = parser.add_argument_group(
        "mail-server protocols", "Listen for MTAs too (docs/protocols.md), each off unless its "
        "port is given; 0 picks a free port (see --port-file). Calls share the Filter "
        "service's admission control, suppression and metrics (method label = protocol).")
    mail.add_argument("--milter-port", type=int, default=None, metavar="P",
                      help="milter (Postfix smtpd_milters, Sendmail) [default: off; the "
                      f"operator uses {wire.FILTER_MILTER_PORT}]")
    mail.add_argument("--spamd-port", type=int, default=None, metavar="P",
                      help="spamd protocol (spamc, Exim spam =, amavis) [default: off; the "
                      f"operator uses {wire.FILTER_SPAMD_PORT}]")
    mail.add_argument("--rspamd-port", type=int, default=None, metavar="P",
                      help="Rspamd protocol (/checkv2: rspamc, Haraka, Rspamd proxy; Exim "
                      f"variant=rspamd) [default: off; the operator uses "
                      f"{wire.FILTER_RSPAMD_PORT}]")
    mail.add_argument("--protocol-idle-seconds", type=float, default=d.protocol_idle_seconds,
                      metavar="S", help="close a protocol connection whose peer sends nothing "
                      "for S seconds (a stalled client, a milter session never ended)")
    mail.add_argument("--protocol-deadline-seconds", type=float,
                      default=d.protocol_deadline_seconds, metavar="S",
                      help="deadline of a message received over a protocol (what a gRPC "
                      "caller sets per call): admission refuses it as temporary when the "
                      "work queued ahead cannot finish in time")
    mail.add_argument("--protocol-max-connections", type=int,
                      default=d.protocol_max_connections, metavar="N",
                      help="open connections per worker and protocol; more are closed at "
                      "once")
    parser.add_argument("--memory-limit-bytes", type=int, default=None, metavar="B",
                        help="memory the server may use (all workers); each worker sizes "
                        "its budget for messages in flight from its share and refuses calls "
                        "beyond it with RESOURCE_EXHAUSTED [default: "
                        "$MAILWARDEN_MEMORY_LIMIT_BYTES, which the operator sets from the "
                        "pod's memory limit; else the cgroup's limit; else no limit (each "
                        "worker then holds at most 1 GiB of messages)]")
    parser.add_argument("--max-recipients", type=int, default=d.max_recipients, metavar="N",
                        help="envelope recipients one call may carry; more get "
                        "INVALID_ARGUMENT (split the envelope)")
    parser.add_argument("--receive-timeout-seconds", type=float,
                        default=d.receive_timeout_seconds, metavar="S",
                        help="a call that has reserved memory must deliver its request "
                        "within S seconds, and an open ClassifyStream its next one; "
                        "otherwise it ends with DEADLINE_EXCEEDED and gives the memory back")
    parser.add_argument("--max-streams-per-connection", type=int,
                        default=d.max_streams_per_connection, metavar="N",
                        help="ClassifyStream calls one client connection may hold open; "
                        "more get RESOURCE_EXHAUSTED")
    parser.add_argument("--cpu-budget-seconds", type=float, default=d.cpu_budget_seconds,
                        metavar="S", help="CPU time one message may take to parse; a message "
                        "that needs more is classified on what was read by then and its "
                        "verdict gets a SCAN_BUDGET_EXCEEDED hit (0 = no limit)")
    parser.add_argument("--signing-key-dir", type=Path, default=None, metavar="DIR",
                        help="the unsubscribe store's signing keys (a directory with "
                        "'current' and optional 'previous', e.g. its mounted Secret): the "
                        "bulk gate of policies with authentication.bulkGate verifies "
                        "one-click tokens with them; without it tokens are not checked "
                        "(BULK_ONECLICK_TOKEN_UNCHECKED)")
    learn = parser.add_argument_group("learning (gRPC Learning.Learn, docs/model.md)")
    learn.add_argument("--learn-dir", type=Path, default=None, metavar="DIR",
                       help="folder where Learn stores messages people labelled (DIR/ham, "
                       "DIR/spam) for the next `mailwarden train` [default: none, Learn is "
                       "disabled]; mount a volume there (the root file system is read-only)")
    learn.add_argument("--admin-token-file", type=Path, default=None, metavar="FILE",
                       help="admin credential Learn callers must send as 'authorization: "
                       "Bearer <credential>' [default: $MAILWARDEN_ADMIN_TOKEN; with neither, "
                       "Learn is disabled]")
    learn.add_argument("--learn-max-per-hour", type=int, default=d.learn_max_per_hour,
                       metavar="N", help="new messages of each class Learn stores per hour; "
                       "more get RESOURCE_EXHAUSTED")
    learn.add_argument("--learn-max-messages", type=int, default=d.learn_max_messages,
                       metavar="N", help="messages of each class the learning folder may "
                       "hold; more get RESOURCE_EXHAUSTED until it is trained on and emptied")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from filter_server.server.config import EXIT_CONFIG, ServeConfig, default_workers
    from filter_server.server.memory import container_memory_limit

    memory_limit = args.memory_limit_bytes
    if memory_limit is None:
        try:
            memory_limit = container_memory_limit() or 0
        except ValueError as exc:
            print(f"mailwarden serve: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    config = ServeConfig(
        policy_dir=args.policy_dir, host=args.host, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, health_port=args.health_port,
        workers=args.workers if args.workers is not None else default_workers(),
        drain_seconds=args.drain_seconds, grace_seconds=args.grace_seconds,
        max_message_bytes=args.max_message_bytes,
        max_connection_age_ms=args.max_connection_age_ms,
        max_connection_age_grace_ms=args.max_connection_age_grace_ms,
        max_concurrent_rpcs=args.max_concurrent_rpcs, tls_dir=args.tls_dir,
        milter_port=args.milter_port, spamd_port=args.spamd_port,
        rspamd_port=args.rspamd_port, protocol_idle_seconds=args.protocol_idle_seconds,
        protocol_deadline_seconds=args.protocol_deadline_seconds,
        protocol_max_connections=args.protocol_max_connections,
        require_client_cert=args.require_client_cert, log_level=args.log_level,
        policy_poll_seconds=args.policy_poll_seconds,
        shadow_policy_dir=args.shadow_policy_dir, shadow_sample_rate=args.shadow_sample_rate,
        shadow_cpu_fraction=args.shadow_cpu_fraction,
        policy_wait_seconds=args.policy_wait_seconds, port_file=args.port_file,
        suppression_store=args.suppression_store,
        suppression_stale_after=args.suppression_stale_after,
        suppression_store_tls_dir=args.suppression_store_tls_dir,
        suppression_key_file=args.suppression_key_file,
        suppression_index_dir=args.suppression_index_dir,
        memory_limit_bytes=memory_limit, cpu_budget_seconds=args.cpu_budget_seconds,
        max_recipients=args.max_recipients,
        receive_timeout_seconds=args.receive_timeout_seconds,
        max_streams_per_connection=args.max_streams_per_connection,
        signing_key_dir=args.signing_key_dir, learn_dir=args.learn_dir,
        admin_token_file=args.admin_token_file, learn_max_per_hour=args.learn_max_per_hour,
        learn_max_messages=args.learn_max_messages)
    problems = config.problems()
    if problems:
        for problem in problems:
            print(f"mailwarden serve: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if config.workers == 1:
        from filter_server.server.worker import run_worker

        return run_worker(config)
    from filter_server.server.supervisor import run_supervisor

    return run_supervisor(config)
