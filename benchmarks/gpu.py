"""Benchmark of msdn-tune on one NVIDIA GPU: a CUB-shape trial, concurrent trials, extraction.

A single prepared script for a rented GPU machine (sized for an H200) that has no network and only
python3 with torch (CUDA), numpy, pyarrow, h5py, pyyaml, click, rich and torchvision. It runs from
a plain checkout (no install: the repository root is put on sys.path) and imports no Ray, Optuna
or MLflow: every process it starts reports the modules it imported, and the run fails loudly if
one of those three is among them. Each part gets a share of the time budget (``--budget``, 450 s:
the whole run stays under 8 minutes) and says what it could not finish in it. It measures:

(a) One trial at CUB's shapes (200 classes, 312 attributes, 2048 x 14 x 14 maps, batch 50, the
    published CUB recipe ``TrainConfig.for_dataset("cub")``, ``selection: official``) with the
    real Trainer, in bf16 and in fp32 (``precision``): the median training step (synchronised,
    steps of the first epoch left out as warm-up) and the wall time of 30 epochs. The store is
    made by the project's synthetic generator (``cub-like``: 11,788 images, 9.5 GB float16). Its
    speed is measured first; when the whole store would not be written within its share of the
    time, a reduced store of N images (the same classes, attributes, channels and regions) is
    written instead, and the 30-epoch time is PROJECTED from the measured per-epoch train and
    eval times scaled to CUB's split sizes (7057 trainval, 1764 + 2967 test). The output says
    which of the two each figure is.
(b) The aggregate throughput of N = 1, 2, 4, 8, 16 concurrent trials on the one GPU, each a
    separate process (this script in a worker mode) training the same store with the real
    Trainer for a few epochs (``--epochs-concurrent``). The trials build their model and load
    their data, run one warm-up step, then wait at a barrier, so that process start-up is not
    counted: trial-epochs per second over the window from the first start to the last end, its
    ratio to N = 1, and each trial's peak GPU memory (allocated and reserved). Once more under
    CUDA MPS, at ``--mps-n`` trials, when ``nvidia-cuda-mps-control`` exists and starts.
(c) ``data extract``'s network: images per second of the built-in ResNet-101 trunk (random
    weights) on random 448 x 448 batches of 64, in fp32 with cuDNN autotuning as
    msdn_tune/data/extract.py runs it (the copy to the GPU and the features back to the host
    included, image decoding not), and under bf16 autocast for comparison (extract.py does not
    use it); and, when torchvision imports, the largest difference between our trunk's layer-4
    maps and torchvision's ``resnet101(weights=None)`` children[:-2] holding the same weights,
    in fp32 (TF32 off), relative to the largest map value.

Targets (from the issue), printed next to the figures: a 30-epoch CUB-shape trial <= 60 s on an
H200; >= 8 concurrent trials per GPU at >= 6x one trial's throughput; extraction parity within
1e-4 relative. Progress is printed as it goes, then a summary table; every figure is written to
``<out>/gpu-benchmark.json`` (``--out``: default ``$OUT`` when set, else ./gpu-results), rewritten
after each part so that a run cut short keeps what it measured. Worker logs are in ``<out>/logs``.
The store lives in a temporary folder (``--work``), never under ``--out``, and is deleted at the
end unless it was given with ``--store``.

``--smoke`` runs the same code paths on the CPU at tiny shapes (the ``tiny`` preset, 1-2 epochs,
N = 1 and 2, two 64 x 64 images) in well under a minute on 2 cores: tests/test_gpu_benchmark.py
runs it in CI.

    python3 benchmarks/gpu.py                          # on the GPU machine, under 8 minutes
    python3 benchmarks/gpu.py --parts b --images 4000  # one part again, on a smaller store
    .venv/bin/python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parent.parent))

if TYPE_CHECKING:
    from msdn_tune.train.trainer import Trainer

# The driver imports neither torch nor anything that does: a process that has touched CUDA
# would hold a context on the GPU (its memory, and a non-MPS client while MPS runs). torch and
# the trainer are imported inside the worker functions, each in its own process.

FORBIDDEN = ("ray", "optuna", "mlflow")
RESULTS_FILE = "gpu-benchmark.json"
EPOCHS = 30
CUB_TRAINVAL, CUB_TEST_SEEN, CUB_TEST_UNSEEN = 7057, 1764, 2967
TARGET_TRIAL_S = 60.0
TARGET_N = 8
TARGET_RATIO = 6.0
TARGET_PARITY = 1e-4
EXTRACT_SIZE, EXTRACT_BATCH = 448, 64  # extract.py's image_size and batch_size defaults
WRITE_OVERHEAD = 1.15
"""Store writing (fp16 cast, CRC-32, file writes) on top of the generator's own time, as a
factor: the probe times the generator and the cast only."""
SHARES = {"c": 30.0, "store": 125.0, "a": 130.0, "b": 155.0}
"""Relative time shares of the parts; each part gets its share of the time that is left."""
GRACE_S = 25.0
"""How long past its deadline a worker may run (it stops between epochs) before it is killed."""


def say(msg: str = "") -> None:
    """Print at once: the GPU machine's output is read while the run goes on."""
    print(msg, flush=True)


def forbidden_imports() -> list[str]:
    """The Ray, Optuna and MLflow modules this process imported (none may be)."""
    return sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)


def cpu_count() -> int:
    """The CPUs this process may run on (what a trial's thread count is divided from)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def peak_rss_gib() -> float:
    """This process's peak resident memory (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def number(value: object) -> bool:
    """Whether a figure was measured: a positive finite number."""
    return isinstance(value, int | float) and not isinstance(value, bool) and (
        math.isfinite(value) and value > 0)


def uniform_batches(rows: int, batch: int) -> int:
    """Batches per epoch of the Trainer's uniform sampler: it drops a last batch of one image."""
    return rows // batch + (1 if rows % batch >= 2 or (rows < 2 and rows % batch) else 0)


def eval_batches(seen: int, unseen: int, batch: int) -> int:
    """Evaluation batches per epoch: the seen and the unseen test rows are batched apart."""
    return math.ceil(seen / batch) + math.ceil(unseen / batch)


# ============================================================================================
# workers: each runs in its own process, started by the driver with --worker JOB.json
# ============================================================================================


def worker_main(job_path: str) -> int:
    """Run one job and write its result file; an exception leaves its traceback in the log."""
    job = json.loads(Path(job_path).read_text())
    kind = job["kind"]
    run = {"info": work_info, "single": work_single, "concurrent": work_concurrent,
           "extract": work_extract}[kind]
    result = run(job)
    result["forbidden_imports"] = forbidden_imports()
    result["peak_rss_gib"] = peak_rss_gib()
    write_json(Path(job["result"]), result)
    return 0


def work_info(job: dict[str, Any]) -> dict[str, Any]:
    """What the figures were measured on: torch, CUDA, the GPU and its settings."""
    import importlib.util

    import numpy as np
    import torch

    import msdn_tune

    info: dict[str, Any] = {
        # which msdn_tune the workers run: this checkout's (sys.path), not an installed one
        "msdn_tune": str(Path(msdn_tune.__file__).resolve().parent),
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "cpus": cpu_count(), "cuda_available": torch.cuda.is_available(),
        "torchvision_present": importlib.util.find_spec("torchvision") is not None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        try:  # torch >= 2.4 counts emulated bf16 unless told not to
            native = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:
            native = bool(torch.cuda.is_bf16_supported())
        info.update(
            gpu=props.name, gpus=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
            cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), bf16_native=native,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return info


def _sync(trainer: Trainer) -> None:
    """Wait for the GPU: a time taken without it measures only the queueing of kernels."""
    import torch

    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)


def _build_trainer(job: dict[str, Any]) -> tuple[Trainer | None, dict[str, Any]]:
    """The real Trainer on the store with the published CUB recipe, and how long it took.

    Returns (None, {"skipped": reason}) when the Trainer refuses the precision here (bf16 on a
    CPU without bf16 instructions): that is a fact about the machine, not a failure.
    """
    from msdn_tune.data.store import BenchmarkStore
    from msdn_tune.errors import ConfigError
    from msdn_tune.train.config import TrainConfig
    from msdn_tune.train.trainer import Trainer

    bench = BenchmarkStore.open(job["store"])
    cfg = TrainConfig.for_dataset("cub").replace(
        device=job["device"], selection="official", precision=job["precision"],
        threads=job["threads"], epochs=EPOCHS)
    t0 = time.perf_counter()
    try:
        trainer = Trainer(cfg, bench)
    except ConfigError as exc:
        return None, {"skipped": f"skipped: {exc}"}
    _sync(trainer)
    split = trainer.select_split
    facts = {
        "setup_s": time.perf_counter() - t0, "precision": trainer.precision,
        "device": str(trainer.device), "threads": job["threads"],
        # the Trainer keeps the training split (and the evaluation sets) on the GPU when they
        # fit its share; how much it kept changes every figure, so it is recorded
        "resident": trainer.resident_bytes > 0,
        "resident_mb": trainer.resident_bytes / 2**20,
        "train_rows": len(split.train), "eval_rows": [len(split.eval_seen), len(split.eval_unseen)],
        "train_batches": uniform_batches(len(split.train), cfg.batch_size),
        "eval_batches": eval_batches(len(split.eval_seen), len(split.eval_unseen),
                                     cfg.eval_batch_size),
    }
    return trainer, facts


def _gpu_memory(trainer: Trainer) -> dict[str, float | None]:
    """Peak GPU memory of this process (None on CPU): what N trials on one GPU must share."""
    import torch

    if trainer.device.type != "cuda":
        return {"peak_gpu_allocated_gib": None, "peak_gpu_reserved_gib": None}
    return {"peak_gpu_allocated_gib": torch.cuda.max_memory_allocated(trainer.device) / 2**30,
            "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved(trainer.device) / 2**30}


def work_single(job: dict[str, Any]) -> dict[str, Any]:
    """(a): one trial, epoch by epoch, with every training step timed (synchronised).

    On a full CUB-size store it runs all 30 epochs when they fit in the deadline (measured);
    otherwise it runs what fits (on a reduced store at most ``projection_epochs``) and projects.
    """
    trainer, out = _build_trainer(job)
    if trainer is None:
        return out
    marks: list[tuple[int, int, float]] = []

    def on_step(step: int, _total: int) -> None:
        _sync(trainer)
        marks.append((trainer.epoch + 1, step, time.perf_counter()))

    limit = EPOCHS if job["full"] else min(EPOCHS, job["projection_epochs"])
    limit = min(limit, job.get("max_epochs") or EPOCHS)  # --smoke: 2
    epochs: list[dict[str, float]] = []
    t_loop = time.perf_counter()
    while trainer.epoch < limit:
        if epochs and time.time() + 1.5 * epochs[-1]["wall_s"] > job["deadline"]:
            say(f"time budget: stopping after epoch {trainer.epoch} of {limit}")
            break
        t0 = time.perf_counter()
        m = trainer.run_epoch(on_step)
        _sync(trainer)
        epochs.append({"train_s": m["time/train_s"], "eval_s": m["time/eval_s"],
                       "wall_s": time.perf_counter() - t0})
        say(f"epoch {trainer.epoch}/{limit}: train {m['time/train_s']:.2f} s, eval "
            f"{m['time/eval_s']:.2f} s, val/H {m['val/H']:.1f}")
    t0 = time.perf_counter()
    trainer.finish()
    out["finish_s"] = time.perf_counter() - t0
    loop_s = time.perf_counter() - t_loop

    # steps: consecutive callbacks within an epoch; the first epoch is warm-up when there is
    # a later one (else its first two steps are dropped)
    later = len(epochs) > 1
    intervals = [t2 - t1 for (e1, s1, t1), (e2, s2, t2) in zip(marks, marks[1:], strict=False)
                 if e1 == e2 and s2 == s1 + 1 and (e2 > 1 if later else s2 > 3)]
    steady = epochs[1:] if later else epochs
    train_s = statistics.median(e["train_s"] for e in steady)
    eval_s = statistics.median(e["eval_s"] for e in steady)
    warmup_s = max(0.0, epochs[0]["wall_s"] - (train_s + eval_s)) if later else 0.0
    out.update(_gpu_memory(trainer))
    out.update(
        epochs_run=len(epochs), epochs=epochs, steps_timed=len(intervals),
        step_median_ms=statistics.median(intervals) * 1e3 if intervals else None,
        step_min_ms=min(intervals) * 1e3 if intervals else None,
        epoch_train_s=train_s, epoch_eval_s=eval_s, first_epoch_s=epochs[0]["wall_s"],
        loop_s=loop_s)
    if job["full"] and len(epochs) == EPOCHS:
        out["wall_30_epochs_s"] = loop_s
        out["wall_30_kind"] = "measured"
        out["wall_30_how"] = (f"measured: {EPOCHS} epochs (train + eval each) and finish() on "
                              f"the full store, setup {out['setup_s']:.1f} s not included")
        return out
    cub_train = uniform_batches(CUB_TRAINVAL, 50)
    cub_eval = eval_batches(CUB_TEST_SEEN, CUB_TEST_UNSEEN, 100)
    f_train = cub_train / out["train_batches"]
    f_eval = cub_eval / out["eval_batches"]
    out["wall_30_epochs_s"] = (EPOCHS * (train_s * f_train + eval_s * f_eval) + warmup_s
                               + out["finish_s"])
    out["wall_30_kind"] = "projected"
    out["wall_30_how"] = (
        f"PROJECTED from {len(epochs)} measured epoch(s) on a store of {out['train_rows']} "
        f"train / {sum(out['eval_rows'])} test rows: {EPOCHS} x (median train {train_s:.2f} s x "
        f"{cub_train}/{out['train_batches']} batches + median eval {eval_s:.2f} s x "
        f"{cub_eval}/{out['eval_batches']} batches) + first-epoch warm-up {warmup_s:.2f} s + "
        f"finish {out['finish_s']:.2f} s")
    return out


def _warm_up(trainer: Trainer) -> None:
    """One forward and backward pass of the model on random maps, outside the timed window, so
    that the first epoch of a short run does not carry the one-off kernel and library set-up."""
    import torch

    bench = trainer.bench
    x = torch.rand(trainer.cfg.batch_size, bench.channels, bench.regions, device=trainer.device)
    with torch.autocast(trainer.device.type, dtype=torch.bfloat16,
                        enabled=trainer.precision == "bf16"):
        out = trainer.model(x)
        loss = out.z_ava.float().mean() + out.z_vaa.float().mean()
    loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    _sync(trainer)


def work_concurrent(job: dict[str, Any]) -> dict[str, Any]:
    """(b): one of N trials started together: build, warm up, wait at the barrier, train.

    Stops between epochs when the next one would end past the deadline, and says so.
    """
    trainer, out = _build_trainer(job)
    if trainer is None:
        return out
    _warm_up(trainer)
    barrier = Path(job["barrier"])
    (barrier / f"ready-{job['index']}").touch()
    go = barrier / "go"
    while not go.exists():
        if time.time() > job["deadline"] + GRACE_S:
            raise RuntimeError("the driver never gave the start signal (time budget)")
        time.sleep(0.02)
    deadline = float(json.loads(go.read_text())["deadline"])  # when the epochs must end
    walls: list[float] = []
    start = time.time()
    for _ in range(job["epochs"]):
        if walls and time.time() + walls[-1] > deadline:
            say(f"time budget: stopping after epoch {len(walls)} of {job['epochs']}")
            break
        t0 = time.perf_counter()
        m = trainer.run_epoch()
        _sync(trainer)
        walls.append(time.perf_counter() - t0)
        say(f"epoch {len(walls)}: train {m['time/train_s']:.2f} s, eval {m['time/eval_s']:.2f} s")
    out.update(_gpu_memory(trainer))
    out.update(start=start, end=time.time(), epochs_done=len(walls), epoch_walls=walls)
    return out


def work_extract(job: dict[str, Any]) -> dict[str, Any]:
    """(c): the trunk's images per second, as extract.py runs it, and torchvision parity."""
    import torch

    from msdn_tune.data.resnet import ResNet101Trunk
    from msdn_tune.train.precision import bf16_supported

    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    cuda = device.type == "cuda"
    size, batch = job["size"], job["batch"]
    deadline = job["deadline"]
    torch.manual_seed(0)
    model = ResNet101Trunk().to(device).eval()
    if cuda:
        torch.backends.cudnn.benchmark = True  # as extract.py's _run
    x_host = torch.randn(batch, 3, size, size)
    if cuda:
        x_host = x_host.pin_memory()  # extract.py's DataLoader pins its batches on CUDA

    def one(bf16: bool) -> Any:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                     enabled=bf16):
            return model(x_host.to(device, non_blocking=True)).float().cpu().numpy()

    def rate(bf16: bool, seconds: float) -> dict[str, Any]:
        for _ in range(job["warmup"]):
            one(bf16)
        n, t0 = 0, time.perf_counter()
        while n < job["min_batches"] or (n < job["max_batches"]
                                         and time.perf_counter() - t0 < seconds):
            feats = one(bf16)
            n += 1
        dt = time.perf_counter() - t0
        grid = size // 32
        if feats.shape != (batch, 2048, grid, grid):
            raise RuntimeError(f"trunk output shape {feats.shape}, expected "
                               f"{(batch, 2048, grid, grid)}")
        say(f"{'bf16' if bf16 else 'fp32'}: {n} batches of {batch} in {dt:.2f} s = "
            f"{n * batch / dt:.1f} images/s")
        return {"images_per_s": n * batch / dt, "batches": n, "batch_ms": dt / n * 1e3}

    out: dict[str, Any] = {"image_size": size, "batch": batch, "device": str(device),
                           "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    left = max(1.0, deadline - time.time())
    out["fp32"] = rate(False, 0.45 * left)
    if bf16_supported(device):
        out["bf16"] = rate(True, 0.4 * max(1.0, deadline - time.time()))
    else:
        out["bf16"] = {"skipped": f"skipped: {device} has no native bf16"}
    out["parity"] = _parity(device, size)
    say(f"parity: {out['parity']}")
    return out


def _parity(device: Any, size: int) -> dict[str, Any]:
    """Our trunk against torchvision's resnet101 children[:-2] with the same state_dict.

    torchvision's random weights are loaded into ours (strict: every name and shape must match),
    with its batch-norm weights, biases and running statistics randomised first, so that a
    swapped or mis-named layer changes the output. Both run in fp32 with TF32 off, so the only
    differences left are summation order. The figure is max |ours - torchvision| over max
    |torchvision|: an element-wise ratio is meaningless at the zeros a ReLU leaves.
    """
    import torch
    from torch import nn

    from msdn_tune.data.resnet import ResNet101Trunk

    try:
        import torchvision
    except ImportError:
        return {"status": "skipped: torchvision not installed"}
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails here
        return {"status": f"skipped: torchvision does not import ({type(exc).__name__}: "
                          f"{str(exc)[:120]})"}
    gen = torch.Generator().manual_seed(1)
    tv = torchvision.models.resnet101(weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    reference = nn.Sequential(*list(tv.children())[:-2]).to(device).eval()
    ours = ResNet101Trunk()
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")},
                         strict=True)
    ours = ours.to(device).eval()
    x = torch.randn(2, 3, size, size, generator=gen).to(device)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            a = ours(x).double()
            b = reference(x).double()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return {"status": "failed: non-finite layer-4 maps", "torchvision": torchvision.__version__}
    scale = float(b.abs().max())
    rel = float((a - b).abs().max()) / scale if scale > 0 else math.inf
    return {"status": "ok" if rel <= TARGET_PARITY else "over target", "max_rel_diff": rel,
            "max_abs_value": scale, "torchvision": torchvision.__version__,
            "shape": list(b.shape)}


# ============================================================================================
# the driver
# ============================================================================================


@dataclass
class Worker:
    """One worker process the driver started, its files and how it ended."""

    name: str
    proc: subprocess.Popen[bytes]
    result: Path
    log: Path
    echo: bool
    read: int = 0
    killed: bool = False
    final: dict[str, Any] | None = None

    def echo_log(self) -> None:
        """Print the log lines written since the last call, prefixed with the worker's name."""
        if not self.echo:
            return
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.read)
                data = fh.read()
        except OSError:
            return
        cut = data.rfind(b"\n") + 1
        self.read += cut
        for line in data[:cut].decode(errors="replace").splitlines():
            if line.strip():
                say(f"    [{self.name}] {line}")

    def outcome(self) -> dict[str, Any]:
        """The worker's result, or {"error": why} from its log's last line; read once, while
        the result file still exists (the work folder is deleted at the end)."""
        if self.final is None:
            if self.killed:
                self.final = {"ok": False, "error": "killed: ran past its time budget"}
            elif self.result.is_file():
                self.final = {"ok": True, **json.loads(self.result.read_text())}
            else:
                lines = self.log.read_text(errors="replace").splitlines()
                tail = [ln for ln in lines if ln.strip()]
                why = tail[-1].strip() if tail else f"exit status {self.proc.returncode}"
                self.final = {"ok": False, "error": f"failed: {why[:300]}"}
        return self.final


@dataclass
class Run:
    """The driver's state: settings, folders, the deadline and every figure so far."""

    args: argparse.Namespace
    out: Path
    work: Path
    deadline: float
    device: str
    results: dict[str, Any] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    def stamp(self) -> str:
        """Seconds since the run started, for the section headers."""
        return f"[{time.time() - self.deadline + self.args.budget:.0f} s]"

    def left(self) -> float:
        """Seconds left of the whole budget."""
        return self.deadline - time.time()

    def share(self, part: str, remaining: list[str]) -> float:
        """This part's share of the time left, given the parts still to run after it."""
        total = sum(SHARES[p] for p in [part, *remaining])
        return max(5.0, self.left() * SHARES[part] / total)

    def save(self) -> None:
        """Rewrite the results file: a run cut short still leaves what it measured."""
        write_json(self.out / RESULTS_FILE, self.results)

    def start(self, name: str, job: dict[str, Any], *, echo: bool = True,
              env: dict[str, str] | None = None) -> Worker:
        """Start this script as a worker for `job`; its output goes to <out>/logs/<name>.log."""
        for sub in ("jobs", "results"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        result = self.work / "results" / f"{name}.json"
        result.unlink(missing_ok=True)
        job_path = self.work / "jobs" / f"{name}.json"
        job_path.write_text(json.dumps({**job, "result": str(result)}))
        log = self.out / "logs" / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, str(SCRIPT), "--worker", str(job_path)],
                                    stdout=fh, stderr=subprocess.STDOUT, env=full_env)
        worker = Worker(name, proc, result, log, echo)
        self.workers.append(worker)
        return worker

    def wait(self, workers: list[Worker], kill_at: float) -> list[dict[str, Any]]:
        """Wait for the workers (echoing their logs), kill those still running at `kill_at`."""
        while any(w.proc.poll() is None for w in workers):
            for w in workers:
                w.echo_log()
            if time.time() > kill_at:
                for w in workers:
                    if w.proc.poll() is None:
                        w.proc.kill()
                        w.killed = True
                        w.proc.wait()
                break
            time.sleep(0.25)
        for w in workers:
            w.echo_log()
        return [w.outcome() for w in workers]


def part_info(run: Run) -> None:
    """What the run measures on, from a worker (the driver never touches CUDA)."""
    w = run.start("info", {"kind": "info"}, echo=False)
    info = run.wait([w], time.time() + 180)[0]
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "name,driver_version,compute_mode,memory.total"
        try:
            proc = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=30, check=False)
            info["nvidia_smi"] = (proc.stdout.strip() or proc.stderr.strip())[:300]
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    run.results["env"] = info
    if not info.get("ok"):
        run.save()
        raise SystemExit(f"the info worker failed: {info.get('error')}")
    gpu = (f"{info['gpu']} ({info['gpu_memory_gib']} GiB, sm {info['capability']}, CUDA "
           f"{info['cuda']}, cuDNN {info['cudnn']}, bf16 native {info['bf16_native']})"
           if info.get("cuda_available") else "no CUDA device")
    say(f"python {info['python']}, torch {info['torch']}, {info['cpus']} CPUs; {gpu}")
    if "nvidia_smi" in info:
        say(f"nvidia-smi: {info['nvidia_smi']}")


def part_extract(run: Run, budget: float) -> None:
    """(c) in one worker process."""
    smoke = run.args.smoke
    job = {"kind": "extract", "device": run.device, "deadline": time.time() + budget,
           "size": 64 if smoke else EXTRACT_SIZE, "batch": 2 if smoke else EXTRACT_BATCH,
           "warmup": 1 if smoke else 3, "min_batches": 2, "max_batches": 2 if smoke else 400,
           "threads": 1 if smoke else cpu_count()}
    say(f"\n{run.stamp()} == (c) extraction: ResNet-101 trunk, {job['size']} x {job['size']} "
        f"images in batches of {job['batch']} on {run.device} (budget {budget:.0f} s)")
    w = run.start("extract", job)
    res = run.wait([w], time.time() + budget + GRACE_S)[0]
    run.results["extract"] = res
    if not res["ok"]:
        say(f"  extraction {res['error']}")


def probe_generation(spec: Any) -> float:
    """Images per second of the synthetic generator on this CPU (up to three chunks, timed)."""
    from msdn_tune.data.synth import build_benchmark, iter_feature_chunks

    chunks = iter_feature_chunks(build_benchmark(spec))
    timed: list[tuple[int, float]] = []
    for _ in range(3):
        t0 = time.perf_counter()
        chunk = next(chunks, None)
        if chunk is None:
            break
        chunk.astype("float16")  # the store's dtype: the cast is part of writing
        timed.append((len(chunk), time.perf_counter() - t0))
    if len(timed) > 1:  # the first chunk carries one-off costs when others follow
        timed = timed[1:]
    return sum(n for n, _ in timed) / max(sum(t for _, t in timed), 1e-9)


def part_store(run: Run, budget: float) -> None:
    """The CUB-shape store: reused (--store), or generated, whole when it fits the budget."""
    from msdn_tune.data.store import BenchmarkStore
    from msdn_tune.data.synth import PRESETS, generate

    args = run.args
    preset = PRESETS["tiny" if args.smoke else "cub-like"]
    info: dict[str, Any] = {"preset": preset.name}
    if args.store:
        path = Path(args.store).expanduser().absolute()
        info["how"] = "given with --store"
    else:
        say(f"\n{run.stamp()} == store: the {preset.name} preset ({preset.n_images} images x "
            f"{preset.channels} x {preset.regions}), budget {budget:.0f} s")
        t_part = time.perf_counter()
        rate = probe_generation(preset)
        full_s = preset.n_images / rate * WRITE_OVERHEAD
        budget -= time.perf_counter() - t_part  # what the probe took
        info.update(probe_images_per_s=rate, full_store_estimate_s=full_s)
        if args.images:
            n, why = args.images, "set by --images"
            if n < 5 * preset.n_classes:  # the generator's own lower bound
                raise ValueError(f"--images {n}: the {preset.name} store needs at least "
                                 f"{5 * preset.n_classes} images ({preset.n_classes} classes)")
        elif full_s <= budget:
            n, why = preset.n_images, f"the whole store fits the budget ({full_s:.0f} s estimated)"
        else:
            fit = int(rate / WRITE_OVERHEAD * budget) // 100 * 100
            n = max(5 * preset.n_classes, fit)
            why = (f"the whole store would take ~{full_s:.0f} s, over the {budget:.0f} s budget: "
                   f"a reduced store of {n} images")
        row_bytes = preset.channels * preset.regions * 2
        room = int(shutil.disk_usage(run.work).free * 0.9) // row_bytes
        if n > room:  # a store that cannot be written would cost every part after it
            n, why = max(5 * preset.n_classes, room // 100 * 100), (
                f"{why}; only {room} images fit the free disk space of {run.work}: {n} images")
        say(f"  generator: {rate:.0f} images/s on this CPU; {why}")
        spec = preset if n == preset.n_images else dataclasses.replace(
            preset, n_images=n, name=f"{preset.name}-{n}")
        path = run.work / "store"
        expect = spec.feature_bytes_float16
        done = threading.Event()

        def heartbeat() -> None:
            t0 = time.time()
            while not done.wait(15.0):
                written = sum(p.stat().st_size for p in run.work.glob(".store.tmp-*/*.arrow"))
                say(f"  ... generating: {time.time() - t0:.0f} s, {written / 2**30:.2f} of "
                    f"{expect / 2**30:.2f} GiB")

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        t0 = time.perf_counter()
        try:
            generate(spec, path, progress=False)
        finally:
            done.set()
        seconds = time.perf_counter() - t0
        info.update(how=why, generate_s=seconds, generate_images_per_s=n / seconds)
        say(f"  wrote {n} images ({expect / 2**30:.2f} GiB) in {seconds:.1f} s "
            f"({n / seconds:.0f} images/s)")
    bench = BenchmarkStore.open(path)
    info.update(
        path=str(path), images=bench.n_images, classes=bench.n_classes,
        attributes=bench.n_attributes, channels=bench.channels, regions=bench.regions,
        dtype=str(bench.dtype), full=bench.n_images == preset.n_images,
        splits={k: len(v) for k, v in bench.splits.items()})
    bench.close()
    run.results["store"] = info
    kind = "FULL" if info["full"] else "REDUCED"
    say(f"  store: {kind} {preset.name}, {info['images']} images, {info['classes']} classes, "
        f"{info['attributes']} attributes, {info['channels']} x {info['regions']}; trainval "
        f"{info['splits']['trainval']}, test {info['splits']['test_seen']} + "
        f"{info['splits']['test_unseen']} (CUB: {CUB_TRAINVAL}, {CUB_TEST_SEEN} + "
        f"{CUB_TEST_UNSEEN})")


def part_single(run: Run, budget: float) -> None:
    """(a): bf16 then fp32, each a worker process (clean GPU memory figures)."""
    store = run.results["store"]
    smoke = run.args.smoke
    say(f"\n{run.stamp()} == (a) one trial, CUB recipe (batch 50, selection official), "
        f"{run.device}, on the {'full' if store['full'] else 'REDUCED'} store (budget "
        f"{budget:.0f} s)")
    end = time.time() + budget
    run.results["single"] = {}
    for precision, part in (("bf16", 0.65), ("fp32", 1.0)):
        deadline = time.time() + part * (end - time.time())
        job = {"kind": "single", "store": store["path"], "device": run.device,
               "precision": precision, "threads": 1 if smoke else cpu_count(),
               "full": store["full"], "projection_epochs": run.args.projection_epochs,
               "max_epochs": 2 if smoke else EPOCHS, "deadline": deadline}
        say(f"  -- {precision} (until {deadline - time.time():.0f} s from now)")
        w = run.start(f"single-{precision}", job)
        res = run.wait([w], deadline + GRACE_S)[0]
        run.results["single"][precision] = res
        if res.get("skipped"):
            say(f"  {precision}: {res['skipped']}")
        elif not res["ok"]:
            say(f"  {precision}: {res['error']}")
        else:
            step = res["step_median_ms"] or math.nan
            say(f"  {precision}: step median {step:.1f} ms over {res['steps_timed']} steps; epoch "
                f"train {res['epoch_train_s']:.2f} s + eval {res['epoch_eval_s']:.2f} s; "
                f"30 epochs {res['wall_30_epochs_s']:.1f} s ({res['wall_30_how']}); setup "
                f"{res['setup_s']:.1f} s; training split resident on the device: "
                f"{res['resident']}")
        run.save()


def mps_start(run: Run) -> tuple[dict[str, str] | None, str]:
    """Start an MPS control daemon of our own: (environment for its clients, what happened)."""
    exe = shutil.which("nvidia-cuda-mps-control")
    if exe is None:
        return None, "not available (nvidia-cuda-mps-control not found on PATH)"
    if run.device == "cpu":
        return None, "not available (no CUDA device in this run)"
    base = run.out / "mps"
    # a Unix socket path has at most 107 bytes: a long --out gets a short temporary pipe dir
    pipe = base / "pipe" if len(str(base)) < 70 else Path(tempfile.mkdtemp(prefix="mps-"))
    log = base / "log"
    for d in (pipe, log):
        d.mkdir(parents=True, exist_ok=True)
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(log)}
    try:
        proc = subprocess.run([exe, "-d"], env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"not available (nvidia-cuda-mps-control -d: {exc})"
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip()[:200] or f"exit status {proc.returncode}"
        return None, f"not available (nvidia-cuda-mps-control -d: {why})"
    time.sleep(1.0)
    return env, f"daemon started (pipes {pipe}, logs {log})"


def mps_query(env: dict[str, str], command: str) -> str:
    """Send one command to our MPS control daemon (`echo CMD | nvidia-cuda-mps-control`)."""
    exe = shutil.which("nvidia-cuda-mps-control") or "nvidia-cuda-mps-control"
    try:
        proc = subprocess.run([exe], input=command + "\n", env={**os.environ, **env},
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed: {exc}"
    return (proc.stdout + proc.stderr).strip()


def mps_stop(env: dict[str, str]) -> str:
    """Stop our daemon (`echo quit | nvidia-cuda-mps-control`) and remove its pipe folder."""
    said = mps_query(env, "quit")
    time.sleep(1.0)
    pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
    shutil.rmtree(pipe, ignore_errors=True)  # sockets and FIFOs: nothing to bring back
    return said


def run_round(run: Run, n: int, budget: float, tag: str,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """N concurrent trials behind a barrier; their aggregate throughput and memory."""
    smoke = run.args.smoke
    barrier = run.work / "barrier" / tag
    shutil.rmtree(barrier, ignore_errors=True)
    barrier.mkdir(parents=True)
    threads = 1 if smoke else max(1, cpu_count() // n)
    deadline = time.time() + budget
    epochs = run.args.epochs_concurrent
    precision = run.args.precision_concurrent or ("fp32" if smoke else "bf16")
    workers = []
    for i in range(n):
        job = {"kind": "concurrent", "store": run.results["store"]["path"], "device": run.device,
               "precision": precision, "threads": threads, "epochs": epochs,
               "barrier": str(barrier), "index": i, "deadline": deadline}
        workers.append(run.start(f"{tag}-trial{i}", job, echo=(i == 0),
                                 env={**(env or {}), "OMP_NUM_THREADS": str(threads)}))
    # the start signal once every trial is ready (or has died): start-up is not counted
    while time.time() < deadline:
        ready = sum((barrier / f"ready-{i}").exists() for i in range(n))
        dead = sum(w.proc.poll() is not None for w in workers)
        if ready + dead >= n:
            break
        time.sleep(0.05)
    ready_s = budget - (deadline - time.time())
    # a slow start-up must not leave the epochs no time at all: they get at least half the
    # round's budget (later parts' shares shrink by what this takes)
    deadline = max(deadline, time.time() + 0.5 * budget)
    go = barrier / "go"
    write_json(go, {"deadline": deadline})
    outs = run.wait(workers, deadline + GRACE_S)
    res: dict[str, Any] = {"n": n, "threads_per_trial": threads, "precision": precision,
                           "epochs_per_trial": epochs, "ready_s": ready_s, "trials": outs}
    done = [o for o in outs if o["ok"] and not o.get("skipped") and o["epochs_done"] > 0]
    failed = [o for o in outs if not o["ok"] or o.get("skipped")]
    if done:
        window = max(o["end"] for o in done) - min(o["start"] for o in done)
        total = sum(o["epochs_done"] for o in done)
        res["trial_epochs_per_s"] = total / window
        res["window_s"] = window
        mem = [o["peak_gpu_allocated_gib"] for o in done if o["peak_gpu_allocated_gib"]]
        res["peak_gpu_allocated_gib_max"] = max(mem) if mem else None
        mem = [o["peak_gpu_reserved_gib"] for o in done if o["peak_gpu_reserved_gib"]]
        res["peak_gpu_reserved_gib_max"] = max(mem) if mem else None
        res["resident"] = sum(bool(o["resident"]) for o in done)
    short = [o for o in done if o["epochs_done"] < epochs]
    if failed:
        why = failed[0].get("error") or failed[0].get("skipped")
        res["status"] = f"{len(failed)} of {n} trials did not finish: {why}"
    elif short:
        res["status"] = (f"partial: {len(short)} of {n} trials stopped early for the time budget "
                         f"({min(o['epochs_done'] for o in short)} of {epochs} epochs)")
    else:
        res["status"] = "ok"
    return res


def part_concurrent(run: Run, budget: float) -> None:
    """(b): N = 1, 2, 4, ... trials at once, then once under MPS."""
    args = run.args
    ns = [int(x) for x in args.concurrency.split(",") if x.strip()]
    rounds: list[tuple[int, bool]] = [(n, False) for n in ns]
    if args.mps_n > 0:
        rounds.append((args.mps_n, True))
    say(f"\n{run.stamp()} == (b) concurrent trials on one device: N = {ns}, "
        f"{args.epochs_concurrent} epoch(s) each, then MPS at N = {args.mps_n} (budget "
        f"{budget:.0f} s)")
    end = time.time() + budget
    section: dict[str, Any] = {"n_list": ns, "epochs_per_trial": args.epochs_concurrent,
                               "rounds": {}, "mps": {"status": "not tried (--mps-n 0)"}}
    run.results["concurrent"] = section
    weights = [4.0 + n for n, _ in rounds]  # start-up and GPU sharing grow with N
    for i, (n, mps) in enumerate(rounds):
        tag = f"mps-n{n}" if mps else f"n{n}"
        if end - time.time() < 5.0:
            skipped = {"n": n, "status": "skipped: the time budget was spent"}
            if mps:
                section["mps"] = {"status": "not tried (the time budget was spent)", "n": n}
            else:
                section["rounds"][tag] = skipped
            say(f"  N = {n}{' (MPS)' if mps else ''}: {skipped['status']}")
            continue
        share = max(5.0, (end - time.time()) * weights[i] / sum(weights[i:]))
        env = None
        if mps:
            env, status = mps_start(run)
            section["mps"] = {"status": status, "n": n}
            say(f"  MPS: {status}")
            if env is None:
                continue
        say(f"  -- N = {n}{' under MPS' if mps else ''} (budget {share:.0f} s)")
        try:
            res = run_round(run, n, share, tag, env)
        finally:
            if env is not None:
                section["mps"]["servers_seen"] = mps_query(env, "get_server_list")
                section["mps"]["quit"] = mps_stop(env)
        rate = res.get("trial_epochs_per_s")
        base = rate if tag == "n1" else section["rounds"].get("n1", {}).get("trial_epochs_per_s")
        if number(rate) and number(base):
            res["ratio_to_n1"] = rate / base
        if mps:
            section["mps"]["round"] = res
            if "trial_epochs_per_s" in res:
                section["mps"]["status"] = "ran"
        else:
            section["rounds"][tag] = res
        say(f"  N = {n}{' (MPS)' if mps else ''}: {round_line(res)}")
        run.save()


def round_line(res: dict[str, Any]) -> str:
    """One round's figures in one line, its status last."""
    rate = res.get("trial_epochs_per_s")
    if not number(rate):
        return res["status"]
    mem = res.get("peak_gpu_allocated_gib_max")
    memory = (f"{mem:.2f} GiB allocated, {res['peak_gpu_reserved_gib_max']:.2f} GiB reserved"
              if number(mem) else "not measured (no CUDA)")
    return (f"{rate:.3f} trial-epochs/s aggregate ({res.get('ratio_to_n1', math.nan):.2f}x N=1) "
            f"over {res['window_s']:.1f} s; all ready after {res['ready_s']:.1f} s; peak memory "
            f"per trial {memory}; training split on the device in {res['resident']} of "
            f"{res['n']}; {res['status']}")


# -------------------------------------------------------------------------------- summary


def collect_figures(results: dict[str, Any]) -> dict[str, Any]:
    """Every figure under one flat name: a number where measured, else a reason (a string)."""
    fig: dict[str, Any] = {}
    cpu = "not measured: no CUDA"
    single = results.get("single", {})
    for p in ("bf16", "fp32"):
        r = single.get(p, {"ok": False, "error": "not run"})
        for key in ("step_median_ms", "epoch_train_s", "epoch_eval_s", "wall_30_epochs_s",
                    "peak_gpu_allocated_gib", "peak_gpu_reserved_gib"):
            why = r.get("skipped") or r.get("error") or (cpu if "gpu" in key else "not measured")
            fig[f"a.{p}.{key}"] = r.get(key) if number(r.get(key)) else why
        fig[f"a.{p}.wall_30_epochs_kind"] = r.get("wall_30_kind", "not measured")
    conc = results.get("concurrent", {})
    fig["b.n_list"] = conc.get("n_list", [])
    for n in fig["b.n_list"]:
        r = conc.get("rounds", {}).get(f"n{n}", {"status": "not run"})
        for key in ("trial_epochs_per_s", "ratio_to_n1", "peak_gpu_allocated_gib_max",
                    "peak_gpu_reserved_gib_max"):
            fig[f"b.n{n}.{key}"] = (r[key] if number(r.get(key)) else
                                    cpu if "gpu" in key and "trial_epochs_per_s" in r
                                    else r["status"])
    mps = conc.get("mps", {})
    fig["b.mps"] = mps.get("status", "not run")
    if "round" in mps:
        r = mps["round"]
        for key in ("trial_epochs_per_s", "ratio_to_n1"):
            fig[f"b.mps_n{mps['n']}.{key}"] = r[key] if number(r.get(key)) else r["status"]
    ext = results.get("extract", {"ok": False, "error": "not run"})
    for p in ("fp32", "bf16"):
        r = ext.get(p, {})
        fig[f"c.extract_images_per_s_{p}"] = (
            r["images_per_s"] if number(r.get("images_per_s"))
            else r.get("skipped") or ext.get("error", "not measured"))
    parity = ext.get("parity", {})
    fig["c.parity_max_rel_diff"] = (parity["max_rel_diff"] if "max_rel_diff" in parity
                                    else parity.get("status") or ext.get("error", "not run"))
    return fig


def verdicts(results: dict[str, Any], fig: dict[str, Any], smoke: bool) -> list[list[str]]:
    """The summary table: part, figure, value, target, verdict (n/a on a smoke run)."""

    def v(ok: bool | None) -> str:
        return "n/a (smoke)" if smoke else "-" if ok is None else "✔" if ok else "✘"

    def fmt(x: Any, unit: str = "", digits: int = 2) -> str:
        return f"{x:.{digits}f}{unit}" if number(x) else str(x)

    def pair(allocated: Any, reserved: Any) -> str:
        if not (number(allocated) or number(reserved)):
            return str(allocated)
        return f"{fmt(allocated, ' GiB')} / {fmt(reserved, ' GiB')}"

    rows: list[list[str]] = []
    store = results.get("store", {})
    kind_store = "full store" if store.get("full") else f"reduced store ({store.get('images')})"
    for p in ("bf16", "fp32"):
        wall = fig[f"a.{p}.wall_30_epochs_s"]
        kind = fig[f"a.{p}.wall_30_epochs_kind"].upper()
        rows.append([f"(a) {p}", "training step, median", fmt(fig[f"a.{p}.step_median_ms"], " ms",
                                                               1), "", ""])
        rows.append([f"(a) {p}", f"30-epoch wall, {kind} ({kind_store})", fmt(wall, " s", 1),
                     f"<= {TARGET_TRIAL_S:.0f} s",
                     v(wall <= TARGET_TRIAL_S if number(wall) else None)])
        rows.append([f"(a) {p}", "peak GPU memory allocated / reserved",
                     pair(fig[f"a.{p}.peak_gpu_allocated_gib"],
                          fig[f"a.{p}.peak_gpu_reserved_gib"]), "", ""])
    best = None
    for n in fig["b.n_list"]:
        rate, ratio = fig[f"b.n{n}.trial_epochs_per_s"], fig[f"b.n{n}.ratio_to_n1"]
        ok = None
        if n >= TARGET_N and number(ratio):
            ok = ratio >= TARGET_RATIO
            best = ok if best is None else best or ok
        rows.append([f"(b) N={n}", "trial-epochs/s aggregate; x N=1; peak GPU GiB (max trial)",
                     f"{fmt(rate, '', 3)}; {fmt(ratio, 'x')}; "
                     + pair(fig[f"b.n{n}.peak_gpu_allocated_gib_max"],
                            fig[f"b.n{n}.peak_gpu_reserved_gib_max"]),
                     f">= {TARGET_RATIO:.0f}x at N >= {TARGET_N}" if n >= TARGET_N else "",
                     v(ok)])
    mps = results.get("concurrent", {}).get("mps", {})
    if "round" in mps:
        r = mps["round"]
        ratio = r.get("ratio_to_n1")
        ok = ratio >= TARGET_RATIO if mps["n"] >= TARGET_N and number(ratio) else None
        rows.append([f"(b) MPS N={mps['n']}", "trial-epochs/s aggregate; x N=1 (without MPS)",
                     f"{fmt(r.get('trial_epochs_per_s'), '', 3)}; {fmt(ratio, 'x')}"
                     if "trial_epochs_per_s" in r else r["status"],
                     f">= {TARGET_RATIO:.0f}x" if mps["n"] >= TARGET_N else "", v(ok)])
    else:
        rows.append(["(b) MPS", "", f"MPS: {fig['b.mps']}", "", ""])
    rows.append(["(b)", f">= {TARGET_N} trials at >= {TARGET_RATIO:.0f}x one trial", "", "",
                 v(best)])
    rows.append(["(c)", "extraction fp32 (as extract.py), images/s",
                 fmt(fig["c.extract_images_per_s_fp32"], "", 1), "", ""])
    rows.append(["(c)", "extraction bf16 autocast (comparison), images/s",
                 fmt(fig["c.extract_images_per_s_bf16"], "", 1), "", ""])
    par = fig["c.parity_max_rel_diff"]
    rows.append(["(c)", "parity with torchvision, max rel. diff", fmt(par, "", 8) if number(par)
                 else f"parity: {par}", f"<= {TARGET_PARITY:g}",
                 v(par <= TARGET_PARITY if isinstance(par, float) else None)])
    return rows


def print_table(rows: list[list[str]]) -> None:
    """A plain text table: the output is read in logs, not in a terminal."""
    heads = ["part", "figure", "value", "target", "verdict"]
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    for r in [heads, ["-" * w for w in widths], *rows]:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# -------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="the same code paths on CPU at tiny shapes, in well under a minute")
    parser.add_argument("--out", default=None,
                        help="folder for the JSON and logs (default $OUT, else ./gpu-results)")
    parser.add_argument("--work", default=None,
                        help="folder for the store and job files (default: a temporary folder)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 450; smoke 150)")
    parser.add_argument("--parts", default="a,b,c", help="which of a, b, c to run")
    parser.add_argument("--store", default=None, help="use this store instead of generating one")
    parser.add_argument("--images", type=int, default=0,
                        help="generate a reduced store of this many images (default: decided "
                             "from the generator's measured speed)")
    parser.add_argument("--projection-epochs", type=int, default=4,
                        help="(a) on a reduced store: epochs measured for the projection")
    parser.add_argument("--concurrency", default=None, help="(b) N list (default 1,2,4,8,16)")
    parser.add_argument("--epochs-concurrent", type=int, default=None,
                        help="(b) epochs per trial (default 2; smoke 1)")
    parser.add_argument("--precision-concurrent", choices=("bf16", "fp32"), default=None,
                        help="(b) precision (default bf16, what auto picks on an H200; smoke fp32)")
    parser.add_argument("--mps-n", type=int, default=None,
                        help="(b) trials in the MPS round, 0 to skip it (default 8; smoke 2)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke = args.smoke
    args.budget = args.budget or (150.0 if smoke else 450.0)
    args.concurrency = args.concurrency or ("1,2" if smoke else "1,2,4,8,16")
    args.epochs_concurrent = args.epochs_concurrent or (1 if smoke else 2)
    if args.mps_n is None:
        args.mps_n = 2 if smoke else TARGET_N
    if smoke:
        args.projection_epochs = min(args.projection_epochs, 2)
    return args


def main() -> int:
    """Run the parts within the budget, print the summary, write the JSON; exit 3 on a
    forbidden import, 2 without a CUDA device (unless --smoke)."""
    args = parse_args()
    if args.worker:
        return worker_main(args.worker)
    t_start = time.time()
    out = Path(args.out or os.environ.get("OUT") or "gpu-results").expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    own_work = args.work is None
    work = Path(args.work or tempfile.mkdtemp(prefix="msdn-gpu-bench-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    run = Run(args, out, work, t_start + args.budget, "cpu" if args.smoke else "cuda")
    run.results.update(schema=1, mode="smoke" if args.smoke else "gpu", budget_s=args.budget,
                       parts=sorted(parts), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       targets={"trial_30_epochs_s": TARGET_TRIAL_S, "concurrent_n": TARGET_N,
                                "concurrent_ratio": TARGET_RATIO, "parity_rel": TARGET_PARITY})
    say(f"msdn-tune GPU benchmark ({'SMOKE: CPU, tiny shapes' if args.smoke else 'GPU'}), "
        f"budget {args.budget:.0f} s, parts {','.join(sorted(parts))}; results in "
        f"{out / RESULTS_FILE}")
    code = 0
    try:
        part_info(run)
        if not args.smoke and not run.results["env"].get("cuda_available"):
            say("no CUDA device here: this script measures a GPU (use --smoke on a CPU)")
            code = 2
        else:
            todo = [p for p in ("c", "store", "a", "b")
                    if p in parts or (p == "store" and parts & {"a", "b"})]
            errors: dict[str, str] = {}
            run.results["errors"] = errors
            for i, part in enumerate(todo):
                if part in ("a", "b") and "store" in errors:
                    errors[part] = "not run: no store"
                    continue
                budget = run.share(part, todo[i + 1:])
                try:  # one part's failure must not cost the others' figures
                    {"c": part_extract, "store": part_store, "a": part_single,
                     "b": part_concurrent}[part](run, budget)
                except Exception as exc:  # noqa: BLE001 - reported, then the next part
                    errors[part] = f"{type(exc).__name__}: {exc}"
                    say(f"!!! part {part} failed: {errors[part]}")
                run.save()
    finally:
        for w in run.workers:  # only the processes this run started
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    fig = collect_figures(run.results)
    run.results["figures"] = fig
    bad = {"driver": forbidden_imports()}
    bad.update({w.name: w.outcome().get("forbidden_imports", []) for w in run.workers})
    run.results["forbidden_imports"] = bad
    run.results["wall_s"] = time.time() - t_start
    say(f"\n== summary ({run.results['mode']}, {run.results['wall_s']:.0f} s of "
        f"{args.budget:.0f} s)")
    if "store" in run.results:
        s = run.results["store"]
        say(f"store: {'FULL' if s['full'] else 'REDUCED'} {s['preset']}, {s['images']} images; "
            f"30-epoch figures are "
            + ("MEASURED where all 30 epochs fit the budget, else PROJECTED" if s["full"]
               else "PROJECTED to CUB's split sizes"))
    print_table(verdicts(run.results, fig, args.smoke))
    offenders = {k: v for k, v in bad.items() if v}
    if offenders:
        shown = {k: sorted({m.split(".")[0] for m in v}) for k, v in offenders.items()}
        say(f"\n!!! FAILED: Ray, Optuna or MLflow was imported (by process: {shown}; every "
            f"module in {RESULTS_FILE})")
        code = 3
    else:
        say(f"\nimports: no ray, optuna or mlflow in the driver or any of its "
            f"{len(run.workers)} worker processes")
    run.save()
    say(f"figures written to {out / RESULTS_FILE}")
    return code


if __name__ == "__main__":
    sys.exit(main())
