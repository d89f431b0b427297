"""The native TensorRT backend: a serialised plan, its sidecar JSON, and a pipelined runtime.

A plan only runs on the TensorRT version that built it and on GPUs of the same compute capability, so
``model.plan`` comes with ``model.plan.json``: DESIGN's ``skymorph.*`` metadata plus the TensorRT
version, compute capability, tensor names, batch range and the plan's sha256. Both are checked before
the plan is handed to TensorRT.

The runtime splits a call into chunks of the plan's optimal batch and keeps two of everything (pinned
host buffers, device buffers, events): chunk k+1 is copied host -> device on a copy stream while chunk k
computes on the compute stream, so transfers hide behind compute. Those buffers and the one execution
context are the engine's, so a call holds a lock: a worker's other tasks read, decode and write meanwhile.
It needs ``tensorrt`` and ``cuda-python`` (imported lazily: a machine without a GPU never imports them).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import threading
from dataclasses import asdict, dataclass

import numpy as np

from skymorph.errors import MissingDependencyError, ModelError
from skymorph.inference.engines import Engine
from skymorph.model_metadata import ModelMetadata
from skymorph.storage import read_text

__all__ = [
    "PlanSidecar",
    "sidecar_url",
    "read_sidecar",
    "load_plan",
    "check_plan_compatible",
    "compute_capability",
    "TensorRTEngine",
    "import_tensorrt",
    "import_cudart",
]

SIDECAR_FORMAT = "skymorph-tensorrt-plan"
INSTALL_HINT = "pip install tensorrt cuda-python (skymorph's tensorrt extra) on a machine with an NVIDIA GPU"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as err:
        raise MissingDependencyError(f"TensorRT is not installed: {INSTALL_HINT}") from err
    return tensorrt


def import_cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` since 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as err:
            raise MissingDependencyError(f"cuda-python is not installed: {INSTALL_HINT}") from err
    return runtime


def sidecar_url(plan_url: str) -> str:
    return f"{plan_url}.json"


@dataclass(frozen=True)
class PlanSidecar:
    """Everything needed to trust a plan before deserialising it (``<plan>.json``)."""

    metadata: ModelMetadata
    tensorrt_version: str
    compute_capability: str
    input_name: str
    output_name: str
    plan_sha256: str
    fp16: bool
    min_batch: int
    opt_batch: int
    max_batch: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ModelError(f"plan batch range must satisfy 1 <= min <= opt <= max, got {self.min_batch}, {self.opt_batch}, {self.max_batch}")

    def to_json(self) -> str:
        data = asdict(self)
        data["metadata"] = self.metadata.to_props()
        return json.dumps({"format": SIDECAR_FORMAT, **data}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> PlanSidecar:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelError(f"{source} is not valid JSON ({err.msg}); rebuild the plan with `skymorph export --format tensorrt`") from err
        if not isinstance(data, dict) or data.pop("format", None) != SIDECAR_FORMAT:
            raise ModelError(f"{source} is not a skymorph plan sidecar; rebuild the plan with `skymorph export --format tensorrt`")
        try:
            data["metadata"] = ModelMetadata.from_props(data["metadata"], source=source)
            return cls(**data)
        except (KeyError, TypeError) as err:
            raise ModelError(f"{source} is malformed ({type(err).__name__}: {err}); rebuild the plan") from err


def check_plan_compatible(sidecar: PlanSidecar, source: str, tensorrt_version: str, compute_capability: str | None) -> None:
    """One-line :class:`ModelError` unless the plan was built by this TensorRT for this kind of GPU."""
    if sidecar.tensorrt_version != tensorrt_version:
        raise ModelError(
            f"{source} was built by TensorRT {sidecar.tensorrt_version}, this machine has TensorRT {tensorrt_version}; "
            "rebuild it here with `skymorph export --format tensorrt` (or use the .onnx model)"
        )
    if compute_capability is not None and sidecar.compute_capability != compute_capability:
        raise ModelError(
            f"{source} was built for GPU compute capability {sidecar.compute_capability}, this GPU has {compute_capability}; "
            "rebuild it on this kind of GPU"
        )


def _cuda(cudart, result):
    """Unpack a cuda-python call's ``(error, *values)``; raise on any error."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise ModelError(f"CUDA call failed: {cudart.cudaGetErrorString(err)[1].decode()}; check that `nvidia-smi` shows the "
                         "GPU and has memory free for this process")
    return values[0] if len(values) == 1 else values


def compute_capability(device: int = 0) -> str:
    """``"major.minor"`` of CUDA device ``device``."""
    cudart = import_cudart()
    props = _cuda(cudart, cudart.cudaGetDeviceProperties(device))
    return f"{props.major}.{props.minor}"


def read_sidecar(url: str, plan_sha256: str, storage_options=None) -> PlanSidecar:
    """The sidecar of the plan at ``url``, after checking that it names the plan of digest ``plan_sha256``;
    needs neither TensorRT nor a GPU."""
    try:
        text = read_text(sidecar_url(url), storage_options)
    except FileNotFoundError as err:
        if url.lower().endswith(".onnx"):  # --backend tensorrt given an ONNX model
            raise ModelError(f"{url!r} is an ONNX model, not a TensorRT plan; use --backend onnxruntime, or build a "
                             "plan with `skymorph export --format tensorrt`") from err
        raise ModelError(f"plan {url!r} has no sidecar {sidecar_url(url)!r}; rebuild it with `skymorph export --format tensorrt`") from err
    sidecar = PlanSidecar.from_json(text, repr(sidecar_url(url)))
    if plan_sha256 != sidecar.plan_sha256:
        raise ModelError(f"plan {url!r} does not match its sidecar's sha256 (truncated, corrupt or replaced); rebuild it")
    return sidecar


def load_plan(url: str, plan: bytes, storage_options=None) -> TensorRTEngine:
    """Check the sidecar of the plan at ``url`` (bytes ``plan``) against it and this machine, then load it."""
    digest = hashlib.sha256(plan).hexdigest()
    sidecar = read_sidecar(url, digest, storage_options)
    trt = import_tensorrt()
    check_plan_compatible(sidecar, repr(url), trt.__version__, compute_capability())
    return TensorRTEngine(url, plan, sidecar, digest)


class TensorRTEngine(Engine):
    """A deserialised plan with double-buffered, two-stream execution; see the module docstring."""

    backend = "tensorrt"

    def __init__(self, url: str, plan: bytes, sidecar: PlanSidecar, plan_sha256: str) -> None:
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ModelError(f"TensorRT could not deserialise {url!r}; rebuild it with `skymorph export --format tensorrt`")
        self._context = self._engine.create_execution_context()
        if self._context is None:  # TensorRT logs why (most often: GPU memory exhausted) and returns None
            raise ModelError(f"TensorRT could not create an execution context for {url!r} (is the GPU out of memory?)")
        super().__init__(url, sidecar.metadata, plan_sha256, True)
        self.sidecar = sidecar
        self._lock = threading.Lock()
        self._chunk = sidecar.opt_batch
        t, a = self.output_shape
        # Bytes per galaxy: uint8 image in, float32 (T, A) out.
        self._in_bytes, self._out_bytes = int(np.prod(sidecar.metadata.input.shape)), t * a * 4
        self._pinned_pointers, self._host_in, self._host_out, self._dev_in, self._dev_out = [], [], [], [], []
        self._done, self._ready, self._copy_stream, self._compute_stream = [], [], None, None
        try:  # what was allocated before a failure is freed, not leaked until the process ends
            for _ in range(2):
                self._host_in.append(self._pinned(self._chunk * self._in_bytes, np.uint8, (self._chunk, *sidecar.metadata.input.shape)))
                self._host_out.append(self._pinned(self._chunk * self._out_bytes, np.float32, (self._chunk, t, a)))
                self._dev_in.append(_cuda(cudart, cudart.cudaMalloc(self._chunk * self._in_bytes)))
                self._dev_out.append(_cuda(cudart, cudart.cudaMalloc(self._chunk * self._out_bytes)))
                self._done.append(_cuda(cudart, cudart.cudaEventCreate()))
                self._ready.append(_cuda(cudart, cudart.cudaEventCreate()))
            self._copy_stream = _cuda(cudart, cudart.cudaStreamCreate())
            self._compute_stream = _cuda(cudart, cudart.cudaStreamCreate())
            self(np.zeros((1, *sidecar.metadata.input.shape), dtype=np.uint8))
        except BaseException:
            self.close()
            raise

    def _pinned(self, nbytes: int, dtype, shape) -> np.ndarray:
        pointer = _cuda(self._cudart, self._cudart.cudaMallocHost(nbytes))
        self._pinned_pointers.append(pointer)
        buffer = (ctypes.c_uint8 * nbytes).from_address(int(pointer))
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)

    def _run(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._copy_stream is None:  # closed: its buffers are freed
                raise ModelError(f"the TensorRT engine of {self.url!r} was closed (its run ended); load the plan again")
            try:
                return self._run_locked(images)
            except BaseException:  # copies still queued would write into buffers the next call reuses
                for stream in (self._copy_stream, self._compute_stream):
                    self._cudart.cudaStreamSynchronize(stream)
                raise

    def _run_locked(self, images: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        out = np.empty((len(images), *self.output_shape), dtype=np.float32)
        starts = list(range(0, len(images), self._chunk))
        pending = None
        for k, start in enumerate(starts):
            slot, n = k % 2, min(self._chunk, len(images) - start)
            # Slot reuse is safe: chunk k-2 on this slot was waited for at step k-1 below.
            self._host_in[slot][:n] = images[start : start + n]
            host_in, host_out = self._host_in[slot].ctypes.data, self._host_out[slot].ctypes.data
            _cuda(cudart, cudart.cudaMemcpyAsync(self._dev_in[slot], host_in, n * self._in_bytes, h2d, self._copy_stream))
            _cuda(cudart, cudart.cudaEventRecord(self._ready[slot], self._copy_stream))
            _cuda(cudart, cudart.cudaStreamWaitEvent(self._compute_stream, self._ready[slot], 0))
            self._context.set_input_shape(self.sidecar.input_name, (n, *self.metadata.input.shape))
            self._context.set_tensor_address(self.sidecar.input_name, int(self._dev_in[slot]))
            self._context.set_tensor_address(self.sidecar.output_name, int(self._dev_out[slot]))
            if not self._context.execute_async_v3(int(self._compute_stream)):
                raise ModelError(f"TensorRT failed to run {self.url!r} on a batch of {n} (its log above says why); check the "
                                 "GPU with `nvidia-smi`, or rebuild the plan with this TensorRT")
            _cuda(cudart, cudart.cudaMemcpyAsync(host_out, self._dev_out[slot], n * self._out_bytes, d2h, self._compute_stream))
            _cuda(cudart, cudart.cudaEventRecord(self._done[slot], self._compute_stream))
            if pending is not None:
                self._collect(out, *pending)
            pending = (slot, start, n)
        self._collect(out, *pending)
        return out

    def _collect(self, out: np.ndarray, slot: int, start: int, n: int) -> None:
        _cuda(self._cudart, self._cudart.cudaEventSynchronize(self._done[slot]))
        out[start : start + n] = self._host_out[slot][:n]

    def close(self) -> None:
        """Free the CUDA buffers, events and streams (also done when the engine is garbage-collected), once
        no call is using them: a run's end (its worker plugin's teardown) may come while a task runs."""
        with self._lock:
            self._free()

    def _free(self) -> None:
        cudart = self._cudart
        for pointer in self._pinned_pointers:
            cudart.cudaFreeHost(pointer)
        for pointer in self._dev_in + self._dev_out:
            cudart.cudaFree(pointer)
        for event in self._done + self._ready:
            cudart.cudaEventDestroy(event)
        for stream in (self._copy_stream, self._compute_stream):
            if stream is not None:
                cudart.cudaStreamDestroy(stream)
        self._pinned_pointers, self._dev_in, self._dev_out, self._done, self._ready = [], [], [], [], []
        self._host_in, self._host_out = [], []  # views of the freed pinned memory
        self._copy_stream = self._compute_stream = None

    def __del__(self) -> None:
        if hasattr(self, "_pinned_pointers"):  # else __init__ failed before allocating anything
            self.close()
