"""The service's Prometheus metrics (one registry per app): latency and queue-time histograms (histograms,
not summaries, so percentiles aggregate across replicas), batch sizes, inference time, images scanned,
errors by kind, every head's verdicts and generators, in-flight requests, and the model and backend as info gauges."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, model_name: str, sha256: str, backend: str):
        r = self.registry = CollectorRegistry()
        self.latency = Histogram("clipscan_request_seconds", "request latency, by endpoint and status",
                                 ("endpoint", "status"), registry=r, buckets=LATENCY_BUCKETS)
        self.queue_time = Histogram("clipscan_queue_seconds", "time an image waited for its inference batch",
                                    registry=r, buckets=LATENCY_BUCKETS)
        self.batch_size = Histogram("clipscan_batch_size", "images per inference batch", registry=r,
                                    buckets=BATCH_BUCKETS)
        self.inference = Histogram("clipscan_inference_seconds", "time of one inference batch", registry=r,
                                   buckets=LATENCY_BUCKETS)
        self.images = Counter("clipscan_images", "images scanned, by outcome (ok or error)", ("outcome",),
                              registry=r)
        self.errors = Counter("clipscan_errors", "errors by kind (an image's error kind, or an HTTP error)",
                              ("kind",), registry=r)
        # labelled by head: every head's own answer (ScanResult.heads), not only the row's deciding head
        self.verdicts = Counter("clipscan_verdicts", "images scanned, by head and that head's verdict",
                                ("head", "verdict"), registry=r)
        self.generators = Counter("clipscan_generators", "images a head attributes to a generator, by head and "
                                  "generator", ("head", "generator"), registry=r)
        self.in_flight = Gauge("clipscan_in_flight_requests", "requests being answered", registry=r)
        self.queued = Gauge("clipscan_queued_images", "images admitted and not yet answered", registry=r)
        Gauge("clipscan_model_info", "the model served", ("name", "sha256"), registry=r).labels(model_name,
                                                                                              sha256).set(1)
        Gauge("clipscan_backend_info", "the backend that really runs", ("backend",), registry=r).labels(
            backend).set(1)

    def batch(self, images: int, rows: int, seconds: float, waited: list[float]) -> None:
        self.batch_size.observe(images)
        self.inference.observe(seconds)
        for w in waited:
            self.queue_time.observe(w)

    def results(self, results) -> None:
        for r in results:
            if r.error is None:
                self.images.labels("ok").inc()
                for head, answer in (r.heads or {}).items():
                    if answer.get("verdict"):
                        self.verdicts.labels(head, answer["verdict"]).inc()
                    if answer.get("generator"):
                        self.generators.labels(head, answer["generator"]).inc()
            else:
                self.images.labels("error").inc()
                self.errors.labels(r.error_kind).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
