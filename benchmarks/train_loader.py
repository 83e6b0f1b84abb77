"""The CPU time of the training loader alone, per batch, as ``fcnseg train`` builds it: the decoded training images
kept in memory (``keep_decoded``, the default) or read from their files every epoch, with no loader worker and
with two.

The CPU time is this process's and its loader workers' (user and system), over 4 epochs of the best CamVid
recipe's batches (configs/camvid/fcn8s_il12_ema_w8_16k.yaml: 367 training images, batches of 8 random 240x320
crops, flips, scales and colour jitter), after the images were kept. Each batch is made channels-last, as
training uses it. Minor page faults: pages the kernel had to map, mostly the shared memory each batch crosses from
a worker in.

Usage: .venv/bin/python benchmarks/train_loader.py
"""

from __future__ import annotations

import resource
import time

import torch
from side_by_side import SHARED

from fcnseg.runtime import Runtime, cpu_model, keep_freed_memory
from fcnseg.train.config import TrainConfig
from fcnseg.train.data import EpochSampler, build_datasets, keep_decoded, micro_batches

EPOCHS = 4


def cpu_and_faults() -> tuple[float, int]:
    """CPU seconds and minor page faults of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
            own.ru_minflt + children.ru_minflt)


def per_batch(workers: int, keep: bool) -> tuple[float, float, float]:
    """CPU ms, minor faults and wall ms per batch of the loader over :data:`EPOCHS` epochs."""
    config = TrainConfig.from_yaml("configs/camvid/fcn8s_il12_ema_w8_16k.yaml", root=str(SHARED / "camvid"),
                                   workers=workers)
    dataset, _ = build_datasets(config, "imagenet")
    if keep:
        assert keep_decoded(dataset, workers)
    sampler = EpochSampler(len(dataset), config.seed)
    count = EPOCHS * -(-len(dataset) // config.batch_size)
    cpu, faults = cpu_and_faults()
    start = time.perf_counter()
    batches = micro_batches(dataset, sampler, config, Runtime(torch.device("cpu"), 1), 0)
    for _ in range(count):
        _, images, _ = next(batches)
        images.contiguous(memory_format=torch.channels_last)
    batches.close()  # the workers end and their CPU time is counted
    wall = time.perf_counter() - start
    cpu_after, faults_after = cpu_and_faults()
    return 1000 * (cpu_after - cpu) / count, (faults_after - faults) / count, 1000 * wall / count


def main() -> None:
    if not (SHARED / "camvid").is_dir():
        raise SystemExit(f"train_loader.py: CamVid is not at {SHARED / 'camvid'}")
    torch.set_num_threads(1)
    keep_freed_memory()  # as fcnseg train does
    print(f"{cpu_model()}, torch {torch.__version__}, {EPOCHS} epochs of the best CamVid recipe's batches")
    print("| training images | loader workers | CPU ms per batch | minor faults per batch | wall ms per batch |")
    print("|---|---:|---:|---:|---:|")
    for keep in (False, True):
        for workers in (0, 2):
            cpu, faults, wall = per_batch(workers, keep)
            where = "kept decoded" if keep else "read every epoch"
            print(f"| {where} | {workers} | {cpu:.0f} | {faults:.0f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
