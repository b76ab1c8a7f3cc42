"""What observability costs: the decorator's time per call without the OpenTelemetry API, with
the API and no SDK (idempo must pay nothing but a cached check), and with an SDK configured.

    .venv/bin/python bench/bench_otel.py [--calls 20000] [--rounds 7]

Each variant runs in a process of its own (the global providers can be set once, and "no API"
means the import is refused), interleaved round by round; the figures are medians, as ratios
to "no API" measured in the same rounds. Memory and SQLite stores: no network, so the
instrumentation is the difference. Loopback only, a bounded number of calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap

VARIANT = textwrap.dedent(
    """
    import json, sys, time, tempfile, os
    variant, store, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if variant == "no-api":
        sys.modules["opentelemetry"] = None       # as if idempo[otel] were not installed
    elif variant == "sdk":
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))  # as in production
        trace.set_tracer_provider(provider)
    from idempo import Idempotency
    url = "memory://"
    if store == "sqlite":
        url = "sqlite:///" + os.path.join(tempfile.mkdtemp(), "b.db")
    idem = Idempotency(url)

    @idem.idempotent(key=lambda k: k)
    def op(k):
        return {"ok": 1}

    for i in range(200):
        op(f"warm-{i}")
    t0 = time.perf_counter()
    for i in range(calls):
        op(f"new-{i}")
    new = (time.perf_counter() - t0) / calls * 1e6
    t0 = time.perf_counter()
    for i in range(calls):
        op(f"new-{i}")
    replay = (time.perf_counter() - t0) / calls * 1e6
    if variant == "sdk":
        exporter.clear()
    print(json.dumps({"new": new, "replay": replay}))
    """
)

VARIANTS = ["no-api", "api-no-sdk", "sdk"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--stores", default="memory,sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory():
        for store in args.stores.split(","):
            calls = args.calls if store == "memory" else max(1000, args.calls // 10)
            results: dict[str, dict[str, list[float]]] = {
                v: {"new": [], "replay": []} for v in VARIANTS
            }
            for _ in range(args.rounds):
                for variant in VARIANTS:
                    out = subprocess.run(
                        [sys.executable, "-c", VARIANT, variant, store, str(calls)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    figures = json.loads(out)
                    for what in ("new", "replay"):
                        results[variant][what].append(figures[what])
            print(f"\n{store} store, {calls} calls x {args.rounds} interleaved rounds (median)")
            print(f"{'variant':<12} {'new key us':>11} {'ratio':>6} {'replay us':>10} {'ratio':>6}")
            base = {w: statistics.median(results["no-api"][w]) for w in ("new", "replay")}
            for variant in VARIANTS:
                new = statistics.median(results[variant]["new"])
                replay = statistics.median(results[variant]["replay"])
                print(
                    f"{variant:<12} {new:>11.2f} {new / base['new']:>6.3f} "
                    f"{replay:>10.2f} {replay / base['replay']:>6.3f}"
                )


if __name__ == "__main__":
    main()
