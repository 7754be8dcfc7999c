"""What the benchmark scripts share: the machine's description and writing their section
of docs/benchmarks.md between its markers (other sections stay)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def cpu_facts() -> str:
    """CPU model, core count and whether it has bf16 arithmetic (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return (
        f"{model} ({os.cpu_count()} cores; bf16 instructions: "
        f"{', '.join(bf16) if bf16 else 'none (no avx512_bf16, no amx_bf16)'})"
    )


def write_section(doc: Path, begin: str, end: str, text: str) -> None:
    """Put ``text`` between the ``begin`` / ``end`` markers of ``doc`` (appended if absent)."""
    current = doc.read_text() if doc.exists() else "# Benchmarks\n"
    section = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in current and end in current:
        pattern = re.escape(begin) + ".*?" + re.escape(end)
        current = re.sub(pattern, lambda _: section, current, flags=re.S)
    else:
        current = current.rstrip() + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(current)
