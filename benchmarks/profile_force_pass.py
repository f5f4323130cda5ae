"""Where one forces-only force pass of the 96-atom water box spends its time, instruction by instruction.

The pass of ``bench_force_pass.py`` (the same compiled loop over changing frames, one thread) runs for
``--seconds`` while Linux ``perf record`` samples the instruction pointer. Numba's compiled code has no
symbols perf can read, so the script reads the code back from its own memory (the executable anonymous
mapping that holds most samples), disassembles it with ``objdump`` and prints its hottest basic blocks (runs
of instructions up to a jump): each block's share of all samples, then its instructions with their own
counts. Samples gather on an instruction that waits, often the one after a slow one. A block is mapped to
its source by what it does: ``vcompresspd`` keeps a small box's pairs within reach, ``vroundpd`` takes the
minimum images, a scalar Horner chain of ``vfmadd`` is a pair law, the same on four lanes (``ymm``) a leg
lookup, and so on (see ``simulate/energy.py``).

Needs ``perf`` (Debian: ``linux-perf``) and permission to sample this process (``perf_event_paranoid`` ≤ 2),
and ``objdump`` (binutils). This is a tool for work on the pass, like ``bench_force_pass.py``; its numbers
are shares of one run, not timings to compare across runs.

    .venv/bin/python benchmarks/profile_force_pass.py
    .venv/bin/python benchmarks/profile_force_pass.py --only learned_pairwise_tabulated --blocks 8 --out /tmp/pass.txt
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
from bench_force_pass import MODELS, ROOT, prepare_pass

_INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\t(?:[0-9a-f]{2} )+\s*\t?(.*)$")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name}: not found; the profile needs it (Debian: {'linux-perf' if name == 'perf' else 'binutils'})")
    return path


def sample_pass(repeat, arguments, seconds: float, frequency: int, workdir: Path) -> collections.Counter:
    """Samples of the instruction pointer (address → count) while ``repeat`` runs for ``seconds``."""
    data = workdir / "perf.data"
    recorder = subprocess.Popen(
        [_tool("perf"), "record", "-q", "-F", str(frequency), "-p", str(os.getpid()), "-o", str(data), "--", "sleep",
         str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while recorder.poll() is None:
        repeat(200, *arguments)
    if recorder.returncode != 0 or not data.is_file():
        lines = recorder.stderr.read().strip().splitlines() or ["no output"]
        raise SystemExit(f"perf record: exit {recorder.returncode}: {lines[-1]}")
    script = subprocess.run([_tool("perf"), "script", "-i", str(data), "-F", "ip"], check=False,
                            capture_output=True, text=True)
    if script.returncode != 0:
        raise SystemExit(f"perf script: exit {script.returncode}: {script.stderr.strip()[-200:]}")
    return collections.Counter(int(line, 16) for line in script.stdout.split())


def code_regions() -> list[tuple[int, int]]:
    """(start, end) of this process's executable anonymous mappings: where the JIT puts compiled code."""
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if "x" in fields[1] and len(fields) < 6:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end))
    return regions


def disassemble(start: int, end: int, workdir: Path) -> list[tuple[int, str]]:
    """(address, instruction) of the code at start…end of this process's memory, by objdump."""
    dump = workdir / "code.bin"
    dump.write_bytes(bytes((ctypes.c_char * (end - start)).from_address(start)))
    text = subprocess.run([_tool("objdump"), "-D", "-b", "binary", "-mi386:x86-64", f"--adjust-vma={start:#x}",
                           str(dump)], capture_output=True, text=True, check=True).stdout
    out = []
    for line in text.splitlines():
        match = _INSTRUCTION.match(line)
        if match and match.group(2):
            out.append((int(match.group(1), 16), match.group(2).split("#")[0].rstrip()))
    return out


def basic_blocks(instructions: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """The instructions cut after every jump, call and return."""
    blocks, block = [], []
    for address, text in instructions:
        block.append((address, text))
        if text.startswith(("j", "call", "ret")):
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    return blocks


def report(samples: collections.Counter, n_blocks: int, workdir: Path) -> str:
    """The hottest ``n_blocks`` basic blocks of the compiled code that holds most samples, as text."""
    total = sum(samples.values())
    if total == 0:
        raise SystemExit("perf recorded no samples of this process")
    by_region = {region: sum(n for ip, n in samples.items() if region[0] <= ip < region[1]) for region in code_regions()}
    start, end = max(by_region, key=by_region.get)
    share = by_region[(start, end)] / total
    head = f"{total} samples; {share:.1%} in the compiled code at {start:#x}–{end:#x} ({end - start} bytes), "
    lines = [head + "the rest in Python, NumPy and the kernel"]
    blocks = basic_blocks(disassemble(start, end, workdir))
    counted = sorted(((sum(samples[a] for a, _ in block), block) for block in blocks), key=lambda x: -x[0])
    for count, block in counted[:n_blocks]:
        lines.append(f"\n{count / total:6.1%}  block at {block[0][0]:#x}, {len(block)} instructions")
        lines.extend(f"{samples[address]:8d}  {address - start:#07x}  {text}" for address, text in block)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="learned_manybody_tabulated", choices=list(MODELS), help="the model")
    parser.add_argument("--frames", type=int, default=200, help="frames the calls go through in turn")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long perf samples")
    parser.add_argument("--frequency", type=int, default=5000, help="samples per second")
    parser.add_argument("--blocks", type=int, default=12, help="hottest basic blocks to print")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    if not MODELS[args.only].is_file():
        raise SystemExit(f"{MODELS[args.only].relative_to(ROOT)}: not found (mld run writes it)")
    numba.set_num_threads(1)
    repeat, arguments = prepare_pass(MODELS[args.only], args.frames)
    with tempfile.TemporaryDirectory() as workdir:
        began = time.perf_counter()
        samples = sample_pass(repeat, arguments, args.seconds, args.frequency, Path(workdir))
        print(f"{args.only}: {time.perf_counter() - began:.1f} s sampled", file=sys.stderr)
        text = report(samples, args.blocks, Path(workdir))
    print(text)
    if args.out is not None:
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(text + "\n")
        partial.replace(args.out)


if __name__ == "__main__":
    main()
