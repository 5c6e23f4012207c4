"""Benchmark of the MSDN++ training step and evaluation forward at the real dataset shapes.

Measures, on whatever machine it runs on, the median training step (forward, all losses with the
published per-dataset weights, backward, RMSprop step) at B=50 (AWA2: 40, its balanced batch), the
median no_grad eval forward at B=100, and the machine's own large-matmul throughput in the same
run. Useful work is counted as 16·B·R·min(A·D, 300·(A+D)) FLOPs per training step (the four
bilinear maps, forward + weight gradient) and half that per eval forward, and reported as GFLOP/s
and as a fraction of the measured matmul throughput. On CPU it also times the step under bf16
autocast, and what `precision: auto`'s probe (msdn_tune/train/precision.py) measures and chooses
on this CPU; on CUDA it runs in bf16 and prints steps/s and the projected wall time of a full
30-epoch CUB-shape run. Each dataset runs in its own child process so that its peak RSS is its own.

    .venv/bin/python benchmarks/trainer.py                      # all four datasets
    .venv/bin/python benchmarks/trainer.py --datasets cub --causal --steps 10 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from msdn_tune.model import MSDN, LossWeights, margin_vector, msdn_loss  # noqa: E402
from msdn_tune.train.precision import PROBE_SHAPE, bf16_supported, probe  # noqa: E402

D, VEC, H, W = 2048, 300, 14, 14
R = H * W


@dataclass(frozen=True)
class Shape:
    """One dataset's shapes and published training settings (docs/model.md §3)."""

    batch: int
    attributes: int
    classes: int
    unseen: int
    lambda_sc: float
    lambda_d: float
    momentum: float
    word_vectors: bool
    normalize_v: bool
    clip_negative: bool
    trainval: int
    test: int


SHAPES = {
    "cub": Shape(50, 312, 200, 50, 0.1, 1e-3, 0.9, True, False, False, 7057, 1764 + 2967),
    "sun": Shape(50, 102, 717, 72, 1e-4, 1e-2, 0.9, True, False, False, 10320, 2580 + 1440),
    "awa2": Shape(40, 85, 50, 10, 0.12, 1e-7, 0.0, True, True, True, 23527, 5882 + 7913),
    # FLO: no official settings; no word vectors (V ~ N(0,1), normalised each pass), CUB weights.
    "flo": Shape(50, 1024, 102, 20, 0.1, 1e-3, 0.9, False, True, False, 5631, 1403 + 1155),
}
EVAL_BATCH = 100
EPOCHS = 30


def useful_flops(batch: int, attributes: int) -> float:
    """FLOPs of one training step's useful work: 16·B·R·min(A·D, vec·(A+D))."""
    return 16.0 * batch * R * min(attributes * D, VEC * (attributes + D))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class MatmulRef:
    """A large square GEMM into a preallocated output: the machine's practical GEMM ceiling."""

    def __init__(self, device: torch.device, dtype: torch.dtype, n: int = 4096) -> None:
        self.a = torch.randn(n, n, device=device).to(dtype)
        self.b = torch.randn(n, n, device=device).to(dtype)
        self.c = torch.empty(n, n, device=device, dtype=dtype)
        self.flops = 2.0 * n**3
        self.device = device
        self()

    def __call__(self) -> None:
        torch.mm(self.a, self.b, out=self.c)


CLOCK = time.perf_counter


def paired(fn, flops: float, ref: MatmulRef, steps: int, warmup: int) -> dict[str, float]:
    """Median time of fn and of the reference GEMM, timed alternately.

    Other jobs share this machine's cores, so the load changes during a run; timing the
    reference right next to each step and taking the median of the per-pair ratios compares the
    two under the same contention.
    """
    for _ in range(warmup):
        fn()
    sync(ref.device)
    t_fn, t_mm, ratios = [], [], []
    for _ in range(steps):
        t0 = CLOCK()
        ref()
        sync(ref.device)
        t1 = CLOCK()
        fn()
        sync(ref.device)
        t2 = CLOCK()
        t_mm.append(t1 - t0)
        t_fn.append(t2 - t1)
        ratios.append((flops / (t2 - t1)) / (ref.flops / (t1 - t0)))
    return {
        "time": statistics.median(t_fn),
        "mm_gflops": ref.flops / statistics.median(t_mm) / 1e9,
        "ratio": statistics.median(ratios),
        "best_time": min(t_fn),
    }


def cpu_has_bf16() -> str:
    """Which native bf16 instructions the CPU advertises (from /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return ",".join(found) if found else "none"


def mkldnn_bf16() -> str:
    """Whether torch's oneDNN backend reports native bf16 support on this CPU."""
    try:
        return str(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return "unknown"


def auto_probe() -> str:
    """What `precision: auto` measures on this CPU (its probe, uncached), as one line."""
    if not bf16_supported(torch.device("cpu")):
        return "precision auto: fp32 (this CPU has no bf16 instructions; no probe)"
    start = time.perf_counter()
    m = probe()
    return (
        f"precision auto's probe (CUB shapes, B={PROBE_SHAPE.batch}, {torch.get_num_threads()} "
        f"threads, {time.perf_counter() - start:.1f} s): bf16 autocast {m.speedup:.2f}x the speed "
        f"of fp32 (best step {m.fp32_s * 1e3:.0f} vs {m.bf16_s * 1e3:.0f} ms) -> auto chooses "
        f"{m.precision}"
    )


def autocast_ctx(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def bench_dataset(name: str, args: argparse.Namespace) -> dict[str, object]:
    """Time one dataset's training step (fp32 and bf16) and eval forward; return the figures."""
    shp = SHAPES[name]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.manual_seed(0)
    att = torch.rand(shp.classes, shp.attributes)
    vectors = torch.randn(shp.attributes, VEC) if shp.word_vectors else None
    intervention = "random" if args.causal else "none"
    model = MSDN(
        att,
        vectors,
        D,
        normalize_v=shp.normalize_v,
        clip_negative_att=shp.clip_negative,
        intervention=intervention,
    ).to(device)
    # Give the zero-initialised maps non-trivial values so no path is degenerate.
    with torch.no_grad():
        for p in (model.W_2, model.W_1_1, model.W_2_1):
            p.normal_(0.0, 0.1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4, weight_decay=1e-4, momentum=shp.momentum)
    weights = LossWeights(
        lambda_sc=shp.lambda_sc, lambda_d=shp.lambda_d, lambda_causal=1.0 if args.causal else 0.0
    )
    unseen = list(range(shp.classes - shp.unseen, shp.classes))
    m = margin_vector(shp.classes, unseen, 1.0, device=device)
    mask = torch.zeros(shp.classes, dtype=torch.bool, device=device)
    mask[unseen] = True
    n_batches = 4
    xs = [torch.randn(shp.batch, D, H, W).clamp_min_(0).to(device) for _ in range(n_batches)]
    ys = [torch.randint(0, shp.classes - shp.unseen, (shp.batch,), device=device)]
    ys = ys * n_batches
    x_eval = torch.randn(EVAL_BATCH, D, H, W).clamp_min_(0).to(device)
    it = [0]

    def step(bf16: bool) -> None:
        i = it[0] % n_batches
        it[0] += 1
        opt.zero_grad(set_to_none=True)
        with autocast_ctx(device, bf16):
            out = model(xs[i])
            loss, _ = msdn_loss(out, ys[i], m, mask, weights)
        loss.backward()
        opt.step()

    def eval_fwd(bf16: bool) -> None:
        with torch.no_grad(), autocast_ctx(device, bf16):
            out = model(x_eval)
            MSDN.fuse(out.z_ava, out.z_vaa, 0.9).argmax(1)

    res: dict[str, object] = {"dataset": name, "device": device.type, "batch": shp.batch}
    res["flops_step"] = useful_flops(shp.batch, shp.attributes)
    res["flops_eval"] = useful_flops(EVAL_BATCH, shp.attributes) / 2
    res["order"] = "(V W) x" if model.vw_first else "V (W x)"
    precisions = (["fp32"] if device.type == "cpu" else []) + ([] if args.no_bf16 else ["bf16"])
    for prec in precisions:
        bf16 = prec == "bf16"
        ref = MatmulRef(device, torch.bfloat16 if bf16 else torch.float32)
        model.train()
        res[f"step_{prec}"] = paired(
            lambda bf16=bf16: step(bf16), res["flops_step"], ref, args.steps, args.warmup
        )
        model.eval()
        res[f"eval_{prec}"] = paired(
            lambda bf16=bf16: eval_fwd(bf16), res["flops_eval"], ref, args.steps, args.warmup
        )
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.type == "cuda":
        res["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
        res["gpu"] = torch.cuda.get_device_name()
    return res


def report(res: dict[str, object]) -> None:
    """Print one dataset's figures."""
    name, shp = str(res["dataset"]), SHAPES[str(res["dataset"])]
    fs, fe = float(res["flops_step"]), float(res["flops_eval"])
    print(
        f"\n== {name.upper()}: B={res['batch']} A={shp.attributes} C={shp.classes} D={D} R={R}; "
        f"contraction {res['order']}; useful work {fs / 1e9:.1f} GFLOP/step, "
        f"{fe / 1e9:.1f} GFLOP/eval-forward"
    )
    for prec in ("fp32", "bf16"):
        if f"step_{prec}" not in res:
            continue
        for label, key, flops in (("train step", "step", fs), (f"eval B={EVAL_BATCH}", "eval", fe)):
            r = res[f"{key}_{prec}"]
            assert isinstance(r, dict)
            print(
                f"  [{prec}] {label:<11} median {r['time'] * 1e3:7.1f} ms (best "
                f"{r['best_time'] * 1e3:7.1f}) {flops / r['time'] / 1e9:6.1f} GFLOP/s; "
                f"matmul alongside {r['mm_gflops']:6.1f} GFLOP/s; ratio {100 * r['ratio']:5.1f}%"
            )
    if "step_fp32" in res and "step_bf16" in res:
        step_x = res["step_fp32"]["time"] / res["step_bf16"]["time"]  # type: ignore[index]
        eval_x = res["eval_fp32"]["time"] / res["eval_bf16"]["time"]  # type: ignore[index]
        print(f"  bf16 autocast speed-up over fp32: train step {step_x:.2f}x, eval {eval_x:.2f}x")
    prec = "bf16" if res["device"] == "cuda" or "step_fp32" not in res else "fp32"
    st = res[f"step_{prec}"]["time"]  # type: ignore[index]
    ev = res[f"eval_{prec}"]["time"]  # type: ignore[index]
    steps = math.floor(shp.trainval * EPOCHS / shp.batch)
    evals = (EPOCHS + 1) * math.ceil(shp.test / EVAL_BATCH)
    total = steps * st + evals * ev
    print(
        f"  [{prec}] {1 / st:.2f} steps/s; {EPOCHS}-epoch run ({steps} steps + {EPOCHS + 1} evals "
        f"of {shp.test} images) = {total / 60:.1f} min"
    )
    print(f"  peak RSS {float(res['peak_rss_gb']):.2f} GiB", end="")
    if "peak_cuda_gb" in res:
        print(f"; peak CUDA memory {float(res['peak_cuda_gb']):.2f} GiB on {res['gpu']}", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--datasets", default="cub,sun,awa2,flo", help="comma-separated list")
    parser.add_argument("--causal", action="store_true", help="intervention random, λ_causal=1")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast timings")
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even if CUDA is present")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: torch's choice); with 1, time by process CPU time, "
        "which other jobs on shared cores do not inflate",
    )
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="run with glibc's mmap/trim thresholds raised, so freed tensors are reused instead "
        "of being returned to the OS and page-faulted in again at every step",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        if args.threads == 1:
            global CLOCK
            CLOCK = time.process_time
        print(json.dumps(bench_dataset(args.child, args)))
        return
    names = [n.strip().lower() for n in args.datasets.split(",") if n.strip()]
    bad = [n for n in names if n not in SHAPES]
    if bad:
        parser.error(f"--datasets: unknown {bad}; expected some of {sorted(SHAPES)}")
    cuda = torch.cuda.is_available() and not args.cpu
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if cuda else 'CPU'}; "
        f"CPU bf16 instructions: {cpu_has_bf16()}; "
        f"mkldnn bf16 supported: {mkldnn_bf16()}"
    )
    print(
        f"steps={args.steps} warmup={args.warmup} causal={'random, λ=1' if args.causal else 'off'}"
    )
    print(f"load average at start: {os.getloadavg()[0]:.2f} (other jobs may share these cores)")
    if not cuda and not args.no_bf16:
        print(auto_probe())
    env = dict(os.environ)
    if args.tuned_malloc:
        env.update(MALLOC_MMAP_THRESHOLD_=str(2**32), MALLOC_TRIM_THRESHOLD_=str(2**36))
        print("glibc malloc: MALLOC_MMAP_THRESHOLD_=2^32, MALLOC_TRIM_THRESHOLD_=2^36")
    if args.threads == 1:
        print("clock: process CPU time of the single compute thread (contention-robust)")
    passthrough = [f"--steps={args.steps}", f"--warmup={args.warmup}", f"--threads={args.threads}"]
    passthrough += ["--causal"] * args.causal + ["--no-bf16"] * args.no_bf16 + ["--cpu"] * args.cpu
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), f"--child={name}", *passthrough]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode != 0:
            print(f"\n== {name.upper()}: failed\n{proc.stderr[-2000:]}")
            continue
        report(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
