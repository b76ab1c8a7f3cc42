"""Prometheus without a collector: idempo's metrics on a ``/metrics`` endpoint of your app.

    from idempo.prometheus import metrics_app
    app.mount("/metrics", metrics_app())            # Starlette, FastAPI (ASGI)

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": metrics_wsgi_app()})  # Flask

``pip install 'idempo[prometheus]'``. The OpenTelemetry Prometheus exporter does the work: this
installs an SDK ``MeterProvider`` with a ``PrometheusMetricReader`` as the global one, if the
application has none yet, and serves ``prometheus_client``'s registry. Names follow the
exporter's translation: ``idempo.operations`` is ``idempo_operations_total`` with labels
``idempo_kind``, ``idempo_outcome``, ``idempo_store``; ``idempo.store.duration`` is the
``idempo_store_duration_seconds`` histogram.
"""

from __future__ import annotations

import threading
from typing import Any

try:
    import prometheus_client
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"idempo.prometheus needs the Prometheus exporter ({exc.name} is missing): "
        "pip install 'idempo[prometheus]'"
    ) from exc

from idempo import observe

__all__ = ["install", "metrics_app", "metrics_wsgi_app"]

_lock = threading.Lock()
_installed = False


def install() -> None:
    """Make the Prometheus reader the global meter provider's (once; later calls do nothing).

    If the application already configured an SDK ``MeterProvider``, a reader cannot be added
    to it afterwards: pass ``PrometheusMetricReader()`` in its ``metric_readers`` instead.
    """
    global _installed
    with _lock:
        if _installed:
            return
        current = metrics.get_meter_provider()
        if type(current).__name__ != "_ProxyMeterProvider":
            raise RuntimeError(
                "a MeterProvider is already configured; add "
                "opentelemetry.exporter.prometheus.PrometheusMetricReader() to its "
                "metric_readers, and serve prometheus_client.make_asgi_app() yourself"
            )
        metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
        observe.refresh()
        _installed = True


def metrics_app() -> Any:
    """An ASGI app answering Prometheus scrapes (mount it at ``/metrics``)."""
    install()
    return prometheus_client.make_asgi_app()


def metrics_wsgi_app() -> Any:
    """A WSGI app answering Prometheus scrapes."""
    install()
    return prometheus_client.make_wsgi_app()
