"""The in-process seam the protocols use (servicer.Admission), on a servicer in this
process: what it counts, what it gives back, and that a failure inside is still an answer."""

from __future__ import annotations

import logging

import grpc
import pytest
from prometheus_client import CollectorRegistry

from filter_server.engine.compiled import Envelope
from filter_server.server.memory import MemoryBudget
from filter_server.server.metrics import FilterMetrics
from filter_server.server.servicer import Admission, FilterServicer, LocalCall, Rejected
from filter_server.server.suppression import NoSuppressionStore


class Broken:
    hash = "broken"

    def classify(self, raw: bytes, envelope: Envelope):  # noqa: ANN201
        raise RuntimeError("a bug in the engine")


class Holder:
    current = Broken()


def servicer(memory: int = 1 << 20, slots: int = 2,
             max_bytes: int = 300_000) -> tuple[FilterServicer, FilterMetrics]:
    metrics = FilterMetrics(CollectorRegistry())
    return FilterServicer(Holder(), metrics, logging.getLogger("test"),  # type: ignore[arg-type]
                          suppression=NoSuppressionStore(), max_message_bytes=max_bytes,
                          max_concurrent_rpcs=slots, memory=MemoryBudget(memory)), metrics


def count(metrics: FilterMetrics, method: str, code: str) -> float:
    return metrics.requests.labels(method, code)._value.get()


def test_an_internal_failure_is_a_refusal_counted_as_internal():
    filter_servicer, metrics = servicer()
    admission = Admission(filter_servicer, "milter", 5)
    admission.reserve(10)
    with pytest.raises(Rejected) as refused:
        admission.classify(LocalCall("q", b"Subject: x\r\n\r\nbody", Envelope()))
    assert refused.value.code == grpc.StatusCode.INTERNAL
    admission.close()
    assert count(metrics, "milter", "INTERNAL") == 1
    assert filter_servicer.memory.reserved == 0 and metrics.in_flight._value.get() == 0


def test_slots_memory_and_size_are_the_servicers():
    filter_servicer, metrics = servicer(memory=200_000, slots=1)
    filter_servicer._slots.acquire()  # the one slot is taken (by a gRPC call, say)
    busy = Admission(filter_servicer, "spamd", 5)
    busy.reserve(10)  # receiving needs no slot ...
    with pytest.raises(Rejected) as refused:  # ... classifying does
        busy.classify(LocalCall("q", b"Subject: x\r\n\r\nbody", Envelope()))
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.at_capacity
    busy.close()
    filter_servicer._slots.release()
    first = Admission(filter_servicer, "spamd", 5)
    with pytest.raises(Rejected) as large:
        first.reserve(300_001)  # over max_message_bytes
    assert not large.value.at_capacity
    first.close()
    second = Admission(filter_servicer, "spamd", 0.05)
    assert second.try_reserve(100)
    assert not second.try_reserve(150_000)  # no room now: the caller waits on a thread
    with pytest.raises(Rejected):
        second.reserve(150_000)  # waited its share of the deadline in vain
    second.close()
    assert filter_servicer.memory.reserved == 0
    assert count(metrics, "spamd", "RESOURCE_EXHAUSTED") == 3
    assert metrics.rejected._value.get() == 2  # the busy slot and the memory wait
