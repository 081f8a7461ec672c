"""The machine a number comes from: the same study on another CPU gives other floating-point results.

torch picks its CPU kernels by the instruction set it finds (``torch.backends.cpu.get_cpu_capability()``:
AVX512, AVX2, ...; ``ATEN_CPU_CAPABILITY`` overrides it), and the thread count changes the order of reductions.
Within one machine, kernel setting and thread count a study repeats to the last digit; across them its figures
differ. run.json and the warm start's record say which CPU made them (``machine_cpu``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_cpu() -> dict:
    """The CPU a run's numbers come from: its model name, the kernels torch chose for it (ATEN_CPU_CAPABILITY
    overrides them) and the threads; the same study on another CPU gives other floating-point results."""
    model = platform.processor() or platform.machine()
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    except OSError:
        pass
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"), "threads": torch.get_num_threads()}
