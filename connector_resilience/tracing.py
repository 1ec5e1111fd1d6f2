"""OpenTelemetry traces of resilient calls: a span per logical call, a child span per attempt.

Tracing follows OpenTelemetry's model for libraries: the library speaks the API
(``pip install 'connector-resilience[otel]'``), the application installs and
configures the SDK. Once a global ``TracerProvider`` is set (before the first
call of a connector), every ``@resilient`` call and every request through an
HTTP adapter is traced::

    connector.operation                 INTERNAL  the logical call, retries included
      connector.operation attempt       INTERNAL  one per attempt (a decorated function)
      GET                               CLIENT    one per attempt (an HTTP adapter), with
                                                  http.request.resend_count from the 2nd on

Each attempt's span is the current span while the attempt runs, so spans the
function makes (or an instrumented client inside it) are its children, and the
HTTP adapters send that attempt's ``traceparent``. The call span carries a
``retry`` event before each retry (with the wait), the breaker's verdict and
any state change the call caused; a call the breaker refused is a call span
with ``error.type`` ``CircuitOpenError`` and no attempt.

Without opentelemetry-api, or while no SDK provider is set, nothing is traced
and a call pays one ``is None`` check. :func:`instrument` traces with a given
provider (or forces the global one); :func:`uninstrument` turns tracing off.
Exception messages are never recorded (they can carry URLs and secrets): a
failed span says ``error.type`` and the status description says the type.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Generator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Literal

from connector_resilience import _semconv
from connector_resilience._extras import require

if TYPE_CHECKING:
    from connector_resilience.circuit import CircuitBreaker, StateChange

__all__ = ["CallTracer", "call_tracer", "instrument", "reset", "uninstrument"]

#: Attribute names of our own (OpenTelemetry's advice: namespace what is not a convention).
CONNECTOR = "connector_resilience.connector"
OPERATION = "connector_resilience.operation"
ATTEMPT = "connector_resilience.attempt"
ATTEMPTS = "connector_resilience.attempts"
WAIT_S = "connector_resilience.retry.wait_s"
PROBE = "connector_resilience.circuit.probe"
BREAKER_OUTCOME = "connector_resilience.circuit.outcome"
RESEND_COUNT = "http.request.resend_count"

_Mode = Literal["auto", "on", "off"]
_mode: _Mode = "auto"
_provider: Any = None

# The plan's steps, as connector_resilience._engine numbers them.
_CALL, _SLEEP, _REPORT, _SPEND = 0, 1, 2, 3

#: The call span a breaker report is being made for (state changes become its events).
_reporting: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "connector_resilience_reporting", default=None
)


def instrument(*, tracer_provider: Any = None) -> None:
    """Trace every call with ``tracer_provider`` (the global provider if ``None``).

    Takes effect for ``@resilient`` functions at their next call; an HTTP
    adapter created before keeps what it resolved.

    Raises:
        ConfigurationError: opentelemetry-api is not installed (names the ``otel`` extra).
    """
    require("opentelemetry.trace", "otel")
    _set("on", tracer_provider)


def uninstrument() -> None:
    """Trace nothing, even with an SDK provider set (back to the default: :func:`reset`)."""
    _set("off", None)


def reset() -> None:
    """Back to the default: trace when a global SDK provider is set."""
    _set("auto", None)


def _set(mode: _Mode, provider: Any) -> None:
    global _mode, _provider
    _mode, _provider = mode, provider
    from connector_resilience.resilient import forget_engines

    forget_engines()


def call_tracer(
    connector: str, operation: str, *, breaker: CircuitBreaker | None = None
) -> CallTracer | None:
    """What traces one engine's calls, or ``None`` when nothing is to be traced.

    Resolved once per engine (a connector's operation), so an untraced call
    pays one ``is None`` check.
    """
    if _mode == "off":
        return None
    if _mode == "auto" and "opentelemetry.trace" not in sys.modules:
        return None  # an application that set a provider has imported the API
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    if _mode == "auto" and isinstance(
        provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider
    ):
        return None
    from connector_resilience import __version__

    tracer = provider.get_tracer("connector_resilience", __version__)
    if isinstance(tracer, trace.NoOpTracer):  # e.g. OTEL_SDK_DISABLED=true
        return None
    if breaker is not None:
        breaker.add_listener(_note_state_change)  # one listener per breaker, whatever the engines
    return CallTracer(tracer, connector, operation)


def _note_state_change(change: StateChange) -> None:
    span = _reporting.get()
    if span is not None:
        span.add_event(
            "connector_resilience.circuit.state_change",
            {
                "connector_resilience.circuit.from": change.old,
                "connector_resilience.circuit.to": change.new,
                "connector_resilience.circuit.reason": change.reason or "",
            },
        )


class CallTracer:
    """Spans for one connector's operation (made by :func:`call_tracer`).

    Args:
        tracer: an OpenTelemetry tracer.
        connector: the connector's name.
        operation: the operation's name.
    """

    def __init__(self, tracer: Any, connector: str, operation: str) -> None:
        from opentelemetry import context, propagate, trace

        self._context = context
        self._tracer = tracer
        self._trace = trace
        self._inject = propagate.inject
        self.name = f"{connector}.{operation}"
        self._attributes: dict[str, str | int] = {CONNECTOR: connector, OPERATION: operation}

    def trace_plan(
        self,
        steps: Generator[tuple[Any, ...], Any, Any],
        *,
        probe: str | None,
        labels: Mapping[str, str] | None,
        headers: MutableMapping[str, str] | None,
        result_name: Callable[[Any], str],
    ) -> Generator[tuple[Any, ...], Any, Any]:
        """The retry plan ``steps``, each attempt in a span (a plan itself, for the same drivers).

        Args:
            steps: the engine's plan, from its first attempt on.
            probe: the breaker's probe id when the call is a half-open probe.
            labels: the call's labels (HTTP method, host, port).
            headers: the outgoing request's headers, where each attempt's
                trace context is injected (``None``: not an HTTP request).
            result_name: names a result that failed (``error.type`` for a non-HTTP result).
        """
        trace = self._trace
        http = _semconv.http_attributes(labels)
        attributes = {**self._attributes, **http}
        if probe is not None:
            attributes[PROBE] = True
        call = self._tracer.start_span(self.name, attributes=attributes)
        parent = trace.set_span_in_context(call)
        is_http = _semconv.METHOD in http
        attempt_name = str(http[_semconv.METHOD]) if is_http else f"{self.name} attempt"
        kind = trace.SpanKind.CLIENT if is_http else trace.SpanKind.INTERNAL
        attempt = 0
        wait = 0.0
        pending: tuple[Any, Any, int] | None = None  # attempt span, answer, end time
        last_error: str | None = None
        answer: Any = None
        try:
            while True:
                step = steps.send(answer)
                kind_of_step = step[0]
                if kind_of_step == _SPEND:
                    # The retry budget's verdict: the step after it (a wait, a call,
                    # or the final report) says what became of the attempt.
                    answer = yield step
                    continue
                if pending is not None:
                    # What comes after an attempt says whether it failed: a retry, or a
                    # failure reported to the breaker.
                    retried = kind_of_step != _REPORT
                    failed = retried or step[2] == "failure"
                    last_error = self._end_attempt(*pending, failed=failed, result_name=result_name)
                    pending = None
                    if retried:
                        delay = float(step[1]) if kind_of_step == _SLEEP else 0.0
                        call.add_event(
                            "retry",
                            {ATTEMPT: attempt, WAIT_S: delay, **_error(last_error)},
                        )
                if kind_of_step == _CALL:
                    attempt += 1
                    span_attributes: dict[str, Any] = {**http, ATTEMPT: attempt}
                    if attempt > 1:
                        span_attributes[WAIT_S] = wait
                        if is_http:
                            span_attributes[RESEND_COUNT] = attempt - 1
                    span = self._tracer.start_span(
                        attempt_name, context=parent, kind=kind, attributes=span_attributes
                    )
                    token = self._context.attach(trace.set_span_in_context(span))
                    try:
                        if headers is not None:
                            self._inject(headers)
                        answer = yield step
                    finally:
                        self._context.detach(token)
                    pending = (span, answer, time.time_ns())
                    wait = 0.0
                elif kind_of_step == _SLEEP:
                    wait = float(step[1])
                    answer = yield step
                else:
                    call.set_attribute(BREAKER_OUTCOME, step[2])
                    reporting = _reporting.set(call)
                    try:
                        answer = yield step
                    finally:
                        with contextlib.suppress(ValueError):  # closed from another context
                            _reporting.reset(reporting)
        except StopIteration as done:
            call.set_attribute(ATTEMPTS, attempt)
            code = getattr(done.value, "status", None)
            failed_status = _semconv.error_type(code if isinstance(code, int) else None, None)
            if failed_status is not None or last_error is not None:
                _fail(trace, call, failed_status or last_error or "_OTHER")
            call.end()
            return done.value
        except BaseException as exc:
            if pending is not None:
                self._end_attempt(*pending, failed=True, result_name=result_name)
            call.set_attribute(ATTEMPTS, attempt)
            _fail(trace, call, type(exc).__name__)
            call.end()
            # The traceback keeps this frame: without these names, the frame and
            # the exception make no cycle for the garbage collector.
            answer, pending, step = None, None, ()
            raise

    def _end_attempt(
        self,
        span: Any,
        answer: Any,
        end_ns: int,
        *,
        failed: bool,
        result_name: Callable[[Any], str],
    ) -> str | None:
        """End an attempt's span; returns its ``error.type`` (``None`` if it succeeded)."""
        ok, value = answer[0], answer[1]
        code = getattr(value, "status", None) if ok else None
        code = code if isinstance(code, int) else None
        if code is not None:
            span.set_attribute(_semconv.STATUS_CODE, code)
        error = None if ok else type(value).__name__
        if ok and failed and code is None:
            error = result_name(value)
        error = _semconv.error_type(code, error)
        if error is not None:
            _fail(self._trace, span, error)
        span.end(end_time=end_ns)
        return error if failed else None

    def rejected(self, exc: BaseException, labels: Mapping[str, str] | None) -> None:
        """A call the breaker refused: a call span with no attempt."""
        attributes = {**self._attributes, **_semconv.http_attributes(labels), ATTEMPTS: 0}
        span = self._tracer.start_span(self.name, attributes=attributes)
        retry_at = getattr(exc, "retry_at", None)
        span.add_event(
            "connector_resilience.circuit.rejected",
            {"connector_resilience.circuit.retry_at": retry_at}
            if isinstance(retry_at, int | float)
            else {},
        )
        _fail(self._trace, span, type(exc).__name__)
        span.end()


def _error(name: str | None) -> dict[str, str]:
    return {_semconv.ERROR_TYPE: name} if name is not None else {}


def _fail(trace: Any, span: Any, error: str) -> None:
    span.set_attribute(_semconv.ERROR_TYPE, error)
    span.set_status(trace.Status(trace.StatusCode.ERROR, error))
