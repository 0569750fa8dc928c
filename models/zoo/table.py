#!/usr/bin/env python3
"""One table of the zoo across architectures, from check_zoo.py's --json results.

    python3 models/zoo/table.py x86_64=x86.json aarch64=a64.json armv7=a32.json [...]

The first result set gives the producer, `drover bundle` and the timing columns (run it with a
release agent and without --no-timing for them); every set gives a parity column. Several files
may carry the same label (a run split with --only): their results are joined. A model missing from
a set shows `-`. Prints Markdown for models/README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


def parity(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r["status"] == "skipped":
        return "(bundle check only)"
    if r["status"] != "pass":
        return "FAIL: " + (r.get("error") or r.get("parity", ""))[:80].replace("|", "\\|")
    if r.get("runs") in ("-", None) or not r.get("parity") or r["parity"] == "-":
        return "refused as expected" if "refused as expected" in r.get("error", "") else "pass"
    text = r["parity"].removeprefix("ok ")
    return text if r.get("batch") in (None, "-", "n/a") else text + "; batch ok"


def main() -> int:
    sets: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for arg in sys.argv[1:]:
        label, _, path = arg.partition("=")
        results = {r["model"]: r for r in json.loads(Path(path).read_text())["results"]}
        for known, rs in sets:
            if known == label:
                rs.update(results)
                break
        else:
            sets.append((label, results))
    if not sets:
        print(__doc__, file=sys.stderr)
        return 2
    first = sets[0][1]
    head = ["model", "producer", "precision", "bundle"] + [f"{label} parity (max abs/rel)" for label, _ in sets]
    head += ["agent/sample", "ort/sample", "ratio"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in first.items():
        bundle = {"ok": "yes", "refused": "refused"}.get(r.get("bundle", {}).get("status", ""), "-")
        agent, ort = r.get("agent_us_per_sample"), r.get("ort_us_per_sample")
        ratio = f"{agent / ort:.1f}×" if agent and ort else "-"
        cells = [name, r["producer"], r["precision"], bundle] + [parity(rs.get(name)) for _, rs in sets]
        cells += [fmt_us(agent), fmt_us(ort), ratio]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
