"""The filter scenarios: rollout, SIGTERM, SIGKILL, surge, bad input barrage, burst of
large messages. Each starts
the replicas the rendered Deployment asks for (3), puts load on them through the
balancing client, does its fault, and returns a ScenarioResult whose checks are the
zero-failure properties and whose figures go into the report."""

from __future__ import annotations

import math
import re
import signal
import time
from collections import Counter

from tests.fault.analysis import between, bins, codes, disturbance, latency_summary, ms, \
    percentile
from tests.fault.cluster import FilterCluster, Pod, metric_sum, probe_health, scrape
from tests.fault.common import FaultEnv, ScenarioResult
from tests.fault.load import Call, LoadGen, LoadResult
from tests.fault.sampler import Sampler

PLOT_BIN = 0.25  # seconds per point in the timeline plots
# Seconds of load the surge scenario must see answered cleanly after the overload backlog.
SETTLED_SECONDS = 3.0


def _served(pod: Pod) -> float:
    """Classify calls this pod's current process has answered OK (0 if unreachable)."""
    try:
        return metric_sum(scrape(pod.metrics_address, timeout=5),
                          "mailwarden_filter_requests_total", method="Classify", code="OK")
    except OSError:
        return 0.0


def _wait(predicate, timeout: float, what: str, interval: float = 0.05) -> float:
    """Wait for `predicate`; returns when it became true (monotonic). Raises on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


CLIENT_OPTIONS: dict[str, int] = {}


def _load(env: FaultEnv, cluster: FilterCluster, workdir, phases: list[str],
          threads: int = 128) -> LoadGen:
    return LoadGen(workdir, cluster.target, phases=phases, message_dirs=env.message_dirs,
                   deadline=env.profile.deadline, threads=threads,
                   client_options=CLIENT_OPTIONS).start()


def _common_figures(result: ScenarioResult, load: LoadResult) -> None:
    counted = codes(load.calls)
    result.figure("calls", len(load.calls))
    result.figure("failed calls", len(load.failed()))
    if load.failed():
        result.figure("failures by code", dict(counted))
    result.figure("load generator CPU", f"{load.cpu_fraction * 100:.1f}% of one core")


def _latency_figures(result: ScenarioResult, label: str, calls: list[Call]) -> None:
    summary = latency_summary(calls)
    result.figure(f"latency {label} (p50 / p99 / max)",
                  f"{ms(summary['p50'])} / {ms(summary['p99'])} / {ms(summary['max'])}")


def _timeline(load: LoadResult, origin: float, events: list[tuple[float, str]],
              hashes: tuple[str, str] | None = None) -> dict:
    series = bins(load.calls, PLOT_BIN, origin)
    data = {"t": [b.start - origin for b in series], "p50": [b.p50 for b in series],
            "p99": [b.p99 for b in series], "max": [b.max for b in series],
            "error_rate": [b.error_rate for b in series], "calls": [b.calls for b in series],
            "events": [(at - origin, label) for at, label in events]}
    if hashes:
        new = hashes[1]
        fractions = []
        for b in series:
            group = [c for c in load.calls if b.start <= c.due < b.start + PLOT_BIN and c.ok]
            fractions.append(sum(c.policy_hash == new for c in group) / len(group)
                             if group else math.nan)
        data["new_hash_fraction"] = fractions
    return data


# --- 1. policy rollout under load ---------------------------------------------------------
def rollout(env: FaultEnv) -> ScenarioResult:
    profile = env.profile
    old, new = env.rendered(1), env.rendered(2)
    result = ScenarioResult("rollout", "Policy rollout under load", profile.name)
    workdir = env.dir("rollout")
    with FilterCluster(workdir, old) as cluster:
        cluster.scale_up(old.replicas)
        load = _load(env, cluster, workdir, [f"inf:{profile.rate}"])
        try:
            time.sleep(profile.before)
            report = cluster.rolling_update(new)
            time.sleep(profile.after)
            fresh = [p for p in cluster.pods if not p.terminating]
            served_by_new = {p.name: _served(p) for p in fresh}
        finally:
            calls = load.stop()
        events = [(e.at, f"{e.what} {e.pod.rsplit('-', 2)[-2]}-{e.pod.rsplit('-', 1)[-1]}")
                  for e in cluster.events if e.what in ("deleted", "SIGTERM", "exited", "ready")
                  and e.at >= report.started]
        deleted = [p for p in cluster.pods if p.deleted_at is not None]

    old_answers = [c for c in calls.calls if c.ok and c.policy_hash == old.policy_hash]
    new_answers = [c for c in calls.calls if c.ok and c.policy_hash == new.policy_hash]
    last_old = max((c.end for c in old_answers), default=report.started)
    first_new = min((c.end for c in new_answers), default=math.nan)
    after_done = [c for c in calls.calls if c.due >= report.finished]

    _common_figures(result, calls)
    result.figure("strategy (rendered)", f"maxSurge {new.max_surge()}, maxUnavailable "
                  f"{new.max_unavailable()}, minReadySeconds {new.min_ready_seconds:g}, preStop "
                  f"{new.pre_stop_seconds:g} s, drain {new.arg('--drain-seconds')} s, grace "
                  f"{new.arg('--grace-seconds')} s, terminationGracePeriodSeconds "
                  f"{new.termination_grace_seconds:g}")
    result.figure("pods replaced (last old pod deleted)",
                  f"{report.replaced - report.started:.1f} s")
    result.figure("rollout duration (start → last old pod exited)",
                  f"{report.finished - report.started:.1f} s")
    result.figure("first response with the new hash", f"{first_new - report.started:.2f} s")
    result.figure("every response carries the new hash after",
                  f"{last_old - report.started:.2f} s")
    result.figure("pods at once (max) / available (min) / DNS endpoints (min)",
                  f"{report.max_pods} / {report.min_available} / {report.min_endpoints}")
    sigterm_to_exit = [p.termination.get("sigterm_to_exit", math.nan) for p in deleted]
    result.figure("old pods: SIGTERM → exit", ", ".join(f"{s:.1f} s" for s in sigterm_to_exit))
    _latency_figures(result, "before", between(calls.calls, calls.t0, report.started))
    _latency_figures(result, "during the rollout",
                     between(calls.calls, report.started, report.finished))

    result.check("0 failed calls", not calls.failed(),
                 f"{len(calls.failed())} failed: {codes(calls.failed())}")
    result.check("never more than replicas + maxSurge pods",
                 report.max_pods <= old.replicas + new.max_surge(),
                 f"{report.max_pods} at once, limit {old.replicas} + {new.max_surge()}")
    result.check("never fewer available pods than replicas − maxUnavailable",
                 report.min_available >= old.replicas - new.max_unavailable(),
                 f"min {report.min_available}")
    result.check("every old pod deleted, exited 0 on SIGTERM within its grace period",
                 len(deleted) == old.replicas and all(
                     p.termination.get("exit_code") == 0 and not p.termination.get("killed")
                     for p in deleted),
                 str([p.termination for p in deleted]))
    result.check("after the rollout every response carries the new hash",
                 bool(after_done) and all(c.policy_hash == new.policy_hash for c in after_done),
                 f"{sum(c.policy_hash != new.policy_hash for c in after_done)} of "
                 f"{len(after_done)} did not")
    result.check("every new pod served calls", len(served_by_new) == new.replicas
                 and all(v > 0 for v in served_by_new.values()), str(served_by_new))
    result.plot = _timeline(calls, report.started, events, (old.policy_hash, new.policy_hash))
    return result.finish()


# --- 2 and 3. SIGTERM and SIGKILL of one replica ---------------------------------------
def _replica_fault(env: FaultEnv, signum: int) -> ScenarioResult:
    profile = env.profile
    rendered = env.rendered(1)
    name = signal.Signals(signum).name
    key = name.lower()
    result = ScenarioResult(key, f"{name} of one replica under load", profile.name)
    workdir = env.dir(key)
    with FilterCluster(workdir, rendered) as cluster:
        cluster.scale_up(rendered.replicas)
        load = _load(env, cluster, workdir, [f"inf:{profile.rate}"])
        try:
            time.sleep(profile.before)
            victim = cluster.pods[1]
            fault_at = time.monotonic()
            if signum == signal.SIGKILL:
                victim.kill_container()
            else:
                victim.signal_main(signum)
            grace = float(rendered.arg("--drain-seconds")) + \
                float(rendered.arg("--grace-seconds")) + 30
            exited_at = _wait(lambda: victim.exits, grace, f"{victim.name} to exit")
            ready_at = _wait(lambda: victim.ready and victim.restarts, 120,
                             f"{victim.name} to be restarted and ready")
            traffic_at = _wait(lambda: _served(victim) > 0, 120,
                               f"{victim.name} to receive calls again", interval=0.1)
            time.sleep(profile.after)
        finally:
            calls = load.stop()
        events = [(e.at, f"{e.what}") for e in cluster.events
                  if e.pod == victim.name and e.at >= fault_at]
        exit_code = victim.exits[0][1]

    before = between(calls.calls, calls.t0, fault_at)
    baseline = latency_summary(before)
    # "Disturbed": failed, or slower than twice the p99 before the fault (at least 100 ms,
    # at most 1 s: on a busy shared machine the p99 itself can be a few hundred ms).
    threshold = min(1.0, max(0.1, 2 * baseline["p99"]))
    window = disturbance(calls.calls, fault_at, threshold)
    _common_figures(result, calls)
    _latency_figures(result, "before the fault", before)
    _latency_figures(result, "first 2 s after the fault", between(calls.calls, fault_at,
                                                                  fault_at + 2))
    result.figure(f"error/latency window (calls failed or over {ms(threshold)})",
                  f"{window.seconds:.2f} s, {window.disturbed} calls disturbed, "
                  f"{window.failed} failed, slowest {ms(window.worst)}")
    result.figure("exit", f"code {exit_code}, {exited_at - fault_at:.2f} s after {name}")
    result.figure("restarted and ready after", f"{ready_at - fault_at:.2f} s")
    result.figure("receiving calls again after", f"{traffic_at - fault_at:.2f} s")
    result.check("0 failed calls", not calls.failed(),
                 f"{len(calls.failed())} failed: {codes(calls.failed())}")
    if signum == signal.SIGTERM:
        result.check("the replica drained and exited 0", exit_code == 0, f"code {exit_code}")
    else:
        result.check("the replica died of SIGKILL", exit_code == -signal.SIGKILL,
                     f"code {exit_code}")
        # The target is < 1 s; on a shared 2-core machine only a generous bound is asserted.
        result.check("error/latency window under 5 s (target < 1 s)", window.seconds < 5.0,
                     f"{window.seconds:.2f} s")
        result.figure("target < 1 s", "met" if window.seconds < 1.0 else "NOT met")
    result.check("the replica restarted and received calls again", traffic_at > ready_at - 1)
    result.plot = _timeline(calls, fault_at, events)
    return result.finish()


def sigterm(env: FaultEnv) -> ScenarioResult:
    return _replica_fault(env, signal.SIGTERM)


def sigkill(env: FaultEnv) -> ScenarioResult:
    return _replica_fault(env, signal.SIGKILL)


# --- 4. surge -----------------------------------------------------------------------------
def _hpa_desired(current: int, value: float, target: float, bounds: tuple[int, int]) -> int:
    """The HPA's replica calculation for one metric (with its 10% tolerance)."""
    ratio = value / target if target else 0.0
    if abs(ratio - 1.0) <= 0.1:
        return current
    return max(bounds[0], min(bounds[1], math.ceil(current * ratio)))


def surge(env: FaultEnv) -> ScenarioResult:
    profile = env.profile
    rendered = env.rendered(1)
    result = ScenarioResult("surge", "Surge ×5, then beyond capacity", profile.name)
    workdir = env.dir("surge")
    base, surged = profile.rate, profile.rate * profile.surge_factor
    # Beyond capacity: large (512 KiB) messages, tens of milliseconds of server CPU each, at
    # a rate no 2-core machine keeps up with — a deterministic overload whatever else runs
    # here, from a load generator that stays cheap.
    # No call waits past its deadline, so what the overload left queued is gone one deadline
    # after it ends (how long that takes within it depends on how far the server's estimate
    # of the queued work is off); the recovery lasts long enough to show SETTLED_SECONDS of
    # clean load after that.
    recovery_seconds = max(profile.after, profile.deadline + SETTLED_SECONDS)
    plan = [("steady", profile.before, base), ("surge ×5", profile.surge_seconds, surged),
            ("steady again", profile.before, base),
            ("beyond capacity", profile.overload_seconds, profile.overload_rate),
            ("recovery", recovery_seconds, base)]
    targets = rendered.hpa_targets()
    owner_replicas = rendered.owner["spec"]["replicas"]
    bounds = (owner_replicas["min"], owner_replicas["max"])
    with FilterCluster(workdir, rendered) as cluster:
        pods = cluster.scale_up(rendered.replicas)
        sampler = Sampler(cluster, interval=1.0)
        first = sampler.take()
        sampler.start()
        load = _load(env, cluster, workdir,
                     [f"{seconds:g}:{rate:g}" + (":heavy" if label == "beyond capacity" else "")
                      for label, seconds, rate in plan], threads=512)
        total = sum(seconds for _, seconds, _ in plan)
        calls = load.wait(total + 120)
        time.sleep(1.0)
        samples = sampler.stop()
        last = sampler.take()
        alive = all(p.process.poll() is None and not p.restarts for p in pods)
        unready = sum(1 for e in cluster.events if e.what == "unready")

    t = calls.t0
    phases = []
    for label, seconds, rate in plan:
        phases.append((label, t, t + seconds, rate))
        t += seconds
    below = [c for label, start, end, _ in phases
             if label not in ("beyond capacity", "recovery")
             for c in between(calls.calls, start, end)]
    # After the overload the queues drain first; from one deadline after it on, every call
    # must succeed again.
    recovery = next(p for p in phases if p[0] == "recovery")
    settled = between(calls.calls, recovery[1] + profile.deadline, recovery[2])
    aftermath = [c for c in between(calls.calls, recovery[1], recovery[2]) if not c.ok]
    result.figure("errors after the overload ended (queues draining)",
                  f"{len(aftermath)}, the last {max((c.due for c in aftermath), default=recovery[1]) - recovery[1]:.1f} s in")
    over_phase = next(p for p in phases if p[0] == "beyond capacity")
    over = between(calls.calls, over_phase[1], over_phase[2])
    result.figure("overload backlog answered (last overload call's answer after it ended)",
                  f"{max((c.end for c in over), default=over_phase[2]) - over_phase[2]:.1f} s")

    _common_figures(result, calls)
    result.figure("per-call deadline", f"{profile.deadline:g} s")
    for label, start, end, rate in phases:
        group = between(calls.calls, start, end)
        summary = latency_summary(group)
        ok_rate = sum(c.ok for c in group) / (end - start)
        large = " (512 KiB messages)" if label == "beyond capacity" else ""
        result.figure(f"{label}: offered / answered OK",
                      f"{rate:g}/s{large} / {ok_rate:.0f}/s, codes {codes(group)}")
        result.figure(f"{label}: latency p50 / p95 / p99 / max",
                      f"{ms(summary['p50'])} / {ms(summary['p95'])} / {ms(summary['p99'])} / "
                      f"{ms(summary['max'])}")

    # The HPA's signals per phase: CPU from /proc against the rendered request, and the
    # requests/s per pod a metrics adapter would compute from the exported counter.
    request = rendered.cpu_request_cores
    by_pod: dict[str, list] = {}
    for sample in samples:
        by_pod.setdefault(sample.pod, []).append(sample)
    hpa_rows = []
    for label, start, end, _ in phases:
        cpu_rates, exported_rates, rps = [], [], []
        for series in by_pod.values():
            inside = [s for s in series if start <= s.at <= end + 0.5]
            if len(inside) < 2:
                continue
            span = inside[-1].at - inside[0].at
            cpu_rates.append((inside[-1].proc_cpu - inside[0].proc_cpu) / span)
            exported_rates.append((inside[-1].exported_cpu - inside[0].exported_cpu) / span)
            rps.append((inside[-1].requests_all - inside[0].requests_all) / span)
        if not cpu_rates:
            continue
        utilization = 100 * sum(cpu_rates) / len(cpu_rates) / request
        rps_avg = sum(rps) / len(rps)
        want_cpu = _hpa_desired(len(cpu_rates), utilization, targets["cpu_utilization"], bounds)
        want_rps = _hpa_desired(len(rps), rps_avg, targets.get("rps_per_pod", math.inf), bounds)
        hpa_rows.append((label, utilization, rps_avg, want_cpu, want_rps, cpu_rates,
                         exported_rates))
        result.figure(f"{label}: HPA signals per pod",
                      f"CPU {utilization:.0f}% of {request * 1000:.0f}m (target "
                      f"{targets['cpu_utilization']:g}%) → {want_cpu} replicas; "
                      f"{rps_avg:.0f} req/s (target {targets.get('rps_per_pod', 0):g}) → "
                      f"{want_rps} replicas")

    # Exported counters against what the client saw, over the whole run.
    ok_client = sum(c.ok for c in calls.calls)
    exhausted_client = sum(c.code == "RESOURCE_EXHAUSTED" for c in calls.calls)
    first_by_pod = {s.pod: s for s in first}
    last_by_pod = {s.pod: s for s in last}
    ok_exported = sum(last_by_pod[p].requests_ok - first_by_pod[p].requests_ok
                      for p in last_by_pod)
    rejected_exported = sum(last_by_pod[p].rejected - first_by_pod[p].rejected
                            for p in last_by_pod)
    shares = {p: (last_by_pod[p].requests_all - first_by_pod[p].requests_all)
              for p in last_by_pod}
    total_served = sum(shares.values()) or 1
    cpu_pairs = [(last_by_pod[p].exported_cpu - first_by_pod[p].exported_cpu,
                  last_by_pod[p].proc_cpu - first_by_pod[p].proc_cpu) for p in last_by_pod]
    result.figure("OK calls: client / exported (Σ pods)", f"{ok_client} / {ok_exported:.0f}")
    result.figure("RESOURCE_EXHAUSTED: client / exported capacity rejections",
                  f"{exhausted_client} / {rejected_exported:.0f}")
    result.figure("RESOURCE_EXHAUSTED details", dict(Counter(
        re.sub(r"\d+(\.\d+)?", "N", c.policy_hash) for c in calls.calls
        if c.code == "RESOURCE_EXHAUSTED")))
    result.figure("readiness lost during the run (probe failures)", unready)
    result.figure("calls per pod (share)", ", ".join(
        f"{v / total_served * 100:.0f}%" for v in shares.values()))
    result.figure("CPU seconds per pod: exported / /proc", ", ".join(
        f"{e:.1f} / {p:.1f}" for e, p in cpu_pairs))

    over_answers = codes(over)
    over_ok_rate = sum(c.ok for c in over) / profile.overload_seconds
    slowest = max((c.end - c.start for c in calls.calls), default=0.0)
    result.figure("slowest call (start → answer)", ms(slowest))
    result.check("no errors below capacity (steady, surge ×5, steady again)",
                 all(c.ok for c in below), f"codes {codes(below)}")
    result.check(f"clean again once the queues drained (recovery from {profile.deadline:g} s, "
                 "one deadline, after the overload)",
                 bool(settled) and all(c.ok for c in settled), f"codes {codes(settled)}")
    # A hang is calls waiting out their deadlines wholesale (before the server fix: a
    # third of them). On a shared machine a CPU-steal spike can still push the odd
    # admitted call past its deadline, so this allows 1% and reports the exact count.
    timed_out = over_answers.get("DEADLINE_EXCEEDED", 0)
    result.check("beyond capacity: OK or RESOURCE_EXHAUSTED, never a hang "
                 "(DEADLINE_EXCEEDED ≤ 1%)",
                 set(over_answers) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
                 and timed_out <= 0.01 * len(over), f"codes {over_answers}")
    result.check("beyond capacity was reached (RESOURCE_EXHAUSTED answered)",
                 over_answers.get("RESOURCE_EXHAUSTED", 0) > 0,
                 f"offered {profile.overload_rate:g}/s, {over_ok_rate:.0f}/s answered OK")
    rejections = [c.end - c.start for c in over if c.code == "RESOURCE_EXHAUSTED"]
    result.figure("RESOURCE_EXHAUSTED answered after (p50 / max)",
                  f"{ms(percentile(rejections, 50))} / {ms(max(rejections, default=math.nan))}")
    # Every OK the client got is counted; the server may count a few more: calls it
    # finished after the client had given up on them (DEADLINE_EXCEEDED at the client).
    gave_up = sum(c.code == "DEADLINE_EXCEEDED" for c in calls.calls)
    result.check("exported OK count matches the client's",
                 ok_client <= ok_exported <= ok_client + gave_up,
                 f"client {ok_client}, exported {ok_exported:.0f}, client gave up on {gave_up}")
    result.check("exported CPU seconds match /proc (±10%)", all(
        abs(e - p) <= max(0.1, 0.1 * p) for e, p in cpu_pairs), str(cpu_pairs))
    offered = {label: rate for label, _, _, rate in phases}
    rows = {row[0]: row for row in hpa_rows}
    rps_ok = all(label in rows and abs(rows[label][2] * rendered.replicas - offered[label])
                 <= 0.15 * offered[label] for label in ("steady", "surge ×5"))
    result.check("requests/s per pod from the exported counter match the offered load (±15%)",
                 rps_ok, ", ".join(f"{label}: {rows[label][2]:.0f}/pod vs "
                                   f"{offered[label] / rendered.replicas:.0f}"
                                   for label in ("steady", "surge ×5") if label in rows))
    result.check("the HPA would add replicas for the surge (requests/s signal)",
                 "surge ×5" in rows and rows["surge ×5"][4] > rendered.replicas,
                 f"{rows['surge ×5'][4] if 'surge ×5' in rows else '?'} replicas")
    result.check("round robin spreads calls (each pod 20–47%)", all(
        0.20 <= v / total_served <= 0.47 for v in shares.values()), str(shares))
    result.check("no replica died or restarted", alive)
    series = bins(calls.calls, 1.0, calls.t0)
    result.plot = {"t": [b.start - calls.t0 for b in series], "p50": [b.p50 for b in series],
                   "p99": [b.p99 for b in series], "max": [b.max for b in series],
                   "error_rate": [b.error_rate for b in series],
                   "calls": [b.calls for b in series],
                   "phases": [(label, s - calls.t0, e - calls.t0) for label, s, e, _ in phases]}
    return result.finish()


# --- 6. bad input barrage -----------------------------------------------------------------
def barrage(env: FaultEnv) -> ScenarioResult:
    profile = env.profile
    rendered = env.rendered(1)
    result = ScenarioResult("barrage", "Bad input barrage", profile.name)
    workdir = env.dir("barrage")
    max_bytes = int(rendered.arg("--max-message-bytes")) if "--max-message-bytes" in \
        rendered.container["args"] else 25 * 1024 * 1024
    limit = rendered.memory_limit_bytes
    with FilterCluster(workdir, rendered) as cluster:
        pods = cluster.scale_up(rendered.replicas)
        pids = {p.name: p.pid for p in pods}
        sampler = Sampler(cluster, interval=0.5, metrics=False)
        warm = sampler.take()
        sampler.start()
        load = LoadGen(workdir, cluster.target, barrage=profile.barrage,
                       concurrency=profile.barrage_concurrency, seed=20261123,
                       deadline=profile.barrage_deadline).start()
        # A generous ceiling: the barrage itself reports how long it took.
        calls = load.wait(max(600.0, profile.barrage * 0.05))
        samples = sampler.stop()
        health = {p.name: probe_health(p.address, 5) for p in pods}
        for pod in pods:
            if health[pod.name] != "SERVING":  # explain it while the pod is still stuck
                print(f"\n{pod.name} answered the health probe with {health[pod.name]}; "
                      f"its stacks:\n{pod.stacks()}\nthe end of its log:\n"
                      f"{pod.log_tail(40)}\n", flush=True)
        restarts = {p.name: p.restarts for p in pods}
        same_pids = all(p.pid == pids[p.name] and p.process.poll() is None for p in pods)
        from mailwarden.client import FilterClient
        sample_message = next(iter(sorted(env.message_dirs[0].iterdir()))).read_bytes()
        with FilterClient(cluster.target, deadline=10) as client:
            after = [client.classify(sample_message).policy_hash for _ in range(6)]

    by_kind: dict[str, list[Call]] = {}
    for call in calls.calls:
        by_kind.setdefault(call.kind, []).append(call)
    unanswered = [c for c in calls.calls if c.code in
                  ("DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL")]
    wrong = [c for c in calls.calls if c.code not in ("OK",) and not (
        (c.code == "INVALID_ARGUMENT" and c.size == 0)
        or (c.code == "RESOURCE_EXHAUSTED" and c.size > max_bytes))]
    rss_by_pod: dict[str, list[int]] = {}
    for sample in samples:
        rss_by_pod.setdefault(sample.pod, []).append(sample.rss)
    start_rss = {s.pod: s.rss for s in warm}
    peak = max((max(v) for v in rss_by_pod.values()), default=0)
    end_rss = {p: v[-1] for p, v in rss_by_pod.items()}
    duration = max(c.end for c in calls.calls) - min(c.start for c in calls.calls)
    mib = 1024 * 1024

    result.figure("messages", len(calls.calls))
    result.figure("throughput", f"{len(calls.calls) / duration:.0f} messages/s "
                  f"({profile.barrage_concurrency} concurrent callers)")
    result.figure("answers by code", dict(Counter(c.code for c in calls.calls)))
    result.figure("bytes sent", f"{sum(c.size for c in calls.calls) / mib:.0f} MiB")
    for kind in sorted(by_kind):
        group = by_kind[kind]
        latencies = [c.end - c.start for c in group]
        result.figure(f"{kind}: n / p50 / p99 / max", f"{len(group)} / "
                      f"{ms(percentile(latencies, 50))} / {ms(percentile(latencies, 99))} / "
                      f"{ms(max(latencies))}")
    result.figure("RSS per pod: start → peak → end (MiB)", ", ".join(
        f"{start_rss.get(p, 0) / mib:.0f} → {max(v) / mib:.0f} → {end_rss[p] / mib:.0f}"
        for p, v in rss_by_pod.items()))
    result.figure("memory limit (rendered)", f"{limit / mib:.0f} MiB")
    result.figure("load generator CPU", f"{calls.cpu_fraction * 100:.1f}% of one core")

    result.check(f"at least {profile.barrage} messages sent", len(calls.calls) >= profile.barrage,
                 f"{len(calls.calls)}")
    result.check("every call answered (no deadline, unavailable, internal or unknown)",
                 not unanswered, f"{len(unanswered)}: "
                 f"{Counter((c.kind, c.code) for c in unanswered).most_common(5)}")
    result.check("only OK, INVALID_ARGUMENT for empty and RESOURCE_EXHAUSTED for "
                 f"over {max_bytes} bytes", not wrong,
                 f"{Counter((c.kind, c.code) for c in wrong).most_common(5)}")
    result.check("servers stayed up (same processes, no restarts, SERVING)",
                 same_pids and not any(restarts.values())
                 and all(h == "SERVING" for h in health.values()),
                 f"restarts {restarts}, health {health}")
    result.check("RSS stayed under the rendered memory limit", peak < limit,
                 f"peak {peak / mib:.0f} MiB")
    # Bounded, not leaking: the last third of the barrage must not lift any pod's peak by
    # more than a tenth of the limit over the peak of the first two thirds.
    cut = samples[0].at + (samples[-1].at - samples[0].at) * 2 / 3 if samples else 0
    rises = {}
    for pod, _ in rss_by_pod.items():
        early = [s.rss for s in samples if s.pod == pod and s.at <= cut]
        late = [s.rss for s in samples if s.pod == pod and s.at > cut]
        if early and late:
            rises[pod] = max(late) - max(early)
    result.figure("RSS peak rise in the last third of the barrage", ", ".join(
        f"{v / mib:+.0f} MiB" for v in rises.values()))
    if profile.barrage >= 20_000:  # a few thousand messages are too few to see a plateau
        result.check("RSS plateaus (last third lifts no peak by more than 10% of the limit)",
                     all(v <= 0.1 * limit for v in rises.values()),
                     ", ".join(f"{v / mib:+.0f} MiB" for v in rises.values()))
    result.check("normal mail still classified afterwards",
                 after and all(h == rendered.policy_hash for h in after))
    return result.finish()


# --- 7. burst of large messages -----------------------------------------------------------
def large_burst(env: FaultEnv) -> ScenarioResult:
    """Waves of large messages at once (a report with a 16 MiB attachment sent to a list)
    beside the steady load of ordinary mail. Before the memory budget every replica
    received every call's message at once and held it while it waited: about 1 GB per
    replica, an OOM kill in the rendered 512 MiB pod, then the retries kill the next one."""
    profile = env.profile
    rendered = env.rendered(1)
    result = ScenarioResult("large_burst", "Burst of large messages", profile.name)
    workdir = env.dir("large_burst")
    limit = rendered.memory_limit_bytes
    mib = 1024 * 1024
    with FilterCluster(workdir, rendered) as cluster:
        pods = cluster.scale_up(rendered.replicas)
        pids = {p.name: p.pid for p in pods}
        sampler = Sampler(cluster, interval=0.05, metrics=False)
        warm = {s.pod: s.rss for s in sampler.take()}
        sampler.start()
        steady = _load(env, cluster, workdir, [f"inf:{profile.rate:g}"])
        burst = LoadGen(workdir, cluster.target, deadline=profile.burst_deadline,
                        bursts=profile.burst_waves, concurrency=profile.burst_concurrency,
                        burst_mib=profile.burst_mib, name="burst").start()
        large = burst.wait(max(600.0, profile.burst_waves * 60.0))
        small = steady.stop()
        samples = sampler.stop()
        budgets = {p.name: metric_sum(scrape(p.metrics_address),
                                      "mailwarden_filter_memory_budget_bytes") for p in pods}
        health = {p.name: probe_health(p.address, 5) for p in pods}
        restarts = {p.name: p.restarts for p in pods}
        same_pids = all(p.pid == pids[p.name] and p.process.poll() is None for p in pods)
        from mailwarden.client import FilterClient
        sample_message = next(iter(sorted(env.message_dirs[0].iterdir()))).read_bytes()
        with FilterClient(cluster.target, deadline=10) as client:
            after = [client.classify(sample_message).policy_hash for _ in range(6)]

    peaks: dict[str, int] = {}
    for sample in samples:
        peaks[sample.pod] = max(peaks.get(sample.pod, 0), sample.rss)
    large_codes = Counter(c.code for c in large.calls)
    small_codes = Counter(c.code for c in small.calls)
    answered = [c for c in large.calls if c.ok]
    result.figure("bursts", f"{profile.burst_waves} waves of {profile.burst_concurrency} "
                  f"calls at once, {large.calls[0].size / mib:.0f} MiB each, "
                  f"{profile.burst_deadline:g} s deadline" if large.calls else "none")
    result.figure("large messages: answers by code", dict(large_codes))
    if answered:
        _latency_figures(result, "large messages answered", answered)
    result.figure("ordinary mail beside them: answers by code", dict(small_codes))
    small_ok = [c for c in small.calls if c.ok]
    if small_ok:
        _latency_figures(result, "ordinary mail answered", small_ok)
    result.figure("RSS per pod: start → peak (MiB)", ", ".join(
        f"{warm.get(p, 0) / mib:.0f} → {v / mib:.0f}" for p, v in sorted(peaks.items())))
    result.figure("memory limit (rendered) / budget per pod (MiB)",
                  f"{limit / mib:.0f} / " + ", ".join(f"{v / mib:.0f}" for _, v in
                                                      sorted(budgets.items())))
    result.figure("load generator CPU (bursts)", f"{large.cpu_fraction * 100:.1f}% of one core")

    result.check("RSS stayed under the rendered memory limit on every pod",
                 peaks and max(peaks.values()) < limit,
                 f"peak {max(peaks.values(), default=0) / mib:.0f} MiB")
    result.check("servers stayed up (same processes, no restarts, SERVING)",
                 same_pids and not any(restarts.values())
                 and all(h == "SERVING" for h in health.values()),
                 f"restarts {restarts}, health {health}")
    result.check("large messages: only OK or RESOURCE_EXHAUSTED (never a hang)",
                 set(large_codes) <= {"OK", "RESOURCE_EXHAUSTED"}, f"{dict(large_codes)}")
    result.check("some large messages answered OK", large_codes["OK"] > 0,
                 f"{dict(large_codes)}")
    result.check("ordinary mail: only OK or RESOURCE_EXHAUSTED (never a hang)",
                 set(small_codes) <= {"OK", "RESOURCE_EXHAUSTED"}, f"{dict(small_codes)}")
    result.check("normal mail still classified afterwards",
                 after and all(h == rendered.policy_hash for h in after))
    return result.finish()
