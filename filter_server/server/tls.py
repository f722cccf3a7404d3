"""The filter server's TLS: the shared implementation in `mailwarden.tls`."""

from mailwarden.tls import (
           CA_FILE,
           CERT_FILE,
           KEY_FILE,
           TlsConfigError,
           check_tls_dir,
           server_credentials,
)

__all__ = ["CA_FILE", "CERT_FILE", "KEY_FILE", "TlsConfigError", "check_tls_dir",
           "server_credentials"]
