"""Which precision a run trains in: ``auto`` (the default) measures it per machine.

Why measured and not read off the CPU's flags: whether bf16 autocast beats fp32 on a CPU depends
on its matrix units, not on what it advertises. A CUB-shape training step ran 3.0-3.3x faster
under bf16 on a CPU with AMX (bf16 tile units), but at 0.37-0.6x the speed of fp32 on a Xeon with
avx512_bf16 and no AMX, and 4.0x faster on an AMD EPYC with avx512_bf16 and no AMX (README,
Benchmarks). So on a CPU ``auto`` times a few training steps (forward, losses, backward) of the
real MSDN model at CUB's shapes in both precisions, after a warm-up, takes the best of a few
repeats of each so that one noisy step cannot flip the result, and chooses bf16 only when it is
clearly faster (:data:`MIN_SPEEDUP`). The probe takes well under two seconds on an idle 2-core
machine, and its times are cached per machine (:class:`MachineKey`: CPU model, the CPU flags
that matter, torch version, thread count) in the cache folder, so each machine pays it once and
another machine or torch measures again. A cache file that cannot be read or does not hold a
measurement for this key is measured again and replaced, never an error; one that cannot be
written leaves the run as it is (it measures again next time). Files are written to a temporary
name and renamed, so trials starting together on a fresh machine may both probe, harmlessly.

On CUDA, ``auto`` is bf16 where the GPU supports it natively (its tensor cores run bf16 at least
as fast as fp32), fp32 elsewhere, with no probe. A CPU without bf16 instructions, on which an
explicit ``bf16`` is refused, is fp32 with no probe either. ``fp32`` and ``bf16`` set explicitly
are taken as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from msdn_tune.cache import cache_root
from msdn_tune.errors import DataError, MsdnTuneError
from msdn_tune.model.losses import LossWeights, margin_vector, msdn_loss
from msdn_tune.model.msdn import MSDN
from msdn_tune.safeload import load_json

MIN_SPEEDUP = 1.15
"""How much faster bf16 must measure than fp32 to be chosen: below that, the gain is within what
a loaded machine's noise can fake, and fp32 is the safer numerics."""

CACHE_VERSION = 1
"""Version of the cache files' format; a file of another version is measured again."""

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
"""The /proc/cpuinfo flags that decide fp32 and bf16 GEMM speed: part of the cache key, so a
machine of the same model name with other units enabled (a VM that hides AMX) measures anew."""

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""Native bf16 instructions: without one, bf16 autocast on a CPU is refused (explicit) or never
considered (auto)."""


@dataclass(frozen=True)
class ProbeShape:
    """The shapes the probe trains at: CUB's (312 attributes, 200 classes, 2048 x 14 x 14
    feature maps, word vectors), at a small batch so that the probe stays short."""

    batch: int = 4
    attributes: int = 312
    classes: int = 200
    unseen: int = 50
    channels: int = 2048
    regions: int = 196
    vec_dim: int = 300


PROBE_SHAPE = ProbeShape()


# ---------------------------------------------------------------------------- the decision

def choose(fp32_s: float, bf16_s: float, min_speedup: float = MIN_SPEEDUP) -> str:
    """The precision measured times call for: bf16 when fp32 took at least `min_speedup` times as
    long, else fp32. A time that is not a positive finite number is no evidence for bf16."""
    times = (fp32_s, bf16_s)
    if not all(isinstance(t, int | float) and math.isfinite(t) and t > 0 for t in times):
        return "fp32"
    return "bf16" if fp32_s / bf16_s >= min_speedup else "fp32"


@dataclass(frozen=True)
class Measurement:
    """The probe's result: the best time of one training step in each precision (seconds)."""

    fp32_s: float
    bf16_s: float

    @property
    def speedup(self) -> float:
        """bf16's speed as a multiple of fp32's (above 1: bf16 is faster)."""
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else math.nan

    @property
    def precision(self) -> str:
        """What these times choose (:func:`choose`)."""
        return choose(self.fp32_s, self.bf16_s)


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains in and why: the run's record of a choice ``auto`` may have made."""

    requested: str
    """The config's value: auto, fp32 or bf16."""
    precision: str
    """What runs: fp32 or bf16 (autocast)."""
    reason: str
    """One line for a person: why this precision."""
    measurement: Measurement | None = None
    """The probe's times, when auto measured (now or from the cache)."""
    cached: bool = False
    """Whether the measurement was read from the cache (no probe ran this time)."""
    cache_file: Path | None = None
    """Where the measurement is (or would have been) cached."""


# ---------------------------------------------------------------------------- the key

@dataclass(frozen=True)
class MachineKey:
    """What a measurement holds for: the same CPU model with the same units, torch and threads."""

    cpu: str
    flags: tuple[str, ...]
    torch: str
    threads: int

    def as_dict(self) -> dict[str, object]:
        """The key as the cache file records it (JSON types: the flags as a list)."""
        out = asdict(self)
        out["flags"] = list(self.flags)
        return out

    def file_name(self) -> str:
        """The cache file of this key: a digest, since a CPU model name may hold anything."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return f"cpu-{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text, or "" where there is none (not Linux, or unreadable)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_field(cpuinfo: str, name: str) -> str:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return ""


def machine_key(*, threads: int | None = None, torch_version: str | None = None,
                cpuinfo: str | None = None) -> MachineKey:
    """This machine's key: CPU model name and :data:`CPU_FLAGS` from /proc/cpuinfo (`cpuinfo`
    replaces its text), torch's version and the torch thread count (defaults: this process's)."""
    info = read_cpuinfo() if cpuinfo is None else cpuinfo
    have = set(_cpuinfo_field(info, "flags").split())
    return MachineKey(
        cpu=_cpuinfo_field(info, "model name") or "unknown",
        flags=tuple(f for f in CPU_FLAGS if f in have),
        torch=torch.__version__ if torch_version is None else torch_version,
        threads=torch.get_num_threads() if threads is None else threads,
    )


def bf16_supported(device: torch.device) -> bool:
    """Whether the device has native bf16 (CUDA, or a CPU with avx512_bf16 or AMX): where it does
    not, bf16 autocast is emulated and refused. Native is not the same as faster: see
    :func:`resolve_precision`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    have = set(_cpuinfo_field(read_cpuinfo(), "flags").split())
    return any(f in have for f in BF16_FLAGS)


def _cuda_native_bf16() -> bool:
    """torch.cuda.is_bf16_supported without emulation: since torch 2.4 it also says yes for GPUs
    that only emulate bf16 (before Ampere), where it is slower than fp32."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.4: no emulation counted
        return bool(torch.cuda.is_bf16_supported())


# ---------------------------------------------------------------------------- the probe

@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def probe(threads: int | None = None, *, repeats: int = 5, budget_s: float = 0.75,
          shape: ProbeShape = PROBE_SHAPE) -> Measurement:
    """Time training steps of the MSDN model at `shape` in fp32 and under bf16 autocast.

    One step of each first (untimed: oneDNN builds its kernels on first use), then up to
    `repeats` timed pairs, alternating which precision goes first so that a load that changes
    during the probe weighs on both; after two pairs it stops once `budget_s` is spent (a CPU on
    which bf16 is slow would otherwise make the probe long). The best time of each counts: noise
    only ever adds time. On one thread a step is timed by that thread's CPU time, which other
    processes on the same cores do not inflate (all of the step's work is on it); on several,
    by the wall clock. The optimizer's update is left out: it is elementwise fp32 either way.
    Runs on `threads` torch threads (default: the current number) and leaves torch's global RNG
    and thread count as they were.
    """
    s = shape
    threads = threads or torch.get_num_threads()
    clock = time.thread_time if threads == 1 else time.perf_counter
    with (torch.random.fork_rng(devices=[]), _torch_threads(threads), torch.enable_grad()):
        torch.manual_seed(0)
        model = MSDN(torch.rand(s.classes, s.attributes), torch.randn(s.attributes, s.vec_dim),
                     s.channels, vec_dim=s.vec_dim)
        with torch.no_grad():  # zero-initialised maps would leave parts of the step trivial
            for p in (model.W_2, model.W_1_1, model.W_2_1):
                p.normal_(0.0, 0.1)
        x = torch.randn(s.batch, s.channels, s.regions).clamp_min_(0)
        seen = s.classes - s.unseen
        y = torch.arange(s.batch) % seen
        unseen = torch.arange(seen, s.classes)
        margin = margin_vector(s.classes, unseen, 1.0)
        mask = torch.zeros(s.classes, dtype=torch.bool)
        mask[unseen] = True
        weights = LossWeights(lambda_sc=0.1, lambda_d=1e-3)  # CUB's published weights

        def step(bf16: bool) -> float:
            t0 = clock()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                loss, _ = msdn_loss(out, y, margin, mask, weights)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return clock() - t0

        step(False)
        step(True)
        start = time.perf_counter()
        fp32: list[float] = []
        bf16: list[float] = []
        for i in range(max(1, repeats)):
            for use_bf16 in ((False, True) if i % 2 == 0 else (True, False)):
                (bf16 if use_bf16 else fp32).append(step(use_bf16))
            if i >= 1 and time.perf_counter() - start > budget_s:
                break
    return Measurement(fp32_s=min(fp32), bf16_s=min(bf16))


# ---------------------------------------------------------------------------- the cache

def default_cache_dir() -> Path:
    """Where measurements live: ``<cache>/precision`` (see :mod:`msdn_tune.cache`)."""
    return cache_root() / "precision"


def read_cached(path: Path, key: MachineKey) -> Measurement | None:
    """The measurement `path` holds for `key`, or None: missing, unreadable, not our JSON,
    another format version, another key, or times that are not positive finite numbers."""
    try:
        doc = load_json(path, error=DataError, what="precision measurement", max_bytes=1 << 16)
    except MsdnTuneError:
        return None
    if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION:
        return None
    if doc.get("key") != key.as_dict():
        return None
    times = doc.get("fp32_s"), doc.get("bf16_s")
    if not all(isinstance(t, float) and math.isfinite(t) and t > 0 for t in times):
        return None
    return Measurement(fp32_s=times[0], bf16_s=times[1])  # type: ignore[arg-type]


def write_cached(path: Path, key: MachineKey, measurement: Measurement) -> bool:
    """Record a measurement for `key` at `path`, whole or not at all (temporary file, then
    rename); False when the cache cannot be written (the run goes on without it).

    The file also says what the times chose, for a person reading it; a run chooses again from
    the times, so a change of :data:`MIN_SPEEDUP` applies without measuring again.
    """
    doc = {"version": CACHE_VERSION, "key": key.as_dict(), "fp32_s": measurement.fp32_s,
           "bf16_s": measurement.bf16_s, "speedup": round(measurement.speedup, 3),
           "chose": measurement.precision, "min_speedup": MIN_SPEEDUP,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- resolution

def resolve_precision(requested: str, device: torch.device, *, key: MachineKey | None = None,
                      cache_dir: Path | None = None) -> PrecisionChoice:
    """The precision a run with config value `requested` trains in on `device`, and why.

    fp32 and bf16 are returned as they are (whether bf16 is allowed is the caller's check).
    auto: see the module. `key` (default :func:`machine_key` of this process) names the
    measurement; its thread count is the one the probe runs on. `cache_dir` defaults to
    :func:`default_cache_dir`.
    """
    if requested != "auto":
        return PrecisionChoice(requested, requested, "set in the config")
    if device.type == "cuda":
        if _cuda_native_bf16():
            return PrecisionChoice("auto", "bf16", f"auto: {device} runs bf16 natively")
        return PrecisionChoice("auto", "fp32", f"auto: {device} has no native bf16")
    if device.type != "cpu":
        return PrecisionChoice("auto", "fp32", f"auto: no bf16 autocast on {device.type}")
    if not bf16_supported(device):
        return PrecisionChoice("auto", "fp32", "auto: this CPU has no bf16 instructions "
                               f"({' or '.join(BF16_FLAGS)})")
    key = key or machine_key()
    path = (cache_dir or default_cache_dir()) / key.file_name()
    measurement = read_cached(path, key)
    cached = measurement is not None
    if measurement is None:
        measurement = probe(key.threads)
        write_cached(path, key, measurement)
    chosen = measurement.precision
    how = "measured earlier" if cached else "measured now"
    threads = f"{key.threads} thread{'' if key.threads == 1 else 's'}"
    reason = (f"auto: bf16 autocast ran a CUB-shape training step at {measurement.speedup:.2f}x "
              f"the speed of fp32 on this CPU ({threads}; {how}, {path}); bf16 needs "
              f"{MIN_SPEEDUP}x")
    return PrecisionChoice("auto", chosen, reason, measurement=measurement, cached=cached,
                           cache_file=path)
