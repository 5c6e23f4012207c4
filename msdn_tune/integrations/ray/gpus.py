"""The memory of a Ray cluster's GPUs, asked of a GPU worker: what `resources: {gpu: auto}`
packs trials into (msdn_tune.train.packing).

The driver often runs where there is no GPU (a cluster's head), and Ray's resources say how many
GPUs a node has, not how large they are; so a tiny task that takes 0.0001 of a GPU reads the
card's size where it runs.
"""

from __future__ import annotations

import ray

from msdn_tune.errors import ConfigError

PROBE_TIMEOUT_S = 60.0


def _gpu_total_memory() -> int:
    import torch  # in the worker that holds the GPU share

    return int(torch.cuda.get_device_properties(0).total_memory)


def require_gpus() -> None:
    """Refuse `gpu: auto` at once on a cluster that has no GPU now (checked before anything
    else about the study, whose other checks would otherwise speak of GPU-less nodes).

    Raises:
        ConfigError: no GPU among the cluster's current nodes.
    """
    if float(ray.cluster_resources().get("GPU", 0)) <= 0:
        raise ConfigError("resources.gpu: auto, but the Ray cluster has no GPU; use gpu: 0 to "
                          "train on CPUs, connect to a cluster with GPUs (--address), or, on an "
                          "autoscaling cluster whose GPU workers are not up yet, give the share "
                          "per trial (space validate prints it for common GPUs)")


def cluster_gpu_memory(timeout_s: float = PROBE_TIMEOUT_S) -> int:
    """Bytes of memory of a GPU of the connected Ray cluster (the first a task lands on).

    Raises:
        ConfigError: the cluster has no GPU, or none answered within `timeout_s` (an autoscaling
            cluster starts GPU workers only for work that asks for a GPU share it knows).
    """
    require_gpus()
    probe = ray.remote(num_gpus=0.0001, num_cpus=0)(_gpu_total_memory)
    ref = probe.remote()
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        raise ConfigError(f"resources.gpu: auto: no GPU worker answered within {timeout_s:.0f} "
                          "s; give the share per trial instead (space validate prints the "
                          "rule, e.g. gpu: 0.125 for 8 trials per GPU)")
    return int(ray.get(ref))
