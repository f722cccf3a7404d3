"""Checks made before anything listens, so a mistake in the flags, the policy or the TLS
files is one clear line on stderr and an exit code, not a traceback or a crash loop."""

from __future__ import annotations

from filter_server.engine.compiled import CompiledPolicy
from filter_server.server.config import EXIT_CONFIG, EXIT_POLICY, ServeConfig
from filter_server.server.policy import PolicyLoadError, load_and_compile
from filter_server.server.tls import TlsConfigError, check_tls_dir
from mailwarden.fingerprints import FingerprintKey, KeyUnusable


class PreflightError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def preflight(config: ServeConfig) -> CompiledPolicy | None:
    """Check TLS files and, unless the server may wait for it, compile the policy (returned
    so a single-process server need not compile it twice)."""
    if config.tls_dir is not None:
        try:
            check_tls_dir(config.tls_dir, config.require_client_cert)
        except TlsConfigError as exc:
            raise PreflightError(f"--tls-dir: {exc}", EXIT_CONFIG) from None
    if config.suppression_key_file is not None:
        try:
            FingerprintKey.from_file(config.suppression_key_file)
        except KeyUnusable as exc:
            raise PreflightError(f"--suppression-key-file: {exc}", EXIT_CONFIG) from None
    if config.policy_wait_seconds > 0:
        return None
    if not config.policy_dir.is_dir():
        raise PreflightError(f"--policy-dir {config.policy_dir} is not a directory",
                             EXIT_POLICY)
    try:
        return load_and_compile(config.policy_dir)
    except PolicyLoadError as exc:
        raise PreflightError(str(exc), EXIT_POLICY) from None
