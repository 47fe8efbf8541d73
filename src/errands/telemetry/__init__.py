"""OpenTelemetry traces and metrics of errands; a cheap no-op without ``opentelemetry-api``.

errands never configures OpenTelemetry: it uses the global tracer and meter
providers, so spans and metrics go wherever the application's SDK sends them
(and nowhere when it has none). Names and attributes follow the messaging
semantic conventions; the full list is in the README, "Monitoring".

Where each signal is made:

* enqueue (any process): a PRODUCER span ``send {queue}`` around deciding and
  inserting, whose ids every inserted request stores (:func:`sending`). The sent
  counter and the send duration are recorded once the requests are committed
  (:func:`counting_sends`).
* job process (a worker's child): a CONSUMER span ``process {queue}`` linked to
  the send span (:func:`processing`).
* worker parent: the consumed counter, process duration and queue wait of every
  result it writes (:func:`record_results`), and observable gauges computed from
  cached stats (:func:`register_worker_gauges`).
"""

from errands.telemetry.commits import counting_sends, flush_pending_sends, waiting
from errands.telemetry.conventions import ENABLED
from errands.telemetry.processing import processing, tracing_wanted
from errands.telemetry.sends import Sending, sending
from errands.telemetry.worker_metrics import (
    record_expired,
    record_results,
    register_worker_gauges,
    results_measured,
)

__all__ = [
    "ENABLED",
    "Sending",
    "counting_sends",
    "flush_pending_sends",
    "processing",
    "record_expired",
    "record_results",
    "register_worker_gauges",
    "results_measured",
    "sending",
    "tracing_wanted",
    "waiting",
]
