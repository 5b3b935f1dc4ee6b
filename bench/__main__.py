"""Run the benchmark sections and print one Markdown table per section."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from importlib import import_module

from ._harness import CheckFailed, Table

# Section name -> module under bench/ with a ``run(*, quick: bool) -> Table``.
SECTIONS = {
    "asgi": "asgi",
    "flask": "flask_wsgi",
    "http": "http",
    "minting": "minting",
    "memory": "memory",
    "stampede": "stampede",
}


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    # nproc counts the CPUs this process may run on, as sched_getaffinity does.
    cpus = len(os.sched_getaffinity(0))
    python = f"{platform.python_implementation()} {platform.python_version()}"
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"nproc {cpus}, {model}, {python}, {platform.system()} {platform.release()}; "
        f"load average at start {load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run every section briefly, to prove it works (figures are rough)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SECTIONS),
        help="run only this section (repeatable)",
    )
    args = parser.parse_args(argv)

    print(f"Machine: {_machine()}")
    print(f"Mode: {'quick' if args.quick else 'full'}\n")
    failed = False
    for name in args.only or SECTIONS:
        started = time.monotonic()
        try:
            module = import_module(f"{__package__}.{SECTIONS[name]}")
            table: Table = module.run(quick=args.quick)
        except CheckFailed as exc:
            print(f"### {name}\n\nCHECK FAILED: {exc}\n", flush=True)
            failed = True
            continue
        print(table.render())
        print(f"\n({name}: {time.monotonic() - started:.1f} s)\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
