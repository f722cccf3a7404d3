"""The one place a filter pod's SuppressionCache is made from its configuration — for the
workers and for the supervisor's index builder alike — so whatever decides how the pod
reaches the store (its address, its key, how the channel is secured) applies to both."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import grpc

from filter_server.server.config import ServeConfig
from filter_server.server.store_suppression import tls_channel_factory
from filter_server.server.suppression_cache import SuppressionCache, _insecure_channel
from mailwarden.fingerprints import FingerprintKey
from mailwarden.keepalive import keepalive_options


def follow_store(config: ServeConfig, *, index_path: str | os.PathLike[str] | None = None,
                 name: str = "suppression-cache") -> SuppressionCache:
    """A cache of `config.suppression_store` with the pod's fingerprint key (a key of this
    process without `suppression_key_file`). Raises KeyUnusable for a key file that cannot
    be used."""
    assert config.suppression_store, "following a store needs --suppression-store"
    key = (FingerprintKey.from_file(config.suppression_key_file)
           if config.suppression_key_file else None)
    # TLS to the store (--suppression-store-tls-dir): the files are read at each attempt.
    factory = (tls_channel_factory(config.suppression_store_tls_dir)
               if config.suppression_store_tls_dir else None)
    # A lone worker with a shared key starts from the store's fingerprint snapshot too
    # (under the supervisor, its builder does that for the pod).
    snapshot_file = None
    if index_path is None and key is not None and config.workers == 1:
        # Unlinked once mapped (server/suppression_cache.py): nothing is left behind.
        directory = Path(config.suppression_index_dir or tempfile.gettempdir())
        os.makedirs(directory, exist_ok=True)
        snapshot_file = directory / f"mailwarden-fingerprints-{os.getpid()}.idx"
    return SuppressionCache(config.suppression_store,
                            stale_after=config.suppression_stale_after, key=key,
                            index_path=index_path, name=name, channel_factory=factory,
                            fingerprint_snapshot_file=snapshot_file)


def store_channel(config: ServeConfig) -> grpc.Channel:
    """A channel to `config.suppression_store`, secured as the cache's are."""
    assert config.suppression_store, "following a store needs --suppression-store"
    factory = (tls_channel_factory(config.suppression_store_tls_dir)
               if config.suppression_store_tls_dir else _insecure_channel)
    # Room for the fingerprint snapshot's 1 MiB messages whatever the default becomes.
    return factory(config.suppression_store,
                   [("grpc.max_receive_message_length", 8 << 20), *keepalive_options()])
