"""Two models trained one after the other with torch's threads = 2, against side by side in two
Python threads at one torch thread each: what a busy machine does to multi-threaded torch.

Run it while something else uses the cores (e.g. a suite run), then on a quiet machine:

    python benchmarks/busy_threads.py

Work: two ResNet-10 (ImageNet stem), batch 8 of 32x32 inputs, SGD with momentum, 60 steps each.
"""

from __future__ import annotations

import threading
import time

import torch
import torch.nn.functional as F

from flower_eec.models import build_model

STEPS = 60


def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_model("resnet10", 10, 3, stem="imagenet", width=1.0)
    model.train()
    return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int,
         x: torch.Tensor, y: torch.Tensor) -> None:
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def main() -> None:
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    a, b = make(), make()
    for _ in range(2):
        torch.set_num_threads(2)
        loop(*a, 3, x, y)
        started = time.perf_counter()
        loop(*a, STEPS, x, y)
        loop(*b, STEPS, x, y)
        one_after_the_other = time.perf_counter() - started
        torch.set_num_threads(1)
        started = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(*m, STEPS, x, y)) for m in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        side_by_side = time.perf_counter() - started
        print(f"one after the other, 2 threads {one_after_the_other:.2f} s; side by side, "
              f"1 thread each {side_by_side:.2f} s; ratio {one_after_the_other / side_by_side:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
