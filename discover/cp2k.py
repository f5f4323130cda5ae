"""CP2K files: read an MD run into a Dataset, and write and run CP2K inputs for water boxes.

Shaped like ``ase.io``: ``read_*`` functions take a path and return arrays in the units the
file uses; ``import_cp2k_run`` aligns the files of one run by MD step, checks them against
each other and converts to mld's units (Å, fs, eV) with the constants of ``simulate.units``.

CP2K (2023) writes, for project ``P``:

* ``P-pos-1.xyz``, ``P-frc-1.xyz``, ``P-vel-1.xyz``: one XYZ block per printed step whose
  comment line reads ``i = STEP, time = FS, E = POT_HARTREE``; positions in Å, forces in
  Hartree/Bohr, velocities in Bohr per atomic time unit;
* ``P-1.ener``: step, time (fs), kinetic (Ha), temperature (K), potential (Ha), conserved
  quantity (Ha), wall seconds used by the step (CP2K's UsedTime; they add up to the run's time);
* ``P-1.cell`` (when asked for, or in NPT): step, time, the nine cell components (Å), volume.

Every problem with the files raises ``Cp2kFormatError`` with one line naming the file, the
frame or line, and what is wrong.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from discover.dataset import Dataset, DatasetError
from simulate.errors import MldError
from simulate.fileio import write_text_atomic
from simulate.space import minimum_image
from simulate.units import (
    AVOGADRO,
    BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS,
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
    masses_amu,
)


class Cp2kFormatError(DatasetError):
    """A CP2K file is missing, malformed, or disagrees with the other files of its run."""


class Cp2kWarning(UserWarning):
    """Something was dropped or assumed while importing (e.g. the truncated last frame of a killed run)."""


class Cp2kRunError(MldError):
    """CP2K could not be found, or a CP2K run failed."""


# ---------------------------------------------------------------------------------------
# Text tables shared by the XYZ, ener and cell readers
# ---------------------------------------------------------------------------------------


def _read_lines(path: Path) -> tuple[list[str], bool]:
    """Lines of a text file, and whether its last line was cut off (no final newline).

    A run killed while writing leaves a partial last line; CP2K always ends lines with a newline,
    so a missing one marks the line as incomplete and it is dropped here.
    """
    if not path.is_file():
        raise Cp2kFormatError(f"{path}: no such file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Cp2kFormatError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    lines = text.split("\n")
    partial = lines[-1] != ""
    lines.pop()  # the text after the last newline: '' or the partial line
    while lines and not lines[-1].strip():
        lines.pop()
    return lines, partial


def _to_float(tokens: list[str]) -> np.ndarray:
    """Numbers as CP2K writes them; Fortran 'D' exponents accepted."""
    try:
        return np.array(tokens, dtype=float)
    except ValueError:
        return np.array([t.replace("D", "E").replace("d", "e") for t in tokens], dtype=float)


def _parse_number(token: str) -> float:
    return float(token.replace("D", "E").replace("d", "e"))


# ---------------------------------------------------------------------------------------
# XYZ trajectories (pos, frc, vel)
# ---------------------------------------------------------------------------------------

_HEADER = re.compile(
    r"^\s*i\s*=\s*(?P<step>[-+]?\d+)"
    r"(?:\s*,\s*time\s*=\s*(?P<time>\S+?))?"
    r"(?:\s*,\s*E\s*=\s*(?P<energy>\S+?))?\s*,?\s*$"
)


class XyzTrajectory(NamedTuple):
    """One CP2K XYZ trajectory file, in the units the file uses."""

    species: np.ndarray  # (N,) element symbols
    values: np.ndarray  # (F,N,3) positions Å, forces Ha/Bohr or velocities Bohr/aut
    step: np.ndarray  # (F,) MD step from the header
    time_fs: np.ndarray  # (F,) time from the header (NaN where absent)
    energy_hartree: np.ndarray  # (F,) potential energy from the header (NaN where absent)
    first_line: np.ndarray  # (F,) 1-based line number of each frame's atom-count line


def read_xyz_trajectory(path: str | os.PathLike, allow_truncated: bool = False) -> XyzTrajectory:
    """Read every frame of a CP2K ``*-pos/frc/vel-1.xyz`` file.

    Parsing is vectorised over the whole file (a 2401-frame, 96-atom file takes a fraction of
    a second); the slow line-by-line scan runs only to locate an error for the message.
    A truncated last frame is an error unless ``allow_truncated``, which drops it with a warning.
    """
    path = Path(path)
    lines, partial = _read_lines(path)
    if not lines:
        raise Cp2kFormatError(f"{path}: file is empty")
    try:
        n_atoms = int(lines[0])
        if n_atoms <= 0:
            raise ValueError
    except ValueError:
        raise Cp2kFormatError(f"{path}: line 1: expected the number of atoms, found {lines[0].strip()!r}") from None
    stride = n_atoms + 2
    n_frames = len(lines) // stride
    leftover = len(lines) - n_frames * stride
    if leftover or partial:
        complete = max(leftover - 2, 0)
        message = (
            f"{path}: the last frame (frame {n_frames}, from line {n_frames * stride + 1}) is truncated,"
            f" {complete} of {n_atoms} atom lines complete (was the run killed?)"
        )
        if not allow_truncated:
            raise Cp2kFormatError(message + "; allow truncated input to drop it")
        warnings.warn(message + "; dropped it", Cp2kWarning, stacklevel=2)
        lines = lines[: n_frames * stride]
    if n_frames == 0:
        raise Cp2kFormatError(f"{path}: no complete frame")
    first_line = np.arange(n_frames) * stride + 1

    counts = lines[0::stride]
    expected = lines[0].strip()
    for k, count in enumerate(counts):
        if count.strip() != expected:
            raise Cp2kFormatError(
                f"{path}: frame {k} (line {first_line[k]}): expected atom count {n_atoms}, found {count.strip()!r}"
            )

    steps = np.empty(n_frames, dtype=np.int64)
    times = np.full(n_frames, np.nan)
    energies = np.full(n_frames, np.nan)
    for k, header in enumerate(lines[1::stride]):
        match = _HEADER.match(header)
        where = f"{path}: frame {k} (line {first_line[k] + 1})"
        if match is None:
            raise Cp2kFormatError(f"{where}: header {header.strip()!r} is not 'i = STEP, time = FS, E = ENERGY'")
        steps[k] = int(match["step"])
        try:
            if match["time"] is not None:
                times[k] = _parse_number(match["time"])
            if match["energy"] is not None:
                energies[k] = _parse_number(match["energy"])
        except ValueError:
            raise Cp2kFormatError(f"{where}: header {header.strip()!r} has a non-numeric field") from None
        if match["energy"] is not None and not math.isfinite(energies[k]):
            raise Cp2kFormatError(f"{where}: energy in the header is {match['energy']}")

    atom_lines = [line for k in range(n_frames) for line in lines[k * stride + 2 : (k + 1) * stride]]
    tokens = " ".join(atom_lines).split()
    symbols = tokens[0::4]
    try:
        if len(tokens) != 4 * len(atom_lines):
            raise ValueError
        numbers = tokens
        del numbers[0::4]
        values = _to_float(numbers).reshape(n_frames, n_atoms, 3)
    except ValueError:
        _raise_bad_atom_line(path, atom_lines, n_atoms, stride)
    symbols = np.array(symbols).reshape(n_frames, n_atoms)
    species = symbols[0]
    differs = np.nonzero(np.any(symbols != species, axis=1))[0]
    if differs.size:
        k = int(differs[0])
        a = int(np.nonzero(symbols[k] != species)[0][0])
        raise Cp2kFormatError(
            f"{path}: frame {k} (line {first_line[k] + 2 + a}): atom {a} is {str(symbols[k, a])!r},"
            f" but {str(species[a])!r} in frame 0; the atom order must not change"
        )
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        k, a, _ = (int(x) for x in bad[0])
        raise Cp2kFormatError(
            f"{path}: frame {k} (line {first_line[k] + 2 + a}): atom {a} has a non-finite value"
            f" {atom_lines[k * n_atoms + a].split()[1:]}"
        )
    return XyzTrajectory(species, values, steps, times, energies, first_line)


def _raise_bad_atom_line(path: Path, atom_lines: list[str], n_atoms: int, stride: int):
    """Find the first atom line that is not 'SYMBOL x y z' and say where it is."""
    for index, line in enumerate(atom_lines):
        k, a = divmod(index, n_atoms)
        where = f"{path}: frame {k} (line {k * stride + 3 + a})"
        fields = line.split()
        if len(fields) != 4:
            raise Cp2kFormatError(f"{where}: expected 'SYMBOL x y z', found {line.strip()!r}")
        try:
            [_parse_number(f) for f in fields[1:]]
        except ValueError:
            raise Cp2kFormatError(f"{where}: non-numeric field in {line.strip()!r}") from None
    raise Cp2kFormatError(f"{path}: cannot parse the atom lines")  # pragma: no cover - defensive


# ---------------------------------------------------------------------------------------
# Column files (ener, cell)
# ---------------------------------------------------------------------------------------


def _read_columns(path: Path, n_columns: int, what: str, allow_truncated: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a '#'-commented numeric table with exactly ``n_columns`` columns, and their line numbers."""
    lines, partial = _read_lines(path)
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    if partial:  # _read_lines has already set the incomplete line aside
        message = f"{path}: last line {len(lines) + 1} is truncated (was the run killed?)"
        if not allow_truncated:
            raise Cp2kFormatError(message + "; allow truncated input to drop it")
        warnings.warn(message + "; dropped it", Cp2kWarning, stacklevel=3)
    if not numbered:
        raise Cp2kFormatError(f"{path}: no {what} rows")
    line_numbers = np.array([n for n, _ in numbered])
    tokens = " ".join(line for _, line in numbered).split()
    try:
        if len(tokens) != n_columns * len(numbered):
            raise ValueError
        table = _to_float(tokens).reshape(len(numbered), n_columns)
    except ValueError:
        for number, line in numbered:
            fields = line.split()
            if len(fields) != n_columns:
                raise Cp2kFormatError(
                    f"{path}: line {number}: expected {n_columns} columns of {what}, found {len(fields)}"
                ) from None
            try:
                [_parse_number(f) for f in fields]
            except ValueError:
                raise Cp2kFormatError(f"{path}: line {number}: non-numeric field in {line.strip()!r}") from None
        raise  # pragma: no cover - defensive
    bad = np.argwhere(~np.isfinite(table))
    if bad.size:
        row = int(bad[0][0])
        raise Cp2kFormatError(f"{path}: line {line_numbers[row]}: non-finite value in {numbered[row][1].strip()!r}")
    return table, line_numbers


class Cp2kEnergies(NamedTuple):
    """The ``*-1.ener`` file, in its own units."""

    step: np.ndarray  # (F,) int
    time_fs: np.ndarray
    kinetic_hartree: np.ndarray
    temperature_k: np.ndarray
    potential_hartree: np.ndarray
    conserved_hartree: np.ndarray
    used_time_s: np.ndarray  # wall seconds CP2K spent on each step


def read_ener(path: str | os.PathLike, allow_truncated: bool = False) -> Cp2kEnergies:
    """Read a CP2K MD ``*-1.ener`` file (7 columns)."""
    path = Path(path)
    table, lines = _read_columns(path, 7, "energies", allow_truncated)
    _check_steps(path, table[:, 0], lines)
    return Cp2kEnergies(table[:, 0].astype(np.int64), *table[:, 1:].T)


def read_cell_file(path: str | os.PathLike, allow_truncated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a CP2K ``*-1.cell`` file: (steps (F,), cells (F,3,3) in Å with rows a, b, c)."""
    path = Path(path)
    table, lines = _read_columns(path, 12, "cell vectors", allow_truncated)
    _check_steps(path, table[:, 0], lines)
    return table[:, 0].astype(np.int64), table[:, 2:11].reshape(-1, 3, 3)


def _check_steps(path: Path, steps: np.ndarray, where: np.ndarray, unit: str = "line"):
    """Steps must be whole numbers that increase (a restarted run appended to old files repeats steps)."""
    if np.any(steps != np.round(steps)):
        k = int(np.nonzero(steps != np.round(steps))[0][0])
        raise Cp2kFormatError(f"{path}: {unit} {where[k]}: step {steps[k]} is not a whole number")
    back = np.nonzero(np.diff(steps) <= 0)[0]
    if back.size:
        k = int(back[0]) + 1
        raise Cp2kFormatError(
            f"{path}: {unit} {where[k]}: step {int(steps[k])} does not follow step {int(steps[k - 1])}"
            " (steps must increase; was a restart appended?)"
        )


# ---------------------------------------------------------------------------------------
# Input files
# ---------------------------------------------------------------------------------------


@dataclass
class Cp2kSection:
    """One ``&NAME parameter ... &END`` section of a CP2K input; names are upper case."""

    name: str
    parameter: str = ""
    keywords: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Cp2kSection] = field(default_factory=list)

    def section(self, path: str) -> Cp2kSection | None:
        """The first subsection along a '/'-separated path such as 'FORCE_EVAL/SUBSYS/CELL'."""
        node = self
        for name in path.upper().split("/"):
            node = next((s for s in node.sections if s.name == name), None)
            if node is None:
                return None
        return node

    def keyword(self, name: str, default: str | None = None) -> str | None:
        name = name.upper()
        return next((value for key, value in self.keywords if key == name), default)


def read_cp2k_input(path: str | os.PathLike) -> Cp2kSection:
    """Parse a CP2K input file into its tree of sections (with @SET/@INCLUDE and ${var} expanded)."""
    path = Path(path)
    if not path.is_file():
        raise Cp2kFormatError(f"{path}: no such file")
    root = Cp2kSection("")
    stack = [root]
    variables: dict[str, str] = {}
    number = 0
    for number, line, source in _preprocess(path, variables, depth=0):
        fields = line.split(None, 1)
        head = fields[0]
        rest = fields[1].strip() if len(fields) > 1 else ""
        if head.upper() == "&END":
            if len(stack) == 1:
                raise Cp2kFormatError(f"{source}: line {number}: &END without an open section")
            closed = stack.pop()
            if rest and rest.split()[0].upper() != closed.name:
                raise Cp2kFormatError(f"{source}: line {number}: &END {rest} closes section &{closed.name}")
        elif head.startswith("&"):
            section = Cp2kSection(head[1:].upper(), rest)
            stack[-1].sections.append(section)
            stack.append(section)
        else:
            stack[-1].keywords.append((head.upper(), rest))
    if len(stack) > 1:
        raise Cp2kFormatError(f"{path}: section &{stack[-1].name} is never closed (&END missing)")
    return root


def _preprocess(path: Path, variables: dict[str, str], depth: int):
    """Yield (line number, text, file) of meaningful lines, comments stripped, preprocessor applied."""
    if depth > 8:
        raise Cp2kFormatError(f"{path}: @INCLUDE nested too deeply")
    if not path.is_file():
        raise Cp2kFormatError(f"{path}: no such file (included input)")
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        line = re.split(r"[#!]", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        line = re.sub(
            r"\$\{(\w+)\}|\$(\w+)", lambda m, n=number: _variable(variables, m[1] or m[2], path, n), line
        )
        upper = line.upper()
        if upper.startswith("@SET"):
            parts = line.split(None, 2)
            if len(parts) < 3:
                raise Cp2kFormatError(f"{path}: line {number}: @SET needs a name and a value")
            variables[parts[1].upper()] = parts[2].strip()
        elif upper.startswith("@INCLUDE"):
            name = line.split(None, 1)[1].strip().strip("'\"") if len(line.split()) > 1 else ""
            yield from _preprocess(path.parent / name, variables, depth + 1)
        elif upper.startswith("@"):
            raise Cp2kFormatError(f"{path}: line {number}: preprocessor directive {line.split()[0]} is not supported")
        else:
            yield number, line, path


def _variable(variables: dict[str, str], name: str, path: Path, number: int) -> str:
    try:
        return variables[name.upper()]
    except KeyError:
        raise Cp2kFormatError(f"{path}: line {number}: variable ${name} is not @SET") from None


_LENGTH_UNIT_TO_ANGSTROM = {"ANGSTROM": 1.0, "BOHR": BOHR_TO_ANGSTROM, "NM": 10.0, "PM": 0.01}


def _numbers_with_unit(text: str, count: int, where: str) -> np.ndarray:
    """Parse '[unit] x y z' (unit optional, Å by default) into Å."""
    scale = 1.0
    match = re.match(r"^\[\s*(\w+)\s*\]\s*(.*)$", text)
    if match:
        unit = match[1].upper()
        if unit not in _LENGTH_UNIT_TO_ANGSTROM:
            raise Cp2kFormatError(f"{where}: length unit [{match[1]}] is not supported")
        scale, text = _LENGTH_UNIT_TO_ANGSTROM[unit], match[2]
    fields = text.split()
    try:
        if len(fields) != count:
            raise ValueError
        return np.array([_parse_number(f) for f in fields]) * scale
    except ValueError:
        raise Cp2kFormatError(f"{where}: expected {count} numbers, found {text!r}") from None


def cell_from_input(root: Cp2kSection, source: str | os.PathLike = "input") -> np.ndarray | None:
    """The (3,3) cell in Å from FORCE_EVAL/SUBSYS/CELL: ABC (+ ALPHA_BETA_GAMMA) or A, B, C; None if absent."""
    cell = root.section("FORCE_EVAL/SUBSYS/CELL")
    if cell is None:
        return None
    where = f"{source}: &CELL"
    if cell.keyword("CELL_FILE_NAME") is not None:
        raise Cp2kFormatError(f"{where}: CELL_FILE_NAME is not supported; give ABC or A, B, C in the input")
    vectors = [cell.keyword(name) for name in ("A", "B", "C")]
    if all(v is not None for v in vectors):
        return np.array([_numbers_with_unit(v, 3, f"{where} {n}") for v, n in zip(vectors, "ABC")])
    abc = cell.keyword("ABC")
    if abc is None:
        return None
    a, b, c = _numbers_with_unit(abc, 3, f"{where} ABC")
    angles = cell.keyword("ALPHA_BETA_GAMMA")
    if angles is None:
        return np.diag([a, b, c])
    text = re.sub(r"^\[\s*deg\s*\]", "", angles.strip(), flags=re.IGNORECASE)
    alpha, beta, gamma = np.radians(_numbers_with_unit(text, 3, f"{where} ALPHA_BETA_GAMMA"))
    # a along x, b in the xy plane: the convention CP2K and ASE share.
    cx = math.cos(beta)
    cy = (math.cos(alpha) - math.cos(beta) * math.cos(gamma)) / math.sin(gamma)
    return np.array(
        [
            [a, 0.0, 0.0],
            [b * math.cos(gamma), b * math.sin(gamma), 0.0],
            [c * cx, c * cy, c * math.sqrt(max(1.0 - cx**2 - cy**2, 0.0))],
        ]
    )


def method_name(root: Cp2kSection) -> str | None:
    """A short name of the electronic-structure method, e.g. 'GFN1-xTB' or 'PBE-D3'."""
    force_eval = root.section("FORCE_EVAL")
    if force_eval is None:
        return None
    program = (force_eval.keyword("METHOD") or "QS").upper()
    if program not in ("QS", "QUICKSTEP"):
        return program
    qs_method = ((force_eval.section("DFT/QS") or Cp2kSection("QS")).keyword("METHOD") or "GPW").upper()
    if qs_method == "XTB":
        # CP2K 2023 implements GFN1-xTB (Grimme, Bannwarth & Shushkov, JCTC 13, 1989 (2017)).
        xtb = force_eval.section("DFT/QS/XTB") or Cp2kSection("XTB")
        return f"GFN{xtb.keyword('GFN_TYPE') or '1'}-xTB"
    if qs_method in ("DFTB", "PM6", "AM1", "PM3", "MNDO", "RM1", "PDG", "PNNL", "MNDOD"):
        return qs_method
    xc = force_eval.section("DFT/XC")
    functional = None
    if xc is not None:
        xc_functional = xc.section("XC_FUNCTIONAL")
        if xc_functional is not None:
            functional = xc_functional.parameter.split()[0].upper() if xc_functional.parameter else None
            if functional is None and xc_functional.sections:
                functional = "+".join(s.name for s in xc_functional.sections)
        pair = xc.section("VDW_POTENTIAL/PAIR_POTENTIAL")
        if functional and pair is not None:
            vdw = (pair.keyword("TYPE") or "DFTD3").upper()
            functional += {"DFTD3": "-D3", "DFTD3(BJ)": "-D3(BJ)", "DFTD2": "-D2"}.get(vdw, f"-{vdw}")
    return functional or f"DFT ({qs_method})"


def run_settings(root: Cp2kSection) -> dict:
    """Project, method, ensemble, temperature, timestep and thermostat of an MD input (None where absent)."""
    glob = root.section("GLOBAL") or Cp2kSection("GLOBAL")
    md = root.section("MOTION/MD") or Cp2kSection("MD")
    thermostat = md.section("THERMOSTAT")
    ensemble = (md.keyword("ENSEMBLE") or "NVE").upper()
    thermostat_type = None
    timecon = None
    if ensemble in ("NVT", "NPT_I", "NPT_F", "NPT_IA", "ISOKIN") or thermostat is not None:
        thermostat_type = ((thermostat or Cp2kSection("T")).keyword("TYPE") or "NOSE").upper()
        detail = (thermostat or Cp2kSection("T")).section(thermostat_type)
        if detail is not None and detail.keyword("TIMECON") is not None:
            timecon = _parse_number(detail.keyword("TIMECON").split()[-1])
    if ensemble == "NVE":
        thermostat_type = None

    def number(text):
        return None if text is None else _parse_number(text.split()[-1])

    return {
        "project": glob.keyword("PROJECT") or glob.keyword("PROJECT_NAME"),
        "method": method_name(root),
        "ensemble": ensemble,
        "temperature_k": number(md.keyword("TEMPERATURE")) if ensemble != "NVE" else None,
        "timestep_fs": number(md.keyword("TIMESTEP")),
        "thermostat": thermostat_type,
        "thermostat_timecon_fs": timecon,
    }


BANNER_LINES = 502  # a CP2K output's banner (version, input file, processes and threads) is in its first lines


def _banner_lines(out_path: str | os.PathLike):
    """The first ``BANNER_LINES`` lines of a CP2K output file."""
    with open(out_path, errors="replace") as handle:
        yield from itertools.islice(handle, BANNER_LINES)


def read_cp2k_version(out_path: str | os.PathLike) -> str | None:
    """The version in a CP2K output file ('CP2K| version string: CP2K version 2023.1' -> '2023.1')."""
    for line in _banner_lines(out_path):
        match = re.search(r"CP2K\|\s*version string:\s*CP2K version\s+(\S+)", line)
        if match:
            return match[1]
    return None


def read_cp2k_cores(out_path: str | os.PathLike) -> int | None:
    """The cores a CP2K run used, as its output states them: MPI processes × OpenMP threads per process
    ('GLOBAL| Total number of message passing processes  1', 'GLOBAL| Number of threads for this process  2'),
    or, without those lines (an excerpt of the banner), the threads of 'DBCSR| OMP: Current number of threads';
    None where the output states neither."""
    found: dict[str, int] = {}
    patterns = {"processes": r"GLOBAL\|\s*Total number of message passing processes\s+(\d+)",
                "threads": r"GLOBAL\|\s*Number of threads for this process\s+(\d+)",
                "omp": r"OMP: Current number of threads\s+(\d+)"}
    for line in _banner_lines(out_path):
        for key, pattern in patterns.items():
            match = re.search(pattern, line)
            if match and key not in found:
                found[key] = int(match[1])
    threads = found.get("threads", found.get("omp"))
    if threads is None:
        return None
    return found.get("processes", 1) * threads


def run_cores(metadata: dict) -> int | None:
    """The cores of the CP2K run a dataset was imported from (:func:`read_cp2k_cores`), read from the output
    file among the run's sources (``metadata["sources"]`` in ``source_dir``) where it is still at hand;
    else None."""
    source_dir = metadata.get("source_dir")
    outputs = [entry.get("file", "") for entry in metadata.get("sources") or [] if isinstance(entry, dict)
               and str(entry.get("file", "")).endswith(".out")]
    if not source_dir or not outputs or not (Path(source_dir) / outputs[0]).is_file():
        return None
    return read_cp2k_cores(Path(source_dir) / outputs[0])


# ---------------------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFiles:
    """The files of one CP2K MD run, found by project name."""

    project: str
    pos: Path
    frc: Path
    vel: Path
    ener: Path | None
    cell: Path | None
    input: Path | None
    output: Path | None


def find_run_files(run_dir: str | os.PathLike, project: str | None = None) -> RunFiles:
    """Locate ``PROJECT-pos-1.xyz`` and its companions in ``run_dir``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise Cp2kFormatError(f"{run_dir}: no such directory")
    if project is None:
        projects = sorted(p.name[: -len("-pos-1.xyz")] for p in run_dir.glob("*-pos-1.xyz"))
        if not projects:
            raise Cp2kFormatError(f"{run_dir}: no CP2K trajectory (*-pos-1.xyz) found")
        if len(projects) > 1:
            raise Cp2kFormatError(f"{run_dir}: several CP2K projects ({', '.join(projects)}); choose one")
        project = projects[0]
    pos, frc, vel = (run_dir / f"{project}-{kind}-1.xyz" for kind in ("pos", "frc", "vel"))
    for required in (pos, frc, vel):
        if not required.is_file():
            raise Cp2kFormatError(f"{required}: no such file (a CP2K run must print positions, forces and velocities)")
    ener = run_dir / f"{project}-1.ener"
    cell = run_dir / f"{project}-1.cell"

    inputs = sorted(run_dir.glob("*.inp"))
    matching = []
    for candidate in inputs:
        try:
            settings = run_settings(read_cp2k_input(candidate))
        except Cp2kFormatError:
            continue
        if (settings["project"] or "").upper() == project.upper() or candidate.stem == project:
            matching.append(candidate)
    input_path = matching[0] if matching else (inputs[0] if len(inputs) == 1 else None)
    output_path = None
    if input_path is not None:
        for candidate in [input_path.with_suffix(".out"), *sorted(run_dir.glob("*.out"))]:
            if candidate.is_file() and _output_reads_input(candidate, input_path.name):
                output_path = candidate
                break
    return RunFiles(
        project, pos, frc, vel,
        ener if ener.is_file() else None,
        cell if cell.is_file() else None,
        input_path, output_path,
    )


def _output_reads_input(out_path: Path, input_name: str) -> bool:
    for line in _banner_lines(out_path):
        if line.startswith(" CP2K| Input file name"):
            return line.split()[-1] == input_name
    return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _align(named_steps: dict[str, np.ndarray], allow_truncated: bool, optional: set[str]) -> np.ndarray:
    """The MD steps present in every file of a run.

    Files in ``optional`` (ener, cell) may hold extra steps (printed more often or further);
    the trajectory files must hold exactly the same steps, except that a killed run may leave
    some of them short at the end, which ``allow_truncated`` accepts by dropping the extra frames.
    """
    common = None
    for steps in named_steps.values():
        common = steps if common is None else np.intersect1d(common, steps)
    if common.size == 0:
        raise Cp2kFormatError(f"{next(iter(named_steps))}: no MD step is present in every file of the run")
    last = common[-1]
    required = {name: steps for name, steps in named_steps.items() if name not in optional}
    for name, steps in required.items():
        inside = steps[steps <= last]
        if inside.size != common.size:
            extra = int(np.setdiff1d(inside, common)[0])
            raise Cp2kFormatError(
                f"{name}: holds step {extra}, which another file of the run lacks"
                " (frames must be printed at the same steps in every file)"
            )
    dropped = max(int(np.sum(steps > last)) for steps in required.values())
    if dropped:
        counts = ", ".join(f"{Path(name).name}: {steps.size}" for name, steps in named_steps.items())
        message = f"{next(iter(named_steps))}: frame counts differ between the files of the run ({counts})"
        if not allow_truncated:
            raise Cp2kFormatError(message + "; allow truncated input to keep the common steps")
        warnings.warn(f"{message}; dropped {dropped} frame(s) after step {int(last)}", Cp2kWarning, stacklevel=3)
    return common


def _index_of(steps: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    return np.searchsorted(steps, wanted)


def _seconds_per_step(used_time_s: np.ndarray) -> dict | None:
    """Mean/median wall seconds per MD step; rows 0 (no work) and 1 (includes setup) excluded."""
    body = used_time_s[2:]
    if body.size == 0:
        return None
    return {"mean": float(np.mean(body)), "median": float(np.median(body)), "n_steps": int(body.size)}


def import_cp2k_run(
    run_dir: str | os.PathLike,
    allow_truncated: bool = False,
    species: tuple[str, ...] = ("O", "H"),
    project: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Dataset:
    """Read the pos, frc, vel (and ener, cell, input, output) files of a CP2K MD run into a Dataset.

    Frames are aligned by the MD step in each XYZ header; species and their order must agree
    across files and belong to ``species``; units are converted to Å, fs, eV.
    """
    from discover import __version__

    say = progress or (lambda message: None)
    files = find_run_files(run_dir, project)

    say(f"reading {files.pos.name}")
    pos = read_xyz_trajectory(files.pos, allow_truncated)
    say(f"reading {files.frc.name}")
    frc = read_xyz_trajectory(files.frc, allow_truncated)
    say(f"reading {files.vel.name}")
    vel = read_xyz_trajectory(files.vel, allow_truncated)

    allowed = set(species)
    unknown = [a for a, s in enumerate(pos.species) if s not in allowed]
    if unknown:
        a = unknown[0]
        raise Cp2kFormatError(
            f"{files.pos}: line {pos.first_line[0] + 2 + a}: atom {a} is element {str(pos.species[a])!r};"
            f" allowed species are {', '.join(species)}"
        )
    for other in (frc, vel):
        path = files.frc if other is frc else files.vel
        if other.species.size != pos.species.size:
            raise Cp2kFormatError(f"{path}: {other.species.size} atoms per frame, but {files.pos.name} has {pos.species.size}")
        if np.any(other.species != pos.species):
            a = int(np.nonzero(other.species != pos.species)[0][0])
            raise Cp2kFormatError(
                f"{path}: line {other.first_line[0] + 2 + a}: atom {a} is {str(other.species[a])!r},"
                f" but {str(pos.species[a])!r} in {files.pos.name}; the files must list atoms in the same order"
            )
    for path, trajectory in ((files.pos, pos), (files.frc, frc), (files.vel, vel)):
        _check_steps(path, trajectory.step, trajectory.first_line + 1)

    named = {str(files.pos): pos.step, str(files.frc): frc.step, str(files.vel): vel.step}
    ener = None
    if files.ener is not None:
        say(f"reading {files.ener.name}")
        ener = read_ener(files.ener, allow_truncated)
        named[str(files.ener)] = ener.step
    cell_steps = cells = None
    if files.cell is not None:
        cell_steps, cells = read_cell_file(files.cell, allow_truncated)
        named[str(files.cell)] = cell_steps
    optional = {str(p) for p in (files.ener, files.cell) if p is not None}
    steps = _align(named, allow_truncated, optional)

    root = read_cp2k_input(files.input) if files.input is not None else None
    settings = run_settings(root) if root is not None else {}
    if cells is not None:
        cell = cells[_index_of(cell_steps, steps)]
    else:
        input_cell = cell_from_input(root, files.input) if root is not None else None
        if input_cell is None:
            where = f"{files.input}: no &CELL ABC or A, B, C" if files.input else "no CP2K input (*.inp)"
            raise Cp2kFormatError(f"{Path(run_dir)}: cannot find the cell: {where}, and no {files.project}-1.cell file")
        cell = np.broadcast_to(input_cell, (steps.size, 3, 3)).copy()
    if np.any(np.abs(np.linalg.det(cell)) < 1e-6):
        raise Cp2kFormatError(f"{files.cell or files.input}: the cell has zero volume")

    ipos, ifrc, ivel = (_index_of(t.step, steps) for t in (pos, frc, vel))
    energy_hartree = pos.energy_hartree[ipos]
    time_fs = pos.time_fs[ipos]
    if ener is not None:
        iener = _index_of(ener.step, steps)
        # Headers carry one more digit than the ener file; the ener file fills in where they don't.
        energy_hartree = np.where(np.isnan(energy_hartree), ener.potential_hartree[iener], energy_hartree)
        time_fs = ener.time_fs[iener]
        # The same potential energy is printed in both files; disagreement means mixed-up runs.
        both = ~np.isnan(pos.energy_hartree[ipos])
        gap = np.abs(pos.energy_hartree[ipos][both] - ener.potential_hartree[iener][both])
        if gap.size and gap.max() > 1e-6:
            k = int(np.argmax(gap))
            raise Cp2kFormatError(
                f"{files.ener}: potential energy at step {int(steps[both][k])} differs from {files.pos.name}"
                f" by {gap.max():.3g} Ha; are the files from the same run?"
            )
    if np.isnan(energy_hartree).any():
        raise Cp2kFormatError(f"{files.pos}: no potential energy (E = ...) in the headers and no {files.project}-1.ener file")
    if np.isnan(time_fs).any():
        if settings.get("timestep_fs"):
            time_fs = steps * settings["timestep_fs"]
        else:
            raise Cp2kFormatError(f"{files.pos}: no time in the headers and no {files.project}-1.ener file")

    say("checking sources")
    source_paths = [p for p in (files.pos, files.frc, files.vel, files.ener, files.cell, files.input, files.output) if p]
    metadata = {
        "program": "CP2K",
        "version": read_cp2k_version(files.output) if files.output else None,
        "method": settings.get("method"),
        "ensemble": settings.get("ensemble"),
        "temperature_k": settings.get("temperature_k"),
        "timestep_fs": settings.get("timestep_fs"),
        "thermostat": settings.get("thermostat"),
        "thermostat_timecon_fs": settings.get("thermostat_timecon_fs"),
        "project": files.project,
        "source_dir": str(Path(run_dir).resolve()),
        "sources": [{"file": p.name, "sha256": _sha256(p), "bytes": p.stat().st_size} for p in source_paths],
        "importer": "discover.cp2k.import_cp2k_run",
        "importer_version": __version__,
        "cp2k_seconds_per_step": _seconds_per_step(ener.used_time_s) if ener is not None else None,
        "dropped_frames": int(max(pos.step.size, frc.step.size, vel.step.size) - steps.size),
    }
    return Dataset(
        species=pos.species.astype(str),
        positions=pos.values[ipos],
        forces=frc.values[ifrc] * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
        velocities=vel.values[ivel] * BOHR_PER_AU_TIME_TO_ANGSTROM_PER_FS,
        energy=energy_hartree * HARTREE_TO_EV,
        cell=cell,
        time=np.asarray(time_fs, dtype=float),
        step=steps.astype(np.int64),
        metadata=metadata,
    )


# ---------------------------------------------------------------------------------------
# Building water boxes and CP2K inputs
# ---------------------------------------------------------------------------------------

# Rigid SPC-like geometry (the TIP3P/TIP4P experimental gas-phase values).
OH_BOND_ANGSTROM = 0.9572
HOH_ANGLE_DEG = 104.52
MIN_OO_ANGSTROM = 2.5
MIN_INTERMOLECULAR_ANGSTROM = 1.6
WATER_MASS_AMU = float(masses_amu(["O", "H", "H"]).sum())


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (Shoemake's unit quaternions)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def water_box(
    n_molecules: int, density_g_cm3: float = 0.997, seed: int = 0, max_attempts: int = 2000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A periodic cubic box of rigid water molecules at random positions and orientations.

    Returns (species (3n,) as O, H, H per molecule; positions (3n,3) Å; cell (3,3) Å). Placements
    with an O–O distance below 2.5 Å or any intermolecular atom pair below 1.6 Å (minimum
    image) are rejected; after ``max_attempts`` rejections for one molecule it raises.
    """
    if n_molecules < 1:
        raise MldError(f"water box: need at least one molecule, got {n_molecules}")
    if not density_g_cm3 > 0:
        raise MldError(f"water box: density must be positive, got {density_g_cm3} g/cm³")
    mass_g = n_molecules * WATER_MASS_AMU / AVOGADRO
    length = (mass_g / density_g_cm3 * 1e24) ** (1.0 / 3.0)  # cm³ -> Å³
    cell = np.diag([length] * 3)
    half = math.radians(HOH_ANGLE_DEG) / 2
    template = np.array(
        [[0.0, 0.0, 0.0],
         [OH_BOND_ANGSTROM * math.sin(half), 0.0, OH_BOND_ANGSTROM * math.cos(half)],
         [-OH_BOND_ANGSTROM * math.sin(half), 0.0, OH_BOND_ANGSTROM * math.cos(half)]]
    )
    rng = np.random.default_rng(seed)
    placed = np.empty((0, 3))
    for molecule in range(n_molecules):
        for _ in range(max_attempts):
            candidate = rng.uniform(0.0, length, size=3) + template @ _random_rotation(rng).T
            if placed.size == 0:
                break
            oxygen_gap = minimum_image(placed[0::3] - candidate[0], cell)
            if np.min(np.einsum("ij,ij->i", oxygen_gap, oxygen_gap)) < MIN_OO_ANGSTROM**2:
                continue
            gap = minimum_image(placed[None, :, :] - candidate[:, None, :], cell)
            if np.min(np.einsum("abi,abi->ab", gap, gap)) >= MIN_INTERMOLECULAR_ANGSTROM**2:
                break
        else:
            raise MldError(
                f"water box: could not place molecule {molecule + 1} of {n_molecules} after {max_attempts}"
                f" tries at {density_g_cm3} g/cm³; lower the density or try another seed"
            )
        placed = np.vstack([placed, candidate])
    species = np.array(["O", "H", "H"] * n_molecules)
    return species, placed, cell


def write_xyz_frame(path: str | os.PathLike, species, positions: np.ndarray, cell: np.ndarray) -> Path:
    """Write one structure as extended XYZ (the cell in the Lattice= comment), atomically."""
    lattice = " ".join(f"{x:.10f}" for x in np.asarray(cell, dtype=float).ravel())
    lines = [str(len(species)), f'Lattice="{lattice}" Properties=species:S:1:pos:R:3 pbc="T T T"']
    lines += [f"{s:<2} {x:16.10f} {y:16.10f} {z:16.10f}" for s, (x, y, z) in zip(species, positions)]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def read_xyz_frame(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one structure (species, positions Å, cell Å) from an XYZ file whose comment has Lattice=."""
    path = Path(path)
    lines, _ = _read_lines(path)
    try:
        n_atoms = int(lines[0])
    except (IndexError, ValueError):
        raise Cp2kFormatError(f"{path}: line 1: expected the number of atoms") from None
    if len(lines) < n_atoms + 2:
        raise Cp2kFormatError(f"{path}: {n_atoms} atoms announced but only {max(len(lines) - 2, 0)} atom lines")
    match = re.search(r'Lattice\s*=\s*"([^"]*)"', lines[1], flags=re.IGNORECASE)
    if match is None:
        raise Cp2kFormatError(f'{path}: line 2: no Lattice="ax ay az bx by bz cx cy cz" giving the cell')
    try:
        cell = np.array([float(x) for x in match[1].split()]).reshape(3, 3)
    except ValueError:
        raise Cp2kFormatError(f"{path}: line 2: Lattice must hold nine numbers") from None
    species, positions = [], []
    for number, line in enumerate(lines[2 : n_atoms + 2], start=3):
        fields = line.split()
        try:
            positions.append([float(x) for x in fields[1:4]])
            species.append(fields[0])
            if len(fields) < 4:
                raise ValueError
        except ValueError:
            raise Cp2kFormatError(f"{path}: line {number}: expected 'SYMBOL x y z', found {line.strip()!r}") from None
    positions = np.array(positions)
    if not np.all(np.isfinite(positions)) or not np.all(np.isfinite(cell)):
        raise Cp2kFormatError(f"{path}: non-finite coordinates or cell")
    return np.array(species), positions, cell


def write_water_box(
    path: str | os.PathLike, n_molecules: int, density_g_cm3: float = 0.997, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build ``water_box(...)`` and write it as extended XYZ; returns what ``water_box`` returns."""
    species, positions, cell = water_box(n_molecules, density_g_cm3, seed)
    write_xyz_frame(path, species, positions, cell)
    return species, positions, cell


METHODS = ("xtb", "pbe-d3")
THERMOSTATS = ("csvr", "nose", "none")

# orbital-transformation SCF with an outer loop, shared by both methods: robust for condensed-phase MD
_OT_SCF = """\
      &OT
        PRECONDITIONER FULL_SINGLE_INVERSE
        MINIMIZER DIIS
      &END OT
      &OUTER_SCF
        MAX_SCF 10
        EPS_SCF 1.0E-6
      &END OUTER_SCF
"""

_XTB_DFT = """\
    &QS
      METHOD xTB
      &xTB
        DO_EWALD T
        CHECK_ATOMIC_CHARGES F
      &END xTB
    &END QS
    &SCF
      SCF_GUESS MOPAC
      EPS_SCF 1.0E-6
      MAX_SCF 50
""" + _OT_SCF + """\
    &END SCF
    &POISSON
      &EWALD
        EWALD_TYPE SPME
        GMAX 25
      &END EWALD
    &END POISSON
"""

# PBE-D3 with GTH pseudopotentials and MOLOPT basis: the common CP2K setup for liquid water
# (VandeVondele et al., J. Chem. Phys. 120, 300 (2004); Grimme et al., J. Chem. Phys. 132, 154104 (2010)).
_PBE_D3_DFT = """\
    BASIS_SET_FILE_NAME BASIS_MOLOPT
    POTENTIAL_FILE_NAME GTH_POTENTIALS
    &MGRID
      CUTOFF 400
      REL_CUTOFF 50
    &END MGRID
    &QS
      EPS_DEFAULT 1.0E-12
    &END QS
    &SCF
      SCF_GUESS ATOMIC
      EPS_SCF 1.0E-6
      MAX_SCF 30
""" + _OT_SCF + """\
    &END SCF
    &XC
      &XC_FUNCTIONAL PBE
      &END XC_FUNCTIONAL
      &VDW_POTENTIAL
        POTENTIAL_TYPE PAIR_POTENTIAL
        &PAIR_POTENTIAL
          TYPE DFTD3
          PARAMETER_FILE_NAME dftd3.dat
          REFERENCE_FUNCTIONAL PBE
        &END PAIR_POTENTIAL
      &END VDW_POTENTIAL
    &END XC
"""

_PBE_KINDS = """\
    &KIND O
      BASIS_SET DZVP-MOLOPT-SR-GTH
      POTENTIAL GTH-PBE-q6
    &END KIND
    &KIND H
      BASIS_SET DZVP-MOLOPT-SR-GTH
      POTENTIAL GTH-PBE-q1
    &END KIND
"""


def cp2k_input_text(
    species,
    positions: np.ndarray,
    cell: np.ndarray,
    *,
    method: str = "xtb",
    thermostat: str = "csvr",
    temperature_k: float = 300.0,
    timestep_fs: float = 0.5,
    steps: int = 1000,
    thermostat_timecon_fs: float = 100.0,
    project: str = "md",
    seed: int = 1,
) -> str:
    """The text of a CP2K MD input for the given structure, printing positions, forces and velocities every step."""
    method, thermostat = method.lower(), thermostat.lower()
    if method not in METHODS:
        raise MldError(f"CP2K input: method {method!r} is not one of {', '.join(METHODS)}")
    if thermostat not in THERMOSTATS:
        raise MldError(f"CP2K input: thermostat {thermostat!r} is not one of {', '.join(THERMOSTATS)}")
    if steps < 1 or not timestep_fs > 0 or not temperature_k > 0:
        raise MldError("CP2K input: steps, timestep and temperature must be positive")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", project):
        raise MldError(f"CP2K input: project name {project!r} must be letters, digits, '_', '.', '-'")
    cell = np.asarray(cell, dtype=float)
    vectors = "\n".join(f"      {name} {x:.10f} {y:.10f} {z:.10f}" for name, (x, y, z) in zip("ABC", cell))
    coords = "\n".join(f"      {s} {x:.10f} {y:.10f} {z:.10f}" for s, (x, y, z) in zip(species, positions))
    dft = _XTB_DFT if method == "xtb" else _PBE_D3_DFT
    kinds = "" if method == "xtb" else _PBE_KINDS
    if thermostat == "none":
        ensemble, thermostat_block = "NVE", ""
    else:
        detail = (
            f"      &CSVR\n        TIMECON {thermostat_timecon_fs}\n      &END CSVR\n"
            if thermostat == "csvr"
            else f"      &NOSE\n        LENGTH 3\n        TIMECON {thermostat_timecon_fs}\n      &END NOSE\n"
        )
        ensemble = "NVT"
        thermostat_block = f"    &THERMOSTAT\n      TYPE {thermostat.upper()}\n{detail}    &END THERMOSTAT\n"
    print_every = "".join(
        f"    &{what}\n      &EACH\n        MD 1\n      &END EACH\n    &END {what}\n"
        for what in ("TRAJECTORY", "FORCES", "VELOCITIES")
    )
    return (
        f"&GLOBAL\n  PROJECT {project}\n  RUN_TYPE MD\n  PRINT_LEVEL LOW\n  SEED {int(seed)}\n&END GLOBAL\n"
        f"&FORCE_EVAL\n  METHOD QS\n  &DFT\n{dft}  &END DFT\n"
        f"  &SUBSYS\n    &CELL\n{vectors}\n      PERIODIC XYZ\n    &END CELL\n"
        f"    &COORD\n{coords}\n    &END COORD\n{kinds}  &END SUBSYS\n&END FORCE_EVAL\n"
        f"&MOTION\n  &MD\n    ENSEMBLE {ensemble}\n    STEPS {int(steps)}\n    TIMESTEP {timestep_fs}\n"
        f"    TEMPERATURE {temperature_k}\n{thermostat_block}  &END MD\n"
        f"  &PRINT\n{print_every}    &RESTART\n      &EACH\n        MD {max(int(steps), 1)}\n      &END EACH\n"
        f"    &END RESTART\n    &RESTART_HISTORY OFF\n    &END RESTART_HISTORY\n  &END PRINT\n&END MOTION\n"
    )


def write_cp2k_input(path: str | os.PathLike, species, positions: np.ndarray, cell: np.ndarray, **options) -> Path:
    """Write ``cp2k_input_text(...)`` to ``path`` atomically (options as for ``cp2k_input_text``)."""
    return write_text_atomic(path, cp2k_input_text(species, positions, cell, **options))


def find_cp2k_binary(cp2k_binary: str | os.PathLike | None = None) -> str:
    """The CP2K executable: the one given, else ``cp2k.psmp`` or ``cp2k`` on PATH."""
    candidates = [str(cp2k_binary)] if cp2k_binary else ["cp2k.psmp", "cp2k.ssmp", "cp2k"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    if cp2k_binary:
        raise Cp2kRunError(f"CP2K binary {cp2k_binary} not found or not executable")
    raise Cp2kRunError("CP2K not found on PATH (cp2k.psmp or cp2k); install it with: apt-get install cp2k")


def input_project(input_path: str | os.PathLike) -> str:
    """The project name of a CP2K input: GLOBAL/PROJECT, else CP2K's default 'PROJECT'."""
    return run_settings(read_cp2k_input(input_path))["project"] or "PROJECT"


def run_cp2k(
    input_path: str | os.PathLike,
    workdir: str | os.PathLike,
    cp2k_binary: str | os.PathLike | None = None,
    threads: int | None = None,
    timeout_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Run CP2K on ``input_path`` inside ``workdir``; returns the output file path.

    The input is copied into ``workdir`` when it lives elsewhere, so that every file of the
    run ends up in one folder. CP2K appends to trajectory files it finds, so a workdir that
    already holds this project's trajectory is refused. ``progress`` receives the latest MD
    step while CP2K runs. Raises ``Cp2kRunError`` with CP2K's own abort message on failure.
    """
    binary = find_cp2k_binary(cp2k_binary)
    input_path, workdir = Path(input_path), Path(workdir)
    if not input_path.is_file():
        raise Cp2kRunError(f"{input_path}: no such CP2K input file")
    project = input_project(input_path)
    stale = [workdir / f"{project}-{kind}" for kind in ("pos-1.xyz", "frc-1.xyz", "vel-1.xyz", "1.ener")]
    stale = [p for p in stale if p.exists()]
    if stale:
        raise Cp2kRunError(f"{stale[0]}: left by an earlier run, and CP2K would append to it; use an empty workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    local_input = workdir / input_path.name
    if local_input.resolve() != input_path.resolve():
        shutil.copyfile(input_path, local_input)
    output = workdir / f"{local_input.stem}.out"
    ener = workdir / f"{project}-1.ener"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or os.cpu_count() or 1))
    started = time.monotonic()
    with open(workdir / f"{local_input.stem}.stdout", "w+") as log:
        process = subprocess.Popen(
            [binary, "-i", local_input.name, "-o", output.name], cwd=workdir, env=env, stdout=log, stderr=log, text=True
        )
        try:
            while process.poll() is None:
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    process.kill()
                    process.wait()
                    raise Cp2kRunError(f"{local_input}: CP2K did not finish within {timeout_s} s")
                if progress is not None and ener.is_file():
                    progress(f"CP2K at MD step {_last_step(ener)}")
                time.sleep(0.2)
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.wait()
            raise
        log.seek(0)
        logged = log.read()
    if process.returncode != 0:
        result = subprocess.CompletedProcess(process.args, process.returncode, logged, "")
        raise Cp2kRunError(f"{local_input}: CP2K failed (exit {process.returncode}): {_abort_reason(output, result)}")
    return output


def _last_step(ener: Path) -> str:
    """The step number on the last complete line of a growing ener file."""
    with open(ener, "rb") as handle:
        handle.seek(max(ener.stat().st_size - 400, 0))
        lines = handle.read().decode(errors="replace").split("\n")[:-1]
    fields = lines[-1].split() if lines else []
    return fields[0] if fields and not fields[0].startswith("#") else "0"


def check_cp2k_input(input_path: str | os.PathLike, cp2k_binary: str | os.PathLike | None = None) -> None:
    """Have CP2K parse ``input_path`` (``cp2k --check``): unknown sections or keywords raise Cp2kRunError."""
    binary = find_cp2k_binary(cp2k_binary)
    input_path = Path(input_path)
    if not input_path.is_file():
        raise Cp2kRunError(f"{input_path}: no such CP2K input file")
    result = subprocess.run(
        [binary, "--check", input_path.name], check=False, cwd=input_path.parent,
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0 or "SUCCESS" not in result.stdout:
        raise Cp2kRunError(f"{input_path}: CP2K rejects the input: {_abort_reason(Path(os.devnull), result)}")


def _abort_reason(output: Path, result: subprocess.CompletedProcess) -> str:
    """The message in CP2K's [ABORT] box, without the box's drawing, on one line."""
    text = (output.read_text(errors="replace") if output.is_file() and output.stat().st_size else "") + "\n" + result.stdout + result.stderr
    start = text.find("[ABORT]")
    if start >= 0:
        box = []
        for line in text[start:].splitlines()[1:]:
            if not line.strip().startswith("*") or set(line.strip()) <= {"*"}:
                break
            box.append(line.strip().strip("*"))
        art = re.compile(r"^(?:[\\/|_]+|O/\|)$")
        words = [word for word in " ".join(box).split() if not art.match(word)]
        if words:
            return " ".join(words)[:300]
    tail = [line.strip() for line in text.splitlines() if line.strip()]
    return tail[-1][:300] if tail else "no output"
