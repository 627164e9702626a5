"""OpenTelemetry traces (docs/operations.md#traces): on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
set, off and free otherwise.

One publish is one trace: ``publish`` (the HTTP request's work), ``store.commit``
and ``broker.publish`` inside it; the broker message carries the W3C
``traceparent`` of ``broker.publish``, so the ``deliver`` span on whichever node
holds the user's streams is its child, with one ``device.write`` per stream
(handing the frame to the connection's coalescing writer, which writes it to
the socket in the same loop tick).  Each outbound send (webhook, push, e-mail)
is an ``outbound.attempt`` span of its own: the job was queued in the publish's
transaction and runs later, so it carries the notification id, not the trace.

Off, ``TRACER`` is None: the hot paths test ``msg.trace`` (an empty string) or
``TRACER is None`` and do nothing else, and no OpenTelemetry module is imported.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

TRACER: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None
_NOOP = contextlib.nullcontext()


def wanted() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(node: str) -> None:
    """Turn tracing on for this process when the environment asks for it.

    The exporter is OTLP over HTTP (protobuf); the standard ``OTEL_*``
    variables (endpoint, headers, ``OTEL_SERVICE_NAME``, ``OTEL_BSP_*``) apply."""
    global TRACER, _provider
    if TRACER is not None or not wanted():
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise RuntimeError("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is "
                           "not installed: pip install 'tidings[otel]'") from None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tidings"),
                                "service.instance.id": node})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)


def use(provider: Any) -> None:
    """Trace to ``provider`` (an SDK TracerProvider; tests give one with an
    in-memory exporter); None turns tracing off."""
    global TRACER, _provider
    _provider = provider
    TRACER = None if provider is None else provider.get_tracer("tidings")


def shutdown() -> None:
    """Export what is still buffered (at the node's shutdown)."""
    if _provider is not None:
        _provider.force_flush(5000)


def span(name: str, attributes: dict | None = None, context: Any = None):
    """A span as a context manager, or a no-op one (yielding None) when off."""
    if TRACER is None:
        return _NOOP
    return TRACER.start_as_current_span(name, context=context, attributes=attributes)


def traceparent() -> str:
    """The current span as a W3C traceparent ("" when off or outside a span)."""
    if TRACER is None:
        return ""
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent", "")


def remote(parent: str) -> Any:
    """The context of a traceparent that came through the broker."""
    from opentelemetry.propagate import extract

    return extract({"traceparent": parent})


def deliver(parent: str, app: str, kind: str, streams, write) -> None:
    """``write(stream)`` for every stream, inside a ``deliver`` span that
    continues the publisher's trace and one ``device.write`` span per stream."""
    if TRACER is None:
        for s in streams:
            write(s)
        return
    attrs = {"tidings.app": app, "tidings.message": kind, "tidings.streams": len(streams)}
    with TRACER.start_as_current_span("deliver", context=remote(parent), attributes=attrs):
        for s in streams:
            with TRACER.start_as_current_span("device.write", attributes={
                    "tidings.user": getattr(s, "user", ""),
                    "tidings.transport": type(s).__name__}):
                write(s)
