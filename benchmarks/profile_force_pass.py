"""Where one forces-only force pass of the 96-atom water box spends its time, instruction by instruction.

The pass of ``bench_force_pass.py`` (the same compiled loop over changing frames, one thread) runs for
``--seconds`` while Linux ``perf record`` samples the instruction pointer. Numba's compiled code has no
symbols perf can read, so the script reads the code back from its own memory (the executable anonymous
mapping that holds most samples), disassembles it with ``objdump`` and prints its hottest blocks (runs of
instructions up to a jump, call or return; a jump into the middle of one does not split it): each block's
share of all samples, then its instructions with their own counts. Samples gather on an instruction that waits, often the one after a slow one. A block is mapped to
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


_PACKAGES = {"perf": "linux-perf", "objdump": "binutils"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name}: not found; the profile needs it (Debian: {_PACKAGES[name]})")
    return path


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


def sample_pass(repeat, arguments, seconds: float, frequency: int, workdir: Path) -> collections.Counter:
    """Samples of the instruction pointer (address → count) while ``repeat`` runs for ``seconds``."""
    data = workdir / "perf.data"
    log = workdir / "perf.log"
    with log.open("w") as errors:
        recorder = subprocess.Popen(
            [_tool("perf"), "record", "-q", "-F", str(frequency), "-p", str(os.getpid()), "-o", str(data), "--",
             "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=errors)
        try:
            while recorder.poll() is None:
                repeat(200, *arguments)
        finally:
            if recorder.poll() is None:  # the pass failed: stop perf before its directory goes
                recorder.terminate()
            recorder.wait()
    if recorder.returncode != 0 or not data.is_file():
        raise SystemExit(f"perf record: exit {recorder.returncode}: {_last_line(log.read_text())}")
    script = subprocess.run([_tool("perf"), "script", "-i", str(data), "-F", "ip"], check=False,
                            capture_output=True, text=True)
    if script.returncode != 0:
        raise SystemExit(f"perf script: exit {script.returncode}: {_last_line(script.stderr)}")
    return collections.Counter(int(line, 16) for line in script.stdout.split())


def code_regions() -> list[tuple[int, int]]:
    """(start, end) of this process's readable, executable anonymous mappings: where the JIT puts compiled code."""
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if fields[1].startswith("r") and "x" in fields[1] and len(fields) < 6:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end))
    return regions


def disassemble(start: int, end: int, workdir: Path) -> list[tuple[int, str]]:
    """(address, instruction) of the code at start…end of this process's memory, by objdump."""
    dump = workdir / "code.bin"
    dump.write_bytes(bytes((ctypes.c_char * (end - start)).from_address(start)))
    done = subprocess.run([_tool("objdump"), "-D", "-b", "binary", "-mi386:x86-64", f"--adjust-vma={start:#x}",
                           str(dump)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"objdump: exit {done.returncode}: {_last_line(done.stderr)}")
    out = []
    for line in done.stdout.splitlines():
        match = _INSTRUCTION.match(line)
        if match and match.group(2):
            out.append((int(match.group(1), 16), match.group(2).split("#")[0].rstrip()))
    return out


def blocks_to_jumps(instructions: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """The instructions cut after every jump, call and return (with or without a prefix such as ``notrack``)."""
    blocks, block = [], []
    for address, text in instructions:
        block.append((address, text))
        words = text.split()
        mnemonic = words[1] if words[0] in ("bnd", "notrack") and len(words) > 1 else words[0]
        if mnemonic.startswith(("j", "call", "ret")):
            blocks.append(block)
            block = []
    if block:
        blocks.append(block)
    return blocks


def report(samples: collections.Counter, n_blocks: int, workdir: Path) -> str:
    """The hottest ``n_blocks`` blocks of the compiled code that holds most samples, as text."""
    total = sum(samples.values())
    if total == 0:
        raise SystemExit("perf recorded no samples of this process")
    by_region = {region: sum(n for ip, n in samples.items() if region[0] <= ip < region[1]) for region in code_regions()}
    if not by_region or max(by_region.values()) == 0:
        raise SystemExit("no sample fell in compiled code (no readable, executable anonymous mapping held one)")
    start, end = max(by_region, key=by_region.get)
    share = by_region[(start, end)] / total
    head = f"{total} samples; {share:.1%} in the compiled code at {start:#x}–{end:#x} ({end - start} bytes), "
    lines = [head + "the rest in Python, NumPy and the kernel"]
    blocks = blocks_to_jumps(disassemble(start, end, workdir))
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
    parser.add_argument("--blocks", type=int, default=12, help="hottest blocks to print")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    if not MODELS[args.only].is_file():
        raise SystemExit(f"{MODELS[args.only].relative_to(ROOT)}: not found (mld run writes it)")
    for name in _PACKAGES:  # both there before the compiling and sampling
        _tool(name)
    numba.set_num_threads(1)
    repeat, arguments = prepare_pass(MODELS[args.only], args.frames)
    with tempfile.TemporaryDirectory() as workdir:
        began = time.perf_counter()
        samples = sample_pass(repeat, arguments, args.seconds, args.frequency, Path(workdir))
        print(f"{args.only}: {time.perf_counter() - began:.1f} s sampled", file=sys.stderr)
        text = (f"{args.only}: forces-only pass, 96 atoms, 1 thread, {args.frames} frame(s) in turn, sampled "
                f"{args.frequency} times a second for {args.seconds:g} s\n" + report(samples, args.blocks, Path(workdir)))
    print(text)
    if args.out is not None:
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(text + "\n")
        partial.replace(args.out)


if __name__ == "__main__":
    main()
