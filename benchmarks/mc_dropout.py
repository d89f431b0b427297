"""MC dropout three ways: naive T passes, the exported frozen-mask ONNX model, the torch frozen-mask model.

    python benchmarks/mc_dropout.py                       # CPU, 2 threads, random-init w20, T=30, batch 256, 128 px
    python benchmarks/mc_dropout.py --checkpoint model.ckpt --device cuda

(a) naive: the whole network T times in PyTorch with dropout on (what MC dropout costs done directly);
(b) onnxruntime: the exported model (trunk once, T masked heads), warmed up; (c) torch: the same frozen-mask
model in PyTorch (channels_last on CPU; fp32 and fp16 on CUDA). Each is reported as galaxies/s and useful
GFLOP/s, ``galaxies/s x (FLOPs of one trunk pass + T x FLOPs of one head) / 1e9``, next to this machine's
float32 matmul rate measured in the same run (2048 x 2048 matrices, same threads, best of measurements before,
between and after the runs) with ``torch.mm`` and, on CPU, onnxruntime's MatMul; "% peak" is of the higher.

Without ``--checkpoint`` the weights are random: speed does not depend on their values. On CPU the script
re-executes itself with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`` (glibc otherwise maps and
unmaps every large activation, a third of PyTorch's time; see the team's shared NOTES.md).
Writes benchmarks/results/mc_dropout.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _args import add_out, positive_int
from _provenance import provenance, save

_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def _best_seconds(fn, repeats: int, sync=lambda: None) -> float:
    """Fastest of ``repeats`` timed calls after one untimed warm-up call."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _matmul_gflops(torch, device: str, dtype, n: int = 2048, repeats: int = 15) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return 2 * n**3 / _best_seconds(lambda: torch.mm(a, b), repeats, sync) / 1e9


def _ort_matmul_gflops(threads: int, n: int = 2048, repeats: int = 15) -> float:
    """The same product through onnxruntime's MLAS kernels (here about twice torch's MKL rate on 2 threads)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {name: np.random.default_rng(0).random((n, n), dtype=np.float32) for name in "ab"}
    return 2 * n**3 / _best_seconds(lambda: session.run(None, feeds), repeats) / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a skymorph checkpoint (default: random-init --arch)")
    parser.add_argument("--arch", default="w20")
    parser.add_argument("--samples", type=positive_int, default=30, help="T (default 30)")
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--naive-batch", type=positive_int, default=32, help="batch of (a), which is T times slower (default 32)")
    parser.add_argument("--size", type=positive_int, default=128)
    parser.add_argument("--channels", type=positive_int, default=1)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    add_out(parser, "mc_dropout.json")
    args = parser.parse_args(argv)
    ran = provenance()  # before the measurements: the load it records is the machine's at the start

    if args.device == "cpu" and any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC_ENV})

    import torch

    from skymorph.exporter import export_onnx_model, freeze
    from skymorph.inference.engines import load_engine
    from skymorph.model_metadata import InputSpec
    from skymorph.schema import get_schema
    from skymorph.trainer.models import build_model, count_flops

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        from skymorph.trainer.checkpoint import load_checkpoint

        net, _, _ = load_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        spec = InputSpec(args.channels, args.size, args.size)
        net = build_model(args.arch, get_schema("decals"), spec, "multinomial")
    spec, t = net.input_spec, args.samples
    trunk_flops = count_flops(net.trunk, spec)
    head_flops = 2 * net.head.in_features * net.schema.n_answers
    useful_flops = trunk_flops + t * head_flops
    images = np.random.default_rng(0).integers(0, 256, (args.batch, *spec.shape), dtype=np.uint8)
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # Measured before every method and at the end: on a shared machine the highest is the best estimate.
    peaks = {"torch.mm": [_matmul_gflops(torch, device, torch.float32)]}
    if device == "cpu":
        peaks["onnxruntime MatMul"] = [_ort_matmul_gflops(args.threads)]
    rows = []

    def record(method: str, batch: int, seconds: float) -> None:
        peaks["torch.mm"].append(_matmul_gflops(torch, device, torch.float32))
        if device == "cpu":
            peaks["onnxruntime MatMul"].append(_ort_matmul_gflops(args.threads))
        rows.append({"method": method, "batch": batch, "seconds": seconds, "galaxies_per_s": batch / seconds})

    # (a) naive: T full passes, dropout on (train mode; w20 has no batch norm, resnet_s's is put in eval)
    net_a = net.to(device).train()
    for module in net_a.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    x_naive = torch.from_numpy(images[: args.naive_batch]).to(device)

    def naive():
        with torch.no_grad():
            return torch.stack([net_a(x_naive) for _ in range(t)], dim=1)

    record("(a) naive MC dropout, torch fp32", args.naive_batch, _best_seconds(naive, 1, sync))

    # (b) the exported model in onnxruntime (load_engine warms it up)
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx_model(net.cpu().eval(), Path(tmp) / "m.onnx", samples=t, seed=0)
        engine = load_engine(str(Path(tmp) / "m.onnx"), threads=args.threads)
    record(f"(b) onnxruntime frozen masks [{engine.session.get_providers()[0]}]", args.batch, _best_seconds(lambda: engine(images), args.repeats))

    # (c) the torch frozen-mask reference
    frozen, _ = freeze(net, t, 0)
    x = torch.from_numpy(images)
    variants = [("fp32", torch.float32)] + ([("fp16", torch.float16)] if device == "cuda" else [])
    for name, dtype in variants:
        model = frozen.to(device=device, dtype=dtype)
        if device == "cpu":
            model = model.to(memory_format=torch.channels_last)
        x_dev = x.to(device)

        def run(model=model, x_dev=x_dev):
            with torch.inference_mode():
                return model(x_dev)

        record(f"(c) torch frozen masks {name}" + (", channels_last" if device == "cpu" else ""), args.batch, _best_seconds(run, args.repeats, sync))

    peak = {f"float32 {name}": max(values) for name, values in peaks.items()}
    peak["float32"] = max(peak.values())
    peak["all_measurements"] = peaks
    if device == "cuda":
        peak["float16 torch.mm"] = _matmul_gflops(torch, device, torch.float16)
    naive_rate = rows[0]["galaxies_per_s"]
    for row in rows:
        row["useful_gflops_per_s"] = row["galaxies_per_s"] * useful_flops / 1e9
        row["fraction_of_fp32_matmul"] = row["useful_gflops_per_s"] / peak["float32"]
        row["speedup_vs_naive"] = row["galaxies_per_s"] / naive_rate

    result = {
        "config": {**vars(args), "weights": args.checkpoint or f"random init ({net.arch})", "malloc_env": {k: os.environ.get(k) for k in _MALLOC_ENV}},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
                    "load_average_1min_at_end": os.getloadavg()[0]},
        "flops_per_galaxy": {"trunk": trunk_flops, "head": head_flops, "useful_total": useful_flops},
        "onnx_sha256": report.model_sha256,
        "matmul_gflops_per_s": peak,
        "results": rows,
    }
    result["provenance"] = ran
    out = save(args.out, result)

    print(f"{net.arch}, T={t}, {spec.channels}x{spec.height}x{spec.width}, {args.threads} threads, device {device}; "
          f"useful {useful_flops / 1e9:.3f} GFLOP/galaxy; fp32 matmul GFLOP/s: "
          + ", ".join(f"{name} {max(values):.0f}" for name, values in peaks.items()) + " (% peak: of the higher)")
    print(f"{'method':58s} {'batch':>5s} {'galaxies/s':>11s} {'GFLOP/s':>8s} {'% peak':>7s} {'x naive':>8s}")
    for row in rows:
        print(f"{row['method']:58s} {row['batch']:5d} {row['galaxies_per_s']:11.1f} {row['useful_gflops_per_s']:8.1f} "
              f"{100 * row['fraction_of_fp32_matmul']:6.0f}% {row['speedup_vs_naive']:8.1f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
