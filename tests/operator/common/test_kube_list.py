"""Kube.list pages through a large collection (issue 13 item 18): a stand-in for the API
server's paging rules (limit/continue; 410 Gone when a continue token expired, after which
a client starts over)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.kube import SPAMPOLICIES, Kube, KubeError


class PagingServer(Kube):
    def __init__(self, total: int, expire_once: bool = False) -> None:
        self.items = [{"metadata": {"name": f"p{i}", "labels": {"a": "b"}}}
                      for i in range(total)]
        self.expire_once = expire_once
        self.calls: list[dict[str, str]] = []

    def _call(self, method: str, path: str, *, body: Any = None,
              query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json", accept: str | None = None) -> Any:
        params = dict(query or [])
        self.calls.append(params)
        start = int(params.get("continue") or 0)
        if start and self.expire_once:
            self.expire_once = False
            raise KubeError(410, "continue token expired")
        end = start + int(params["limit"])
        meta = {"continue": str(end)} if end < len(self.items) else {}
        return {"items": self.items[start:end], "metadata": meta}


def test_every_page_is_read() -> None:
    server = PagingServer(1234)
    got = server.list(SPAMPOLICIES, "ns", {"a": "b"})
    assert [i["metadata"]["name"] for i in got] == [f"p{i}" for i in range(1234)]
    assert [c["limit"] for c in server.calls] == ["500"] * 3
    assert all(c["labelSelector"] == "a=b" for c in server.calls)


def test_an_expired_continue_token_starts_over() -> None:
    server = PagingServer(1100, expire_once=True)
    got = server.list(SPAMPOLICIES, None, page_size=400)
    assert len(got) == 1100 and len({i["metadata"]["name"] for i in got}) == 1100
    assert [c.get("continue") for c in server.calls] == [None, "400", None, "400", "800"]
