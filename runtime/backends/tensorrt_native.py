"""TensorRT's own runtime: build (or load from the engine cache) a plan from the artifact's ONNX, run it.

Works with TensorRT 10 and 11 from one ONNX file. Precision is taken from the graph
(FP32, FP16 weights, or Q/DQ INT8): the network is created strongly typed where the
version has the flag (TensorRT >= 9; mandatory in 11, which removed BuilderFlag.FP16/
INT8 and the implicit calibrators); only on an older TensorRT without it are FP16/
INT8 builder flags set from the manifest's precision. One optimisation profile covers
the batch axis; a timing cache and the engine cache live under the cache folder.
Host buffers are pinned, and each backend instance (one per worker) owns its CUDA
stream and execution context.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import file_sha256
from ..errors import BackendError
from .base import BackendOptions, tf32_tag
from .engine_cache import BatchProfile, EngineCache, EngineKey, write_atomic

log = logging.getLogger("clipscan.backends.tensorrt")


def unavailable_reason() -> str | None:
    """Why TensorRT's own runtime cannot run here (every missing piece, with its fix), or None."""
    from . import gpu_libs

    trt, problem = gpu_libs.tensorrt_module()
    pieces = [f"{problem}; {gpu_libs.TENSORRT_PIP}" if problem else None]
    gpu = gpu_libs.nvidia_gpu()
    pieces.append(gpu.problem)
    if trt is not None and gpu.problem is None:
        cuda = gpu_libs.tensorrt_cuda_major(trt.__version__)
        pieces.append(gpu.driver_problem(cuda, f"TensorRT {trt.__version__}") if cuda else None)
    if not any(pieces):
        from .cuda_device import cuda_unavailable_reason

        pieces.append(cuda_unavailable_reason())
    return "; ".join(p for p in pieces if p) or None


@dataclass(frozen=True)
class IoTensor:
    name: str
    is_input: bool
    shape: tuple[int, ...]     # -1 on the batch axis
    dtype: np.dtype

    def shape_for(self, batch: int) -> tuple[int, ...]:
        """The shape with the batch axis (axis 0) set; other dynamic axes stay -1."""
        return (batch if self.shape[0] == -1 else self.shape[0], *self.shape[1:])

    def nbytes(self, batch: int) -> int:
        """Bytes of this tensor at `batch` (buffers are sized for the profile's max batch)."""
        dims = self.shape_for(batch)
        if any(d < 0 for d in dims):
            raise BackendError(f"{self.name}: only the batch axis may be dynamic, shape is {self.shape}: the TensorRT "
                               "backend sizes its buffers before it runs; export the model with fixed image sizes")
        return int(np.prod(dims, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def network_flags(trt) -> int:
    """Creation flags for this TensorRT: strongly typed when it can be (precision then comes from the graph)."""
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:
        flags |= 1 << int(strongly)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and strongly is None:  # TensorRT < 9 still needs it; 10 ignores it, 11 removed it
        flags |= 1 << int(explicit)
    return flags


def legacy_precision_flags(trt, precision: str) -> list:
    """Builder flags for a TensorRT without strong typing; none on 10/11 (the graph carries the precision)."""
    if getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None) is not None:
        return []
    names = {"fp16": ["FP16"], "int8": ["INT8", "FP16"]}.get(precision, [])
    return [getattr(trt.BuilderFlag, n) for n in names if hasattr(trt.BuilderFlag, n)]


class TensorrtBackend:
    def __init__(self, model_path: Path, options: BackendOptions, manifest):
        import tensorrt as trt

        from . import cuda_device

        self.trt = trt
        self.cudart = cuda_device._cudart()
        self.device_id = options.device_id
        self.device = cuda_device.cuda_device(options.device_id)
        self._use_device()   # the engine, stream and buffers below belong to this device
        self.name = "tensorrt" + tf32_tag(options)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.profile = BatchProfile.for_batch_size(options.batch_size, options.max_batch)
        chw = (3, *manifest.input.size)
        key = EngineKey(onnx_sha256=file_sha256(model_path), precision=manifest.precision, profile=self.profile,
                        tensorrt_version=trt.__version__, gpu_name=self.device.name,
                        compute_capability=self.device.compute_capability, cuda_version=tensorrt_cuda(trt),
                        tf32="on" if options.tf32 else "off")
        cache = EngineCache(Path(options.cache_dir) / "tensorrt")
        plan = cache.load(model_path.stem, key)
        self.plan_path, self.plan_from_cache = cache.paths(model_path.stem, key)[0], plan is not None
        if plan is None:
            log.info("building a TensorRT %s engine for %s (profile %s); cached for next time",
                     trt.__version__, model_path.name, self.profile)
            plan = self._build(model_path, manifest, chw, cache, key, options)
            self.plan_path = cache.store(model_path.stem, key, plan)
        else:
            log.info("loaded the cached TensorRT engine %s", self.plan_path)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize the engine for {model_path}")
        self.context = self.engine.create_execution_context()
        self.tensors = self._io_tensors()
        self.input_names = [t.name for t in self.tensors if t.is_input]
        self.output_names = [t.name for t in self.tensors if not t.is_input]
        self.host, self.device_ptrs, self.stream = {}, {}, None
        try:
            self.stream = cuda_device.check(self.cudart.cudaStreamCreate())
            self._alloc()
        except BaseException:
            self.close()   # a failed start frees what it allocated (pinned host and device memory, the stream)
            raise

    def _use_device(self) -> None:
        """Make this backend's GPU current in the calling thread (CUDA's current device is per thread)."""
        from .cuda_device import check

        check(self.cudart.cudaSetDevice(self.device_id))

    def _build(self, model_path: Path, manifest, chw, cache: EngineCache, key: EngineKey,
               options: BackendOptions) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT's ONNX parser rejected {model_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
        for flag in legacy_precision_flags(trt, manifest.precision):
            config.set_flag(flag)
        for flag in tf32_flags(trt, options.tf32):
            config.clear_flag(flag)
        profile = builder.create_optimization_profile()
        shapes = self.profile.shapes(chw)
        profile.set_shape(manifest.input.name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
        timing_path = cache.timing_cache_path(key)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError(f"TensorRT failed to build an engine for {model_path} (see its log above)")
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    def _io_tensors(self) -> list[IoTensor]:
        trt, engine = self.trt, self.engine
        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out.append(IoTensor(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                tuple(engine.get_tensor_shape(name)), np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
        return out

    def _alloc(self) -> None:
        """Pinned host and device buffers sized for the profile's max batch, bound once."""
        from .cuda_device import check

        cudart, top = self.cudart, self.profile.max
        self.host, self.device_ptrs = {}, {}
        for t in self.tensors:
            nbytes = t.nbytes(top)
            host_ptr = check(cudart.cudaMallocHost(nbytes))
            count = nbytes // np.dtype(t.dtype).itemsize
            buf = (np.ctypeslib.as_array((np.ctypeslib.ctypes.c_byte * nbytes).from_address(host_ptr))
                   .view(t.dtype)[:count])
            self.host[t.name] = (host_ptr, buf)
            self.device_ptrs[t.name] = check(cudart.cudaMalloc(nbytes))
            self.context.set_tensor_address(t.name, self.device_ptrs[t.name])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .cuda_device import check

        cudart = self.cudart
        self._use_device()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        batch = next(iter(feeds.values())).shape[0]
        if not self.profile.min <= batch <= self.profile.max:
            raise BackendError(f"batch {batch} is outside the engine's profile {self.profile}; "
                               "raise max_batch (--max-batch) to rebuild it")
        for t in self.tensors:
            if t.is_input:
                arr = np.ascontiguousarray(feeds[t.name], dtype=t.dtype)
                ptr, buf = self.host[t.name]
                buf[: arr.size] = arr.ravel()
                self.context.set_input_shape(t.name, arr.shape)
                check(cudart.cudaMemcpyAsync(self.device_ptrs[t.name], ptr, arr.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(_handle(self.stream)):
            raise BackendError("TensorRT execution failed")
        outputs = {}
        for t in self.tensors:
            if not t.is_input:
                nbytes = t.nbytes(batch)
                ptr, buf = self.host[t.name]
                check(cudart.cudaMemcpyAsync(ptr, self.device_ptrs[t.name], nbytes, d2h, self.stream))
                outputs[t.name] = (t, buf, nbytes)
        check(cudart.cudaStreamSynchronize(self.stream))
        return {name: buf[: nbytes // t.dtype.itemsize].reshape(t.shape_for(batch)).copy()
                for name, (t, buf, nbytes) in outputs.items()}

    def close(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        if getattr(self, "device_id", None) is not None:
            cudart.cudaSetDevice(self.device_id)
        for ptr, _ in getattr(self, "host", {}).values():
            cudart.cudaFreeHost(ptr)
        for ptr in getattr(self, "device_ptrs", {}).values():
            cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
        self.host, self.device_ptrs, self.stream = {}, {}, None
        self.context = self.engine = None   # the engine's own device memory goes with them


def _handle(stream) -> int:
    """The raw cudaStream_t value TensorRT takes. cuda-python wraps it in an object whose int() is the
    handle (its getPtr() is the address of the wrapper's storage, not the handle)."""
    return int(stream)


def tf32_flags(trt, tf32: bool) -> list:
    """Builder flags to clear: TF32 (on by default in TensorRT) unless asked for, so FP32 layers compute in FP32."""
    flag = getattr(trt.BuilderFlag, "TF32", None)
    return [] if tf32 or flag is None else [flag]


def tensorrt_cuda(trt) -> str:
    """The CUDA major TensorRT itself was built for (its pip distribution says), for the engine key."""
    from .gpu_libs import tensorrt_cuda_major

    major = tensorrt_cuda_major(trt.__version__)
    return str(major) if major is not None else "not-from-pip"


def create(model_path: Path, options: BackendOptions, manifest=None) -> TensorrtBackend:
    if manifest is None:
        raise BackendError("the TensorRT backend needs the model's manifest (input name, size, precision)")
    from .int8_target import refuse_cpu_target_int8, refuse_own_size

    refuse_cpu_target_int8(manifest, "tensorrt")
    refuse_own_size(manifest, "tensorrt")
    try:
        return TensorrtBackend(model_path, options, manifest)
    except BackendError:
        raise
    except Exception as e:
        raise BackendError(f"TensorRT could not start: {type(e).__name__}: {e}") from e
