"""`mailwarden operator`: run the Kubernetes operator that reconciles SpamPolicies."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXTRA = "operator"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "operator", help="run the Kubernetes operator (reconciles SpamPolicy and "
        "UnsubscribeStore resources)",
        description="Reconcile SpamPolicy resources into autoscaled filter Deployments and "
        "UnsubscribeStore resources into unsubscribe store Deployments. "
        "Runs in a pod (service account) or against the current kubeconfig. Replicas "
        "elect one active member through kopf peering; every replica serves the webhook.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--namespace", "-n", action="append", default=[], dest="namespaces",
                        metavar="NS", help="watch only this namespace (repeatable; default: "
                        "all namespaces)")
    parser.add_argument("--filter-image", default=None,
                        help="image for filter and store pods whose SpamPolicy or "
                        "UnsubscribeStore sets no spec.image "
                        "(default: $MAILWARDEN_FILTER_IMAGE or the release's image)")
    parser.add_argument("--resync-seconds", type=float, default=60.0,
                        help="re-check every SpamPolicy and UnsubscribeStore this often "
                        "(drift, late Secrets and model "
                        "ConfigMaps)")
    parser.add_argument("--no-informer-cache", dest="informer_cache",
                        action="store_false",
                        help="read every object from the API server instead of from the "
                        "watch-fed caches (which make a no-op resync cost ~0 requests; see "
                        "docs/operator.md)")
    parser.add_argument("--keep-policy-configmaps", type=int, default=3,
                        help="policy ConfigMaps kept per SpamPolicy (the live one included)")
    parser.add_argument("--peering", default="mailwarden",
                        help="kopf ClusterKopfPeering/KopfPeering name for leader election")
    parser.add_argument("--standalone", action="store_true",
                        help="no peering: this process is always active (one replica only)")
    parser.add_argument("--peering-lifetime", type=int, default=15,
                        help="seconds a silent peer stays presumed alive (bounds takeover "
                        "time after a crash)")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority (default: earlier start = higher)")
    parser.add_argument("--liveness-port", type=int, default=8080,
                        help="port of GET /healthz (0: off)")
    parser.add_argument("--metrics-port", type=int, default=9100,
                        help="port of the Prometheus /metrics endpoint (0: off)")
    parser.add_argument("--webhook-port", type=int, default=9443,
                        help="port of the validating admission webhook (0: off)")
    parser.add_argument("--webhook-cert-dir", type=Path, default=None,
                        help="directory with tls.crt and tls.key for the webhook")
    parser.add_argument("--webhook-insecure", action="store_true",
                        help="serve the webhook over plain HTTP (local testing only)")
    parser.add_argument("--listen-address", default="::",
                        help="address for the webhook, health (/healthz, /readyz) and "
                        "metrics listeners; `::` accepts IPv4 and IPv6 (falls back to "
                        "0.0.0.0 on a host without IPv6), 0.0.0.0 IPv4 only")
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="log level")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before importing the kubernetes client: it reads $KUBECONFIG at import time, and
        # kopf's login uses the client's default location.
        os.environ["KUBECONFIG"] = args.kubeconfig
    from mailwarden_operator.main import OperatorConfig
    from mailwarden_operator.main import run as run_operator

    if args.webhook_cert_dir is not None:
        missing = [f for f in ("tls.crt", "tls.key")
                   if not (args.webhook_cert_dir / f).is_file()]
        if missing:
            print(f"mailwarden operator: {args.webhook_cert_dir} lacks {', '.join(missing)}",
                  file=sys.stderr)
            return 2
    if args.keep_policy_configmaps < 1:
        print("mailwarden operator: --keep-policy-configmaps must be at least 1",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = OperatorConfig(
        namespaces=args.namespaces,
        filter_image=args.filter_image or os.environ.get("MAILWARDEN_FILTER_IMAGE")
        or OperatorConfig.filter_image,
        resync_seconds=args.resync_seconds,
        keep_configmaps=args.keep_policy_configmaps,
        informer_cache=args.informer_cache,
        peering=None if args.standalone else args.peering,
        peering_lifetime=args.peering_lifetime,
        priority=args.priority,
        liveness_port=args.liveness_port,
        metrics_port=args.metrics_port,
        webhook_port=args.webhook_port,
        webhook_cert_dir=args.webhook_cert_dir,
        webhook_insecure=args.webhook_insecure,
        listen_address=args.listen_address,
        kubeconfig=args.kubeconfig,
    )
    return run_operator(config)
