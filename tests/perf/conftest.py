from tests.server.harness import policy_dir, servers  # noqa: F401  (fixtures)
