"""Remote backend: a model served by Triton Inference Server, over HTTP or gRPC.

Tensors travel as binary data (the HTTP binary extension, or gRPC), never JSON; with ``shared_memory=True`` they go
through POSIX shared memory instead, for a server on the same host. HTTP inference requests are posted by
:class:`~milsdk.serving.backends.triton_http.HttpInferConnection`, which sends the arrays without copying them
(tritonclient copies a request three times); gRPC, health, configuration and shared-memory calls use tritonclient.
The model's ``ModelInfo`` is read from its Triton config: ``milsdk export --triton`` writes it as the parameter
``milsdk.json``.

tritonclient's clients are not thread-safe (the HTTP one is bound to the thread that made it), so every thread gets
its own client and shared-memory region, reused by that thread's next requests. When a thread ends, its client
and region are released by the next request of any thread (or by :meth:`TritonBackend.close`): a caller that
runs each request on a new thread does not pile up connections and registered regions on the server.

A server started by ``milsdk serve`` puts some APIs (model repository, trace, logging; shared memory when it
serves other hosts) behind a key: every request then carries the header ``milsdk-api-key`` (and its gRPC form),
the key from ``api_key`` or ``$MILSDK_TRITON_API_KEY``.

Faults: a request that fails for want of the server (connection refused, reset or cut short, a timeout, the
model unloaded or not ready) raises :class:`~milsdk.errors.ServerUnavailableError`, which the client retries with
backoff up to its deadline and then reports; the same request is sent again, so a retried batch is answered once.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import weakref
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from milsdk.contract import ATTENTION, FEATURES_CHECK, LOGITS, METADATA_KEY, ModelInfo, input_shape_error
from milsdk.errors import ArtifactError, ServerUnavailableError, ServerURLError, ServingError, first_line
from milsdk.serving.backends.triton_http import KSERVE_DATATYPES, HttpInferConnection
from milsdk.serving.float16_cast import to_float16

__all__ = ["API_KEY_ENV", "API_KEY_HEADER", "TritonBackend", "api_key_headers", "parse_triton_url"]

log = logging.getLogger(__name__)

# Statuses that say "the server is not there right now"; anything else is checked against the health endpoints.
_TRANSIENT_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "502", "503", "504"}
_SHM_ALIGN = 64
_CONTROL_TIMEOUT_S = 10.0
#: header carrying the key of the APIs a milsdk-started server restricts.
API_KEY_HEADER = "milsdk-api-key"
#: environment variable the key is read from when ``api_key`` is not given.
API_KEY_ENV = "MILSDK_TRITON_API_KEY"
_region_ids = itertools.count()


def api_key_headers(api_key: str) -> dict[str, str]:
    """The headers carrying ``api_key``: Triton's gRPC endpoint looks for the restricted-protocol header under
    the prefix ``triton-grpc-protocol-``, its HTTP endpoint for the plain name; both go with every request
    (a header the other protocol does not check is ignored)."""
    return {API_KEY_HEADER: api_key, f"triton-grpc-protocol-{API_KEY_HEADER}": api_key}


def parse_triton_url(url: str, protocol: str = "http") -> tuple[str, str, bool]:
    """Split a server URL into (host:port[/path], protocol, ssl).

    ``http://h:8000``, ``https://h``, ``grpc://h:8001`` and a bare ``h:8000`` (then ``protocol`` decides) are
    accepted; a scheme that contradicts ``protocol`` is an error.

    Raises:
        ServerURLError: an unknown protocol or scheme (``ftp://...``), or a scheme contradicting ``protocol``.
    """
    if protocol not in ("http", "grpc"):
        raise ServerURLError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    if "://" not in url:
        return url.rstrip("/"), protocol, False
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    by_scheme = {"http": ("http", False), "https": ("http", True), "grpc": ("grpc", False), "grpcs": ("grpc", True)}
    if scheme not in by_scheme:
        raise ServerURLError(f"{url}: unsupported URL scheme {scheme!r}, expected http, https, grpc or grpcs")
    proto, ssl = by_scheme[scheme]
    if scheme in ("http", "https") and protocol == "grpc":
        raise ServerURLError(f"{url}: an {scheme} URL with protocol='grpc'; use grpc://host:port for gRPC")
    return (parts.netloc + parts.path).rstrip("/"), proto, ssl


class TritonBackend:
    """Runs padded batches on a Triton server.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8000`` or ``grpc://127.0.0.1:8001`` (see
            :func:`parse_triton_url`).
        model_name: the model's name in the server's repository.
        protocol: "http" or "grpc" when the URL has no scheme.
        model_version: "" = the server's choice (its latest ready version).
        shared_memory: pass tensors through POSIX shared memory (server on the same host only).
        timeout_s: network timeout of one request, seconds.
        info: the model's ``ModelInfo`` when its Triton config lacks the ``milsdk.json`` parameter (a model not
            written by ``milsdk export``).
        api_key: key of the server's restricted APIs (sent as the ``milsdk-api-key`` header on every request);
            None = ``$MILSDK_TRITON_API_KEY`` if set.

    Raises:
        ServerUnavailableError: the server cannot be reached or the model is not ready (message names the URL).
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        protocol: str = "http",
        model_version: str = "",
        shared_memory: bool = False,
        timeout_s: float = 120.0,
        info: ModelInfo | None = None,
        api_key: str | None = None,
    ) -> None:
        self.address, self.protocol, self._ssl = parse_triton_url(url, protocol)
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._headers = api_key_headers(api_key) if api_key else {}
        scheme = ("https" if self._ssl else "http") if self.protocol == "http" else ("grpcs" if self._ssl else "grpc")
        self.url = f"{scheme}://{self.address}"
        self.model_name = model_name
        self.model_version = str(model_version)
        self.shared_memory = shared_memory
        self.timeout_s = float(timeout_s)
        if self.protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        self._module = module
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[Any] = []
        self._regions: list[_ShmRegion] = []
        self._orphans: list[_Connection] = []  # connections of threads that have ended, to release

        self._check_ready()
        config = self._model_config()
        self.info = info if info is not None else self._info_from_config(config)
        self.max_batch_size: int | None = int(config.get("max_batch_size", 0)) or None
        self._config_inputs = {i["name"]: i.get("data_type", "") for i in config.get("input", [])}
        #: the model outputs each bag's NaN/inf test (``features_check``, (B, 1): written by milsdk export into a
        #: repository's ONNX models, :mod:`milsdk.export.triton`); the client then does not scan bags itself
        self.checks_features = FEATURES_CHECK in {o.get("name") for o in config.get("output", [])}
        self._outputs = [LOGITS, ATTENTION] + ([FEATURES_CHECK] if self.checks_features else [])
        missing = [name for name in self.info.inputs if name not in self._config_inputs]
        if missing:
            raise ArtifactError(f"model {model_name!r} on {self.url} lacks inputs {missing} named in its metadata")

    # -- connection ----------------------------------------------------------------------------------------------
    def _new_client(self, timeout_s: float | None = None) -> Any:
        """A client; ``timeout_s`` (default: the request timeout) bounds each HTTP call (gRPC: only inference
        calls are bounded, by ``client_timeout``)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if self.protocol == "http":
            client = self._module.InferenceServerClient(
                self.address, connection_timeout=min(10.0, timeout_s), network_timeout=timeout_s, ssl=self._ssl,
            )
        else:
            client = self._module.InferenceServerClient(self.address, ssl=self._ssl)
        if self._headers:
            client.register_plugin(_Headers(self._headers))
        with self._lock:
            self._clients.append(client)
        return client

    def _connection(self) -> _Connection:
        """This thread's connection (made empty on the thread's first request)."""
        holder = getattr(self._local, "holder", None)
        if holder is None:
            holder = self._local.holder = _ThreadConnection(self._orphans)
        return holder.connection

    def _client(self, connection: _Connection) -> Any:
        if connection.client is None:
            connection.client = self._new_client()
        return connection.client

    def _http(self, connection: _Connection) -> HttpInferConnection:
        if connection.http is None:
            connection.http = HttpInferConnection(self.address, self._ssl, self.timeout_s, self._headers)
            with self._lock:
                self._clients.append(connection.http)  # closed by close() with the other connections
        return connection.http

    def _reset(self, connection: _Connection, client: Any | None = None) -> None:
        """Drop a connection's client and shared-memory region, the region unregistered through ``client``
        (default: the connection's own): after a failure (the server may have restarted), or its thread ended."""
        own, region, http = connection.client, connection.region, connection.http
        connection.client = connection.region = connection.http = None
        if http is not None:
            self._drop(http)
        if region is not None:
            with self._lock:
                if region not in self._regions:  # close() has freed it
                    region = None
                else:
                    self._regions.remove(region)
            if region is not None:
                region.destroy(client if client is not None else own)
        if own is not None:
            self._drop(own)

    def _release_orphans(self, client: Any | None) -> None:
        """Release the connections of threads that have ended (their regions unregistered through ``client``:
        a tritonclient HTTP client cannot be used from another thread than its own; None without shared
        memory, where they hold no region)."""
        while self._orphans:
            try:
                orphan = self._orphans.pop()
            except IndexError:  # another thread took the last one
                return
            self._reset(orphan, client)

    def _control_client(self) -> Any:
        """A client for health and config calls: a request timeout meant for inference (it may be shorter than
        a large batch's run, never than a health check) must not fail them."""
        return self._new_client(max(self.timeout_s, _CONTROL_TIMEOUT_S))

    def _drop(self, client: Any) -> None:
        _close_quietly(client)
        with self._lock:
            if client in self._clients:  # (close() may have taken it already)
                self._clients.remove(client)

    def _check_ready(self) -> None:
        client = self._control_client()
        try:
            self._check_ready_with(client)
        finally:
            self._drop(client)

    def _check_ready_with(self, client: Any) -> None:
        try:
            live = client.is_server_live()
        except Exception as exc:  # connection refused, DNS, timeout: all mean the same to the caller
            raise ServerUnavailableError(
                f"Triton server at {self.url} is not reachable ({first_line(exc)}); is it running?"
            ) from None
        if not live:  # also what Triton's HTTP endpoint answers (403) when its health API is behind a key
            hint = "" if self._headers else f" (or its health API needs a key: set {API_KEY_ENV})"
            raise ServerUnavailableError(f"Triton server at {self.url} is not live{hint}")
        if not client.is_model_ready(self.model_name, self.model_version):
            try:
                kwargs = {"as_json": True} if self.protocol == "grpc" else {}  # gRPC: else a protobuf message
                index = client.get_model_repository_index(**kwargs)
                entries = index if isinstance(index, list) else index.get("models", [])
                names = sorted({m.get("name", "") for m in entries} - {""})
            except Exception:  # the index is only for the message
                names = []
            listing = f"; models there: {', '.join(names)}" if names else ""
            raise ServerUnavailableError(f"model {self.model_name!r} is not ready on Triton at {self.url}{listing}")

    def _model_config(self) -> dict[str, Any]:
        client = self._control_client()
        try:
            if self.protocol == "http":
                return client.get_model_config(self.model_name, self.model_version)
            return client.get_model_config(self.model_name, self.model_version, as_json=True)["config"]
        finally:
            self._drop(client)

    def _info_from_config(self, config: dict[str, Any]) -> ModelInfo:
        text = config.get("parameters", {}).get(METADATA_KEY, {}).get("string_value")
        source = f"model {self.model_name!r} on {self.url}"
        if not text:
            raise ArtifactError(
                f"{source}: its config has no {METADATA_KEY!r} parameter (write the repository with "
                f"milsdk export --triton, or pass info=ModelInfo(...))"
            )
        return ModelInfo.from_json(text, source=source)

    # -- inference -----------------------------------------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one padded batch (see :class:`milsdk.serving.backends.Backend`).

        Raises:
            ServerUnavailableError: the server is down, restarting, or the model is not ready (worth retrying).
            ServingError: the inputs disagree on their shared axes (B, N, E; the request is not sent), or the
                server answered with an error for this batch.
        """
        arrays = {name: inputs[name] for name in self.info.inputs}
        # the server would answer with its runtime's internal node names; say it in the contract's words, unsent
        problem = input_shape_error({name: np.shape(array) for name, array in arrays.items()})
        if problem is not None:
            raise ServingError(f"request to {self.url}, model {self.model_name!r}, not sent: {problem}")
        connection = self._connection()
        for attempt in (0, 1):
            try:
                client = self._client(connection) if self.shared_memory or self.protocol == "grpc" else None
                if self._orphans:
                    self._release_orphans(client)
                if self.shared_memory:
                    return self._infer_shared_memory(connection, client, arrays)
                wire = self._wire_arrays(connection, arrays)
                if self.protocol == "http":
                    return self._infer_http(connection, wire)
                return self._infer(client, wire)
            except Exception as exc:  # classified below: retry-worthy or this batch's own error
                error = self._classify(exc)
                self._reset(connection)
                stale_region = self.shared_memory and "shared memory" in str(exc).lower()
                if attempt == 0 and stale_region and not isinstance(error, ServerUnavailableError):
                    continue  # the server restarted and forgot our region: register a new one, once
                raise error from None
        raise AssertionError("unreachable")

    def _wire_dtype(self, name: str, array: np.ndarray) -> np.dtype:
        """The dtype ``array`` travels as: float16 for an input the model's config declares TYPE_FP16 (the
        float16 wire format), its own otherwise."""
        return np.dtype(np.float16) if self._config_inputs.get(name) == "TYPE_FP16" else np.asarray(array).dtype

    def _wire_arrays(self, connection: _Connection, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays as sent: contiguous, float16 inputs converted into the connection's scratch buffer (reused
        from request to request: a fresh 33 MB array per request costs its first touch again)."""
        wire = {}
        for name, array in arrays.items():
            if self._wire_dtype(name, array) == np.float16 and np.asarray(array).dtype != np.float16:
                size = int(np.prod(np.shape(array)))
                if connection.scratch is None or connection.scratch.size < size:
                    connection.scratch = np.empty(size, np.float16)
                wire[name] = to_float16(array, connection.scratch[:size].reshape(np.shape(array)))
            else:
                wire[name] = np.ascontiguousarray(array)
        return wire

    def _inputs(self, arrays: dict[str, np.ndarray]) -> list[Any]:
        inputs = []
        for name, array in arrays.items():
            dtype = self._wire_dtype(name, array)
            tensor = self._module.InferInput(name, list(array.shape), KSERVE_DATATYPES[dtype.name])
            if not self.shared_memory:  # gRPC: HTTP requests without shared memory go through _infer_http
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    def _requested(self, name: str) -> Any:
        if self.protocol == "http":
            return self._module.InferRequestedOutput(name, binary_data=not self.shared_memory)
        return self._module.InferRequestedOutput(name)

    def _call(self, client: Any, inputs: list[Any], outputs: list[Any]) -> Any:
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return client.infer(self.model_name, inputs, model_version=self.model_version, outputs=outputs, **kwargs)

    def _answer(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        """The outputs as float32, ``features_check`` as (B,) (the backend contract's shape)."""
        out = {name: np.asarray(arrays[name], dtype=np.float32) for name in self._outputs}
        if FEATURES_CHECK in out:
            out[FEATURES_CHECK] = out[FEATURES_CHECK].reshape(-1)
        return out

    def _infer_http(self, connection: _Connection, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._answer(self._http(connection).infer(self.model_name, arrays, self._outputs, self.model_version))

    def _infer(self, client: Any, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._call(client, self._inputs(arrays), [self._requested(name) for name in self._outputs])
        return self._answer({name: result.as_numpy(name) for name in self._outputs})

    def _infer_shared_memory(
        self, connection: _Connection, client: Any, arrays: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        batch, n = arrays[self.info.inputs[0]].shape[:2]
        out_shapes = {LOGITS: (batch, self.info.n_classes), ATTENTION: (batch, n), FEATURES_CHECK: (batch, 1)}
        out_shapes = {name: out_shapes[name] for name in self._outputs}
        wire_dtypes = {name: self._wire_dtype(name, array) for name, array in arrays.items()}
        layout, offset = {}, 0
        sizes = [(k, int(np.prod(np.shape(a))) * wire_dtypes[k].itemsize) for k, a in arrays.items()]
        for name, nbytes in sizes + [(k, int(np.prod(s)) * 4) for k, s in out_shapes.items()]:
            layout[name] = (offset, nbytes)
            offset += -(-nbytes // _SHM_ALIGN) * _SHM_ALIGN
        region = self._region(connection, client, offset)
        inputs = self._inputs(arrays)
        for tensor, (name, array) in zip(inputs, arrays.items()):
            start, nbytes = layout[name]
            view = region.view(wire_dtypes[name], np.shape(array), start)
            if wire_dtypes[name] == np.float16:
                to_float16(np.asarray(array), view)  # converted straight into the region: one pass
            else:
                np.copyto(view, array, casting="no")
            tensor.set_shared_memory(region.name, nbytes, offset=start)
        outputs = []
        for name in out_shapes:
            start, nbytes = layout[name]
            requested = self._requested(name)
            requested.set_shared_memory(region.name, nbytes, offset=start)
            outputs.append(requested)
        self._call(client, inputs, outputs)
        return self._answer({name: region.read(shape, layout[name][0]) for name, shape in out_shapes.items()})

    def _region(self, connection: _Connection, client: Any, size: int) -> _ShmRegion:
        region = connection.region
        if region is not None and region.size >= size:
            return region
        if region is not None:
            region.destroy(client)
            with self._lock:
                self._regions.remove(region)
        # grow geometrically so that a run of growing bags does not re-register at every batch
        size = max(size, 2 * region.size if region is not None else 0)
        region = connection.region = _ShmRegion(client, size)
        with self._lock:
            self._regions.append(region)
        return region

    def _classify(self, exc: Exception) -> ServingError:
        """ServerUnavailableError when the server or the model is not there (retry), else ServingError."""
        from tritonclient.utils import InferenceServerException

        what = f"Triton at {self.url}, model {self.model_name!r}"
        if not isinstance(exc, InferenceServerException):
            if isinstance(exc, TimeoutError):
                return ServerUnavailableError(f"{what}: no answer within the request timeout of {self.timeout_s:g} s")
            # the connection failed, or broke mid-response (http.client's HTTPException family, which
            # geventhttpclient's "Incomplete response" HTTPParseError belongs to): the request is worth resending
            if isinstance(exc, (OSError, EOFError, HTTPException)) or "connection" in type(exc).__name__.lower():
                return ServerUnavailableError(f"{what}: {first_line(exc, with_type=True)}")
            hint = ""
            if "array of size 0" in str(exc):
                hint = " (empty outputs: is the server's Python backend running under numpy 2? it needs numpy<2)"
            return ServingError(f"{what}: {first_line(exc, with_type=True)}{hint}")
        message = f"{what}: {first_line(exc)}"
        if str(exc.status()) == "StatusCode.DEADLINE_EXCEEDED":
            return ServerUnavailableError(f"{what}: no answer within the request timeout of {self.timeout_s:g} s")
        if str(exc.status()) in _TRANSIENT_STATUSES or not self._healthy():
            return ServerUnavailableError(message)
        return ServingError(message)

    def _healthy(self) -> bool:
        """Whether the server is up and the model ready (checked with a fresh client)."""
        client = self._control_client()
        try:
            return bool(client.is_server_ready() and client.is_model_ready(self.model_name, self.model_version))
        except Exception:  # any failure to answer means not healthy
            return False
        finally:
            self._drop(client)

    def close(self) -> None:
        """Unregister shared memory and close every connection."""
        with self._lock:
            regions, self._regions = self._regions, []
            clients, self._clients = self._clients, []
            self._local = threading.local()  # drops every thread's holder: its connection goes to the orphans,
            self._orphans.clear()  # whose clients and regions are in the two lists above
        # regions are unregistered through a tritonclient client (an HttpInferConnection only posts inference)
        helper = next((c for c in clients if not isinstance(c, HttpInferConnection)), None)
        try:
            for region in regions:
                region.destroy(helper)
        finally:  # a region that cannot be freed must not keep the connections open
            for client in clients:
                _close_quietly(client)

    def __repr__(self) -> str:
        return f"TritonBackend({self.url!r}, {self.model_name!r})"


class _Connection:
    """One thread's tritonclient client, shared-memory region and HTTP inference connection, each made on first
    use."""

    __slots__ = ("client", "region", "http", "scratch")

    def __init__(self) -> None:
        self.client: Any = None
        self.region: _ShmRegion | None = None
        self.http: HttpInferConnection | None = None
        #: (size,) float16: where float32 features are converted for the float16 wire format
        self.scratch: np.ndarray | None = None


class _ThreadConnection:
    """Holds a thread's :class:`_Connection` in its thread-local storage. Python drops that storage when the
    thread ends; the holder then hands the connection to ``orphans``, for a live thread to release (the
    holder itself is gone by then, the connection does not refer to it)."""

    __slots__ = ("connection", "__weakref__")

    def __init__(self, orphans: list[_Connection]) -> None:
        self.connection = _Connection()
        weakref.finalize(self, orphans.append, self.connection)


class _ShmRegion:
    """A POSIX shared-memory region registered with the server.

    Its name is unique across processes, not only within this one: a process id is reused (in a container every
    run may be pid 1 or 7), and tritonclient by default *attaches* to an existing region of the same name. A
    name made of the pid and a counter alone therefore attached to the regions a killed run with the same pid
    had left in /dev/shm (never unlinked: Python's resource tracker then reported "leaked shared_memory
    objects" at exit), or, between two live clients in different pid namespaces on one host, to each other's
    regions (one overwriting the other's tensors). A random part and ``create_only`` rule both out.
    """

    def __init__(self, client: Any, size: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self._shm = shm
        self.size = int(size)
        self.name = f"milsdk_{os.getpid()}_{secrets.token_hex(6)}_{next(_region_ids)}"
        self.handle = shm.create_shared_memory_region(self.name, "/" + self.name, self.size, create_only=True)
        try:
            client.register_system_shared_memory(self.name, "/" + self.name, self.size)
        except Exception:
            shm.destroy_shared_memory_region(self.handle)
            raise

    def view(self, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
        """A writable array of ``shape`` and ``dtype`` over the region's bytes from ``offset``."""
        return self._shm.get_contents_as_numpy(self.handle, dtype, list(shape), offset=offset)

    def read(self, shape: tuple[int, ...], offset: int) -> np.ndarray:
        return np.array(self._shm.get_contents_as_numpy(self.handle, np.float32, list(shape), offset=offset))

    def destroy(self, client: Any | None) -> None:
        if client is not None:
            try:
                client.unregister_system_shared_memory(self.name)
            except Exception:  # the server may be gone; the region is ours to free regardless
                log.debug("could not unregister shared memory region %s", self.name)
        self._shm.destroy_shared_memory_region(self.handle)


class _Headers:
    """A tritonclient plugin adding fixed headers to every request (tritonclient calls it with each request)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = dict(headers)

    def __call__(self, request: Any) -> None:
        request.headers.update(self.headers)


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing a broken connection may raise; nothing to do about it
        log.debug("error closing a Triton client", exc_info=True)
