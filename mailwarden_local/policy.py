"""The policy local mode serves: a SpamPolicy (or bare policy) file in local form."""

from __future__ import annotations

from pathlib import Path

from mailwarden_local.errors import LocalError


def local_policy(policy_file: Path, dns_servers: list[str] | None = None) -> bytes:
    """The example policy with its model taken from the policy directory (`model.file`)
    instead of the ConfigMap reference only the operator can resolve; with `dns_servers`,
    sender authentication resolves through them (else through this machine's resolver,
    /etc/resolv.conf)."""
    import yaml

    from filter_server.policy.validate import PolicyInvalid, parse_policy_text

    try:
        policy = parse_policy_text(policy_file.read_text(encoding="utf-8"), str(policy_file))
    except OSError as exc:
        raise LocalError(f"cannot read the policy {policy_file}: {exc.strerror or exc}") from None
    except PolicyInvalid as exc:
        raise LocalError(str(exc)) from None
    if not isinstance(policy, dict):
        raise LocalError(f"{policy_file} holds no policy")
    model = dict(policy.get("model") or {})
    model.pop("configMapRef", None)
    model["file"] = "model.json.gz"
    policy["model"] = model
    if dns_servers:
        auth = policy.setdefault("authentication", {})
        auth.setdefault("dns", {})["servers"] = list(dns_servers)
    return yaml.safe_dump(policy, sort_keys=False).encode()
