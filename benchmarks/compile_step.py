"""One ResNet-18 training step at batch 8 (ImageNet stem, 32x32 inputs, one torch thread), eager
against ``torch.compile`` with its defaults: does compiling pay on this CPU?

    python benchmarks/compile_step.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from flower_eec.models import build_model


def main() -> None:
    torch.set_num_threads(1)
    model = build_model("resnet18", 10, 3, stem="imagenet", width=1.0)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def step(forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        optimizer.step()

    def ms_per_step(forward: Callable[[torch.Tensor], torch.Tensor], steps: int = 40) -> float:
        for _ in range(3):
            step(forward)
        started = time.perf_counter()
        for _ in range(steps):
            step(forward)
        return (time.perf_counter() - started) / steps * 1e3

    print(f"eager ms/step {ms_per_step(model):.2f}", flush=True)
    started = time.perf_counter()
    compiled = torch.compile(model)
    step(compiled)
    print(f"compile s {time.perf_counter() - started:.1f}", flush=True)
    for _ in range(2):
        print(f"compiled ms/step {ms_per_step(compiled):.2f} eager {ms_per_step(model):.2f}",
              flush=True)


if __name__ == "__main__":
    main()
