"""Fixtures every test directory may use, defined once in the test kit (testkit/)."""

from testkit.filter import policy_dir, servers  # noqa: F401  (fixtures)
from testkit.store import (backend, pg_cluster, pg_dsn, signing_keys,  # noqa: F401  (fixtures)
                           start_store, store, store_args)
