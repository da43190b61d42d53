"""The Open Inference Protocol over gRPC (`clipscan serve --grpc-port`): KServe v2's
`inference.GRPCInferenceService` as Triton serves it (ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata, ModelInfer, Triton's ModelConfig and RepositoryIndex), so `tritonclient.grpc` and
perf_analyzer drive it. Other methods of the service answer UNIMPLEMENTED.

It runs on the same event loop as the HTTP service (grpc.aio) and shares everything with it: the ServiceState
(one model, one batcher, one queue), the limits (serve/limits.py says how each applies here), the bearer
token (metadata `authorization: Bearer <token>`; the three health methods stay open, as over HTTP), the
metrics (endpoint label `/inference.GRPCInferenceService/<Method>`, status label the gRPC code) and the
inference path of routes_v2 (request checks, outputs, metadata and configuration answers). Errors carry the
gRPC code Triton uses for the same mistake; an image that cannot be read stays an error of its own in the
`error` output, as over HTTP."""
from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc

from clipscan.runtime.contract import on_the_wire, results_to_tensors
from clipscan.runtime.errors import InvalidArgumentError
from clipscan.runtime.v2_wire import WireError, WireTooLarge

from . import grpc_messages as msg
from . import routes_v2
from .auth import authorized
from .errors import HTTPError

log = logging.getLogger("clipscan.serve")
pb = msg.pb

# the service's error statuses (HTTPError.status) as gRPC codes, as Triton maps the same mistakes
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
HEALTH = ("ServerLive", "ServerReady", "ModelReady")  # answered without the token and past --max-in-flight


def _token_ok(state, context) -> bool:
    if state.token is None:
        return True
    header = dict(context.invocation_metadata() or ()).get("authorization")
    return authorized(header.encode("utf-8") if isinstance(header, str) else header, state.token)


class InferenceService:
    """The methods, each `async (request, context) -> response`, raising HTTPError for the client's mistakes."""

    def __init__(self, state):
        self.state = state

    def _model(self, context, name: str, version: str):
        return routes_v2.check_model(self.state, name, version, _token_ok(self.state, context))

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request, context):
        state, _, _ = self._model(context, request.name, request.version)
        return pb.ModelReadyResponse(ready=state.ready)

    async def ServerMetadata(self, request, context):
        return msg.server_metadata(routes_v2.server_metadata_dict())

    async def ModelMetadata(self, request, context):
        return msg.model_metadata(routes_v2.model_metadata_dict(*self._model(context, request.name,
                                                                             request.version)))

    async def ModelConfig(self, request, context):
        state, name, _ = self._model(context, request.name, request.version)
        return msg.model_config(routes_v2.model_config(state, name))

    async def RepositoryIndex(self, request, context):
        state = self.state
        if request.ready and not state.ready:
            return pb.RepositoryIndexResponse()
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(
            name=name, version=routes_v2.VERSION, state="READY" if state.ready else "UNAVAILABLE")
            for name in state.models])

    async def ModelInfer(self, request, context):
        state, name, inputs = self._model(context, request.model_name, request.model_version)
        lim = state.limits
        size = request.ByteSize()
        if state.buffered + size > lim.max_buffered_bytes:
            raise HTTPError(503, f"the server holds {state.buffered} bytes of requests and this one ({size} bytes) "
                                 f"would pass its budget of {lim.max_buffered_bytes}; retry shortly",
                            kind="bodies_over_budget")
        state.buffered += size
        try:
            try:
                # off the event loop: other clients (health probes too) are answered while tensors are read
                tensors = await asyncio.get_running_loop().run_in_executor(
                    None, msg.input_tensors, request, routes_v2.max_elements(state))
            except WireTooLarge as e:
                raise HTTPError(413, f"{e}; one request holds at most {lim.max_images} images") from None
            except WireError as e:
                raise HTTPError(400, str(e)) from None
            items = routes_v2.request_items(state, inputs, tensors)
            asked = {"outputs": [{"name": o.name} for o in request.outputs]} if request.outputs else {}
            chosen, _ = routes_v2.requested_outputs(state, asked)
            results = await state.scan(items)
        finally:
            state.buffered -= size
        tensors = results_to_tensors(results, chosen)
        out = {s.name: on_the_wire(tensors[s.name], s) for s in chosen}
        return msg.infer_response(name, routes_v2.VERSION, request.id,
                                  [(s.name, s.datatype, out[s.name]) for s in chosen])


def _guarded(state, name: str, method):
    """`method` behind the in-flight limit, the token, the metrics and the error-to-status mapping."""
    metrics, endpoint = state.metrics, f"/{msg.SERVICE}/{name}"
    health = name in HEALTH

    @functools.wraps(method)
    async def handler(request, context):
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        metrics.in_flight.inc()
        state.active += 1
        done = []

        def finish(code) -> None:
            """Count the call once, before its status goes out (an abort sends it at once: a client that then
            reads /metrics sees its call counted)."""
            if not done:
                done.append(code)
                state.active -= 1
                metrics.in_flight.dec()
                metrics.latency.labels(endpoint, code.name).observe(time.perf_counter() - start)

        try:
            if state.active > state.limits.max_in_flight and not health:
                raise HTTPError(503, f"too many requests at once (the limit is {state.limits.max_in_flight}); "
                                     "retry shortly", kind="too_many_requests")
            if not health and not _token_ok(state, context):
                raise HTTPError(401, "missing or wrong bearer token: send the metadata 'authorization: Bearer "
                                     "<token>'", kind="unauthorized")
            return await method(request, context)
        except HTTPError as e:
            code = CODES.get(e.status, grpc.StatusCode.UNKNOWN)
            metrics.errors.labels(e.kind).inc()
            if e.status >= 500 and e.status not in (503, 504):
                log.error("%s: %s", endpoint, e.message)
            finish(code)
            await context.abort(code, e.message)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:  # noqa: BLE001 -- a bug: logged with its trace, answered INTERNAL
            if isinstance(e, grpc.aio.AbortError):
                raise
            log.exception("unexpected error answering %s", endpoint)
            code = grpc.StatusCode.INTERNAL
            metrics.errors.labels("server_error").inc()
            finish(code)
            await context.abort(code, f"internal error: {type(e).__name__}: {e}")
        finally:
            finish(code)

    return handler


METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
           "RepositoryIndex", "ModelInfer")


def _handlers(state) -> grpc.GenericRpcHandler:
    service = InferenceService(state)
    methods = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    table = {}
    for name in METHODS:
        desc = methods[name]
        request_cls = getattr(pb, desc.input_type.name)
        table[name] = grpc.unary_unary_rpc_method_handler(
            _guarded(state, name, getattr(service, name)), request_deserializer=request_cls.FromString,
            response_serializer=lambda m: m.SerializeToString())
    return grpc.method_handlers_generic_handler(msg.SERVICE, table)


def server_options(limits) -> list[tuple[str, int]]:
    """grpc core's options for `limits` (serve/limits.py's `grpc` texts say what each does here)."""
    return [("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_allowed_incoming_connections", limits.max_open_connections),
            ("grpc.server_handshake_timeout_ms", int(limits.header_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", int(limits.keep_alive_s * 1000)),
            ("grpc.so_reuseport", 0)]


async def start(state, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server for `state` on host:port (0: a free port), on the running event loop, and its port."""
    server = grpc.aio.server(options=server_options(state.limits))
    server.add_generic_rpc_handlers((_handlers(state),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:  # grpc's "Failed to bind": the port was taken since the CLI checked it
        raise InvalidArgumentError(f"cannot listen for gRPC on {address} ({e}); pass a free --grpc-port") from None
    await server.start()
    return server, bound
