"""benchmarks/RESULTS.md: one section per benchmark, each with the machine and versions it ran on."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """One markdown line: CPU, cores, Python, torch, transformers."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = names[0] if names else cpu
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def write_section(title: str, body: str) -> None:
    """Put ``## title`` and ``body`` into RESULTS.md, replacing that section if present."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{machine()}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    temporary = RESULTS.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(RESULTS)
