"""The run loop: integrate, log, checkpoint, and stop cleanly when a run blows up.

:func:`simulate` is the one entry point the CLI calls (``mld simulate``). It writes into ``out_dir``:

``thermo.csv``
    every ``thermo_every`` steps: step, time (fs), temperature (K), kinetic, potential, total and
    conserved energy (eV), pressure (bar).
``trajectory.xyz``
    extended XYZ every ``trajectory_every`` steps (see :mod:`simulate.trajectory`).
``checkpoint.npz``
    every ``checkpoint_every`` steps and at the end, written atomically. It holds everything the
    next step depends on — positions, velocities, thermostat chain, random-generator state, the
    neighbour list's reference positions (the list is rebuilt from them exactly), the step — and
    the lengths of both logs, so ``resume=True`` cuts the logs back and continues bit for bit.
``last_good.xyz``
    only after a blow-up: the last frame that passed the checks (a checkpoint of it is written too).

NVE and Nosé–Hoover steps from one trajectory frame or checkpoint to the next run as compiled blocks
(``Integrator.run``, about ``BLOCK_S`` each where no frame comes sooner), which reach the states of the
plain ``step`` bit for bit and record the numbers of the thermo rows on the way (the same rows, byte for
byte); Langevin steps, and a step a block stops before (three-body rows to widen, a failed check), are
plain steps. A run of the 96-atom learned pairwise water, tabulated, at the defaults (a row every 10 steps,
a frame every 100) took 29.3–32.0 µs a step, against 34.4–37.5 with blocks that returned to Python at
every thermo row (runs alternating with the code before).

A step fails when a position, velocity or force is not finite, a force exceeds
``max_force_ev_per_angstrom``, or two atoms come closer than ``min_distance_angstrom``; the run then
raises :class:`SimulationBlowUp` naming the step and the atoms. (Energies are computed on output
steps only, so a non-finite energy with finite forces is seen at the next thermo row or output.)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numba
import numpy as np

from simulate import energy, integrate, partition, quantity, setup, topology, trajectory
from simulate.errors import MldError
from simulate.fileio import atomic_path
from simulate.kernels import is_molecular
from simulate.space import box_lengths, minimum_image

CHECKPOINT_VERSION = 1
THERMOSTATS = ("nose-hoover", "nve", "langevin")
THERMO_COLUMNS = (
    "step", "time_fs", "temperature_k", "kinetic_ev", "potential_ev", "total_ev", "conserved_ev", "pressure_bar",
)
# the longest a finished thermo row waits in memory before it is written (see simulate's flush_thermo)
THERMO_FLUSH_S = 1.0
# about how long a compiled block runs between returns to Python (progress, the log written out), when no
# frame or checkpoint comes sooner
BLOCK_S = 0.25
LONG_RUN_STEPS = 1_000_000  # a production run's length, for timings of the engine alone


class SimulationBlowUp(MldError, RuntimeError):
    """A run produced a non-finite value, a huge force or overlapping atoms."""


class CheckpointError(MldError, ValueError):
    """A checkpoint that cannot be resumed with the given settings."""


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    steps: int  # the step reached
    state: tuple  # the integrator state at that step
    thermo_path: Path
    trajectory_path: Path
    checkpoint_path: Path
    wall_s: float  # time in the loop, this call only
    ns_per_day: float
    neighbor_builds: int  # list rebuilds during this call


def ns_per_day(steps: int, dt_fs: float, seconds: float) -> float:
    """Simulated nanoseconds per day of wall time."""
    return steps * dt_fs * 1e-6 / seconds * 86400.0 if seconds > 0 else math.inf


# --- health check ----------------------------------------------------------------------------------


@numba.njit(cache=True)
def _health(positions, velocities, forces, nearest):
    """(first non-finite atom or −1, atom with the largest force, that |F|², atom nearest another, distance)."""
    bad = -1
    worst_atom = 0
    worst_f2 = 0.0
    close_atom = 0
    close_r = np.inf
    for i in range(positions.shape[0]):
        f2 = forces[i, 0] ** 2 + forces[i, 1] ** 2 + forces[i, 2] ** 2
        ok = np.isfinite(f2)
        for d in range(3):
            ok = ok and np.isfinite(positions[i, d]) and np.isfinite(velocities[i, d])
        if not ok and bad < 0:
            bad = i
        if f2 > worst_f2:
            worst_f2 = f2
            worst_atom = i
        if nearest[i] < close_r:
            close_r = nearest[i]
            close_atom = i
    return bad, worst_atom, worst_f2, close_atom, close_r


def _failure(state, species, box: np.ndarray, step: int, max_force: float, min_distance: float) -> str | None:
    """None if the state is healthy, else one line naming the step and the atom(s)."""
    force = state.force
    bad, worst, worst_f2, close, close_r = _health(
        state.positions, state.velocities, force.forces_ev_per_angstrom, force.nearest_angstrom
    )
    if bad >= 0 or not math.isfinite(force.energy_ev):
        atom = max(bad, 0)
        return f"step {step}: non-finite position, velocity or force on atom {atom} ({species[atom]})"
    if worst_f2 > max_force**2:
        return (
            f"step {step}: force on atom {worst} ({species[worst]}) is {math.sqrt(worst_f2):.3g} eV/Å, "
            f"beyond the bound {max_force:g} eV/Å"
        )
    if close_r < min_distance:
        d = minimum_image(state.positions - state.positions[close], np.diag(box))
        r = np.sqrt(np.einsum("ij,ij->i", d, d))
        r[close] = np.inf
        other = int(np.argmin(r))
        return (
            f"step {step}: atoms {close} ({species[close]}) and {other} ({species[other]}) are "
            f"{close_r:.3f} Å apart, closer than {min_distance:g} Å"
        )
    return None


# --- logs ------------------------------------------------------------------------------------------


def _thermo_line(step: int, dt_fs: float, record, box: np.ndarray, n_atoms: int) -> str:
    """The thermo row of one step from its record: 2K, potential, virial and conserved energy (eV), as a compiled
    block records them (see integrate.ThermoRecord)."""
    twice_kinetic, potential, virial, conserved = (float(v) for v in record)
    kinetic = 0.5 * twice_kinetic
    values = (
        float(quantity.temperature_of_kinetic_k(kinetic, n_atoms)), kinetic, potential, kinetic + potential, conserved,
        quantity.pressure_bar(kinetic, virial, box),
    )
    return f"{step},{step * dt_fs:.6f}," + ",".join(f"{v:.12g}" for v in values) + "\n"


def _thermo_row(step: int, dt_fs: float, state, integrator: integrate.Integrator, box: np.ndarray) -> str:
    """The thermo row of a state: the same numbers, bit for bit, as a compiled block records for it."""
    record = (integrate.twice_kinetic_ev(state.velocities, state.masses), state.force.energy_ev,
              state.force.virial_ev, integrator.conserved_energy_ev(state))
    return _thermo_line(step, dt_fs, record, box, len(state.masses))


def _frame(step: int, dt_fs: float, state, species, box: np.ndarray) -> str:
    info = {
        "step": step,
        "time_fs": f"{step * dt_fs:.6f}",
        "energy": f"{state.force.energy_ev:.12g}",
        "temperature_k": f"{float(quantity.temperature_k(state.velocities, state.masses)):.6f}",
    }
    return trajectory.extxyz_frame(
        species, state.positions, box, state.velocities, state.force.forces_ev_per_angstrom,
        state.force.atom_loss_ev, info,
    )


# --- checkpoints -----------------------------------------------------------------------------------


def _kernel_fingerprint(kernel_module: ModuleType) -> str:
    path = getattr(kernel_module, "__file__", None)
    if path and Path(path).is_file():
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return getattr(kernel_module, "__name__", "unknown")


def _settings(kernel_module, species, box, dt_fs, thermostat, temperature_k, tau_fs, friction_per_fs, seed,
              skin_angstrom) -> dict:
    """Everything a resumed run must share with the run that wrote the checkpoint."""
    return {
        "kernel": _kernel_fingerprint(kernel_module),
        "n_atoms": len(species),
        "species": "".join(f"{s} " for s in species),
        "box_angstrom": [float(v) for v in box],
        "dt_fs": float(dt_fs),
        "thermostat": thermostat,
        "temperature_k": float(temperature_k),
        "tau_fs": float(tau_fs),
        "friction_per_fs": float(friction_per_fs),
        "seed": int(seed),
        "skin_angstrom": float(skin_angstrom),
    }


def write_checkpoint(path: Path, step: int, state, settings: dict, thermo_bytes: int, trajectory_bytes: int,
                     molecules: np.ndarray | None = None) -> None:
    """Atomically write everything needed to continue from ``step`` exactly (a molecular run's molecules too)."""
    arrays = {
        "positions": state.positions,
        "velocities": state.velocities,
        "neighbor_reference_positions": state.neighbors.reference_positions,
    }
    if molecules is not None:
        arrays["molecules"] = np.asarray(molecules, dtype=np.int64)
    extra = {}
    if isinstance(state, integrate.NoseHooverChainState):
        arrays.update(chain_xi=state.chain.xi, chain_v_xi=state.chain.v_xi, chain_q_mass=state.chain.q_mass)
    if isinstance(state, integrate.LangevinState):
        extra = {"rng_state": integrate.rng_state_json(state.rng), "heat_ev": repr(float(state.heat_ev))}
    meta = {
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "settings": settings,
        "thermo_bytes": int(thermo_bytes),
        "trajectory_bytes": int(trajectory_bytes),
        **extra,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)


def read_checkpoint(path: Path, arrays: bool = True) -> tuple[dict, dict]:
    """(meta, arrays) of a checkpoint file; without ``arrays``, its metadata alone (and no arrays)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise TypeError("not an .npz archive")
        with loaded as npz:
            contents = {k: npz[k] for k in npz.files if k != "meta"} if arrays else {}
            meta = json.loads(str(npz["meta"]))
        if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
            raise TypeError("its metadata is not a table of settings")
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')}, expected {CHECKPOINT_VERSION}")
    return meta, contents


def checkpoint_written_by(out_dir: Path, kernel_module: ModuleType) -> bool:
    """Whether ``out_dir`` holds a checkpoint written by a run of ``kernel_module`` (False without one)."""
    path = Path(out_dir) / "checkpoint.npz"
    if not path.is_file():
        return False
    meta, _ = read_checkpoint(path, arrays=False)
    return meta["settings"].get("kernel") == _kernel_fingerprint(kernel_module)


def _restore(meta: dict, arrays: dict, masses, force_fn, box, cutoff, skin):
    """The integrator state at the checkpoint, rebuilt exactly (list from its reference positions)."""
    neighbors = partition.neighbor_list(arrays["neighbor_reference_positions"], box, cutoff, skin, half=True)
    neighbors, force = force_fn(arrays["positions"], neighbors)
    base = (arrays["positions"], arrays["velocities"], masses, force, neighbors)
    thermostat = meta["settings"]["thermostat"]
    if thermostat == "nve":
        return integrate.NVEState(*base)
    if thermostat == "nose-hoover":
        chain = integrate.ChainState(arrays["chain_xi"], arrays["chain_v_xi"], arrays["chain_q_mass"])
        return integrate.NoseHooverChainState(*base, chain)
    return integrate.LangevinState(*base, integrate.rng_from_json(meta["rng_state"]), float(meta["heat_ev"]))


# --- the run ---------------------------------------------------------------------------------------


def make_integrator(force_fn, thermostat: str, dt_fs: float, temperature_k: float, tau_fs: float,
                    friction_per_fs: float, seed: int) -> integrate.Integrator:
    if thermostat == "nve":
        return integrate.nve(force_fn, dt_fs)
    if thermostat == "nose-hoover":
        return integrate.nvt_nose_hoover(force_fn, dt_fs, temperature_k, tau_fs=tau_fs)
    if thermostat == "langevin":
        return integrate.nvt_langevin(force_fn, dt_fs, temperature_k, friction_per_fs=friction_per_fs, seed=seed)
    raise MldError(f"unknown thermostat {thermostat!r}; choose one of {', '.join(THERMOSTATS)}")


def atom_types(kernel_module: ModuleType, species) -> np.ndarray:
    """Each atom's type: the index of its element in the kernel's SPECIES."""
    lookup = {name: k for k, name in enumerate(kernel_module.SPECIES)}
    unknown = sorted({str(s) for s in species} - set(lookup))
    if unknown:
        raise MldError(
            f"the model knows species {', '.join(kernel_module.SPECIES)}, not {', '.join(unknown)}"
        )
    return np.array([lookup[str(s)] for s in species], dtype=np.int64)


def _bond_cutoffs(kernel_module: ModuleType) -> np.ndarray:
    return topology.bond_cutoff_matrix(kernel_module.BOND_CUTOFF_ANGSTROM, len(kernel_module.SPECIES))


def _start_velocities(velocities, masses: np.ndarray, temperature_k: float, seed: int) -> np.ndarray:
    """A run's first velocities (Å/fs): the given ones less the centre-of-mass motion, or Maxwell–Boltzmann at
    ``temperature_k`` drawn with ``seed`` where none are given."""
    if velocities is None:
        return setup.maxwell_boltzmann(masses, temperature_k, seed)
    return setup.remove_com_momentum(np.asarray(velocities, dtype=float), masses)


def simulate(
    kernel_module: ModuleType,
    species,
    positions: np.ndarray,
    box,
    velocities: np.ndarray | None = None,
    *,
    steps: int,
    dt_fs: float = 0.5,
    temperature_k: float = 300.0,
    thermostat: str = "nose-hoover",
    out_dir: str | Path,
    tau_fs: float = 100.0,
    friction_per_fs: float = 0.01,
    seed: int = 0,
    skin_angstrom: float = 1.0,
    thermo_every: int = 10,
    trajectory_every: int = 100,
    checkpoint_every: int = 1000,
    max_force_ev_per_angstrom: float = 1e3,
    min_distance_angstrom: float = 0.5,
    resume: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> RunResult:
    """Run ``steps`` steps of MD of a kernel module from one frame, writing logs into ``out_dir``.

    ``velocities`` (Å/fs) default to Maxwell–Boltzmann at ``temperature_k`` drawn with ``seed``;
    given ones keep their values less the centre-of-mass motion. With ``resume`` and a checkpoint
    in ``out_dir`` the run continues from it up to step ``steps`` (the starting frame is then not
    used) and its files end exactly as an unbroken run's would. ``progress(step, steps,
    elapsed_s)`` is called with the step of the latest thermo row: after each compiled block that wrote
    one (some ``BLOCK_S`` apart), or after every row of the plain steps.
    """
    out_dir = Path(out_dir)
    species = np.asarray(species).astype(str)
    box = box_lengths(box)
    positions = np.asarray(positions, dtype=float)
    if positions.shape != (len(species), 3):
        raise MldError(f"positions have shape {positions.shape}, expected ({len(species)}, 3)")
    if thermostat not in THERMOSTATS:
        raise MldError(f"unknown thermostat {thermostat!r}; choose one of {', '.join(THERMOSTATS)}")
    if not (dt_fs > 0 and steps >= 0):
        raise MldError(f"need dt_fs > 0 and steps ≥ 0, got dt_fs={dt_fs}, steps={steps}")
    types = atom_types(kernel_module, species)
    masses = np.array(kernel_module.MASSES_AMU, dtype=float)[types]
    checkpoint_path = out_dir / "checkpoint.npz"
    resumed = read_checkpoint(checkpoint_path) if resume and checkpoint_path.exists() else None
    molecules = None
    if is_molecular(kernel_module):
        # a molecular model's molecules: those of the starting frame, or the checkpoint's on resume;
        # checked at every trajectory frame
        bond_cutoffs = _bond_cutoffs(kernel_module)
        if resumed is not None and "molecules" in resumed[1]:
            molecules = resumed[1]["molecules"]
        else:
            molecules = topology.assign_molecules(positions, box, types, bond_cutoffs)
    force_fn = energy.make_force_fn(kernel_module, types, box, skin_angstrom, molecules)
    integrator = make_integrator(force_fn, thermostat, dt_fs, temperature_k, tau_fs, friction_per_fs, seed)
    settings = _settings(kernel_module, species, box, dt_fs, thermostat, temperature_k, tau_fs, friction_per_fs,
                         seed, skin_angstrom)
    thermo_path = out_dir / "thermo.csv"
    trajectory_path = out_dir / "trajectory.xyz"
    out_dir.mkdir(parents=True, exist_ok=True)

    if resumed is not None:
        meta, arrays = resumed
        if meta["settings"] != settings:
            changed = sorted(k for k in settings if meta["settings"].get(k) != settings[k])
            raise CheckpointError(f"{checkpoint_path}: written with different settings ({', '.join(changed)})")
        step = int(meta["step"])
        state = _restore(meta, arrays, masses, force_fn, box, energy.interaction_cutoff_angstrom(kernel_module),
                         skin_angstrom)
        trajectory.truncate(thermo_path, meta["thermo_bytes"])
        trajectory.truncate(trajectory_path, meta["trajectory_bytes"])
    else:
        velocities = _start_velocities(velocities, masses, temperature_k, seed)
        step = 0
        state = integrator.init(positions, velocities, masses)
        failure = _failure(state, species, box, 0, max_force_ev_per_angstrom, min_distance_angstrom)
        if failure:
            raise SimulationBlowUp(f"starting frame: {failure.split(': ', 1)[1]}")
        (out_dir / "last_good.xyz").unlink(missing_ok=True)
        with atomic_path(thermo_path) as tmp:
            tmp.write_text(",".join(THERMO_COLUMNS) + "\n" + _thermo_row(0, dt_fs, state, integrator, box))
        with atomic_path(trajectory_path) as tmp:
            tmp.write_text(_frame(0, dt_fs, state, species, box))

    # thermo rows wait in memory and go out together: before a trajectory frame or a checkpoint (which
    # records the log's length), once THERMO_FLUSH_S has passed, and at the end however the run stops.
    # One write per row, the file opened each time, cost a 96-atom run (learned pairwise water,
    # tabulated) 1.7 µs per step at a row every 10 steps, against 0.25 µs now: 6 % of its step.
    # Each row waits with its step: a checkpoint writes the rows up to its own step and drops any after
    # it (rows of a block whose state the run did not take, if Ctrl-C came in between), so a resumed log
    # neither repeats nor misses a row.
    pending_rows: list[tuple[int, str]] = []
    last_flush = [time.perf_counter()]

    def flush_thermo(up_to_step=None):
        lines = [line for row_step, line in pending_rows if up_to_step is None or row_step <= up_to_step]
        if lines:
            trajectory.append_text(thermo_path, "".join(lines))
        pending_rows.clear()
        last_flush[0] = time.perf_counter()

    def checkpoint(at_step, at_state):
        flush_thermo(at_step)
        write_checkpoint(checkpoint_path, at_step, at_state, settings, trajectory.file_size(thermo_path),
                         trajectory.file_size(trajectory_path), molecules)

    def next_output(at_step, most_steps):
        """The first step after ``at_step`` that writes a frame or a checkpoint, at most ``most_steps`` on, or
        the last step."""
        return min(steps, at_step + most_steps,
                   *((at_step // every + 1) * every for every in (trajectory_every, checkpoint_every)))

    def rows_written(at_step):
        """After the thermo rows up to ``at_step``: the log written out if it waited long enough, and progress."""
        now = time.perf_counter()
        if now - last_flush[0] >= THERMO_FLUSH_S:
            flush_thermo()
        if progress is not None:
            progress(at_step, steps, now - started)

    def write_outputs(at_step, at_state, thermo_done=False):
        if at_step % thermo_every == 0 and not thermo_done:
            pending_rows.append((at_step, _thermo_row(at_step, dt_fs, at_state, integrator, box)))
            rows_written(at_step)
        if at_step % trajectory_every == 0:
            flush_thermo()
            trajectory.append_text(trajectory_path, _frame(at_step, dt_fs, at_state, species, box))
            if molecules is not None:
                what = topology.dissociation(at_state.positions, box, types, molecules, bond_cutoffs,
                                             kernel_module.SPECIES)
                if what:  # the last checkpoint stays that of an intact frame
                    raise SimulationBlowUp(f"step {at_step}: {what}; a molecular model cannot follow a dissociation "
                                           f"(the frame is the last of {trajectory_path})")
        if at_step % checkpoint_every == 0 and at_step < steps:
            checkpoint(at_step, at_state)

    start_step = step
    builds = 0
    started = time.perf_counter()
    block_steps = thermo_every  # the first block's length: then as many steps as take BLOCK_S
    try:
        while step < steps:
            if integrator.run is not None:
                # the steps up to the next frame or checkpoint in one compiled loop, bit for bit those of
                # step(), which records the thermo rows between (see integrate.ThermoRecord); a step it stops
                # before (three-body rows to widen, a failed check) is taken by step() below
                target = next_output(step, block_steps)
                thermo = integrate.thermo_record(thermo_every, step, target - step)
                block_started = time.perf_counter()
                new_state, done, block_builds = integrator.run(state, target - step, max_force_ev_per_angstrom,
                                                               min_distance_angstrom, planned_steps=steps,
                                                               thermo=thermo)
                per_step_s = (time.perf_counter() - block_started) / max(done, 1)
                if done and per_step_s > 0:
                    block_steps = max(thermo_every, min(int(BLOCK_S / per_step_s), steps))
                first_row = step // thermo_every + 1
                pending_rows.extend(
                    ((first_row + r) * thermo_every,
                     _thermo_line((first_row + r) * thermo_every, dt_fs, thermo.rows[r], box, len(species)))
                    for r in range(integrate.thermo_rows_between(step, done, thermo_every)))
                state, step = new_state, step + done  # together, no call between: Ctrl-C finds both old or both new
                builds += block_builds
                if step >= first_row * thermo_every:
                    rows_written(step - step % thermo_every)
                if done and step == target:
                    write_outputs(step, state, thermo_done=True)
                    continue
            new_state = integrator.step(state)
            failure = _failure(new_state, species, box, step + 1, max_force_ev_per_angstrom,
                               min_distance_angstrom)
            if failure:
                with atomic_path(out_dir / "last_good.xyz") as tmp:
                    tmp.write_text(_frame(step, dt_fs, state, species, box))
                checkpoint(step, state)
                raise SimulationBlowUp(
                    f"{failure}; last good frame (step {step}) in {out_dir / 'last_good.xyz'}, "
                    f"checkpoint in {checkpoint_path}"
                )
            builds += new_state.neighbors is not state.neighbors
            state = new_state
            step += 1
            write_outputs(step, state)
    except KeyboardInterrupt:
        checkpoint(step, state)  # an interrupted run can be resumed
        raise
    except Exception:
        # the rows of the steps done, whatever else stopped the run (a blow-up has written them with its
        # checkpoint); a log that cannot be written must not hide why the run stopped
        try:
            flush_thermo(step)
        except OSError:
            pass
        raise
    wall_s = time.perf_counter() - started
    checkpoint(step, state)
    return RunResult(
        out_dir=out_dir,
        steps=step,
        state=state,
        thermo_path=thermo_path,
        trajectory_path=trajectory_path,
        checkpoint_path=checkpoint_path,
        wall_s=wall_s,
        ns_per_day=ns_per_day(step - start_step, dt_fs, wall_s),
        neighbor_builds=builds,
    )


def advance(integrator: integrate.Integrator, state, steps: int, *, block_steps: int = 100, planned_steps: int = 0,
            thermo_every: int = 10):
    """(state, list builds) after ``steps`` steps taken as :func:`simulate` takes them, without its output.

    Compiled blocks of ``block_steps`` steps (``Integrator.run``, told that the run is one of ``planned_steps``
    steps, which picks its force pass, and asked for the thermo rows of every ``thermo_every`` steps), and a
    plain ``step`` where a block stops early (a list to widen) or for every step with ``block_steps`` 0. No
    check stops it (the caller's frame is trusted), and nothing is written.
    """
    done = 0
    builds = 0
    while done < steps:
        if block_steps > 0 and integrator.run is not None:
            n_steps = min(block_steps, steps - done)
            state, n, b = integrator.run(state, n_steps, math.inf, 0.0, planned_steps=planned_steps,
                                         thermo=integrate.thermo_record(thermo_every, done, n_steps))
            done += n
            builds += b
            if n:
                continue
        new = integrator.step(state)
        builds += new.neighbors is not state.neighbors
        state = new
        done += 1
    return state, builds


def nve_from_frame(kernel_module: ModuleType, species, positions: np.ndarray, box, velocities=None, *,
                   dt_fs: float = 0.5, skin_angstrom: float = 1.0, temperature_k: float = 300.0,
                   seed: int = 0) -> tuple[integrate.Integrator, object]:
    """(NVE integrator, its state at the frame) of a kernel module, started as :func:`simulate` starts a run:
    the velocities less the centre-of-mass motion, or Maxwell–Boltzmann ones where none are given, and a
    molecular model's molecules found in the frame."""
    species = np.asarray(species).astype(str)
    box = box_lengths(box)
    positions = np.asarray(positions, dtype=float)
    types = atom_types(kernel_module, species)
    masses = np.array(kernel_module.MASSES_AMU, dtype=float)[types]
    molecules = (topology.assign_molecules(positions, box, types, _bond_cutoffs(kernel_module))
                 if is_molecular(kernel_module) else None)
    integrator = integrate.nve(energy.make_force_fn(kernel_module, types, box, skin_angstrom, molecules), dt_fs)
    return integrator, integrator.init(positions, _start_velocities(velocities, masses, temperature_k, seed), masses)


def time_steps(integrator: integrate.Integrator, state, steps: int, *, lead_steps: int = 25, **advance_options
               ) -> tuple[float, object, int]:
    """(seconds per step, state, list builds) of ``steps`` steps of :func:`advance` (``advance_options`` are its
    own), timed after ``lead_steps`` untimed ones: those compile what is not compiled yet and take the first list
    rebuilds, which a long run spreads over many steps."""
    state, _ = advance(integrator, state, lead_steps, **advance_options)
    started = time.perf_counter()
    state, builds = advance(integrator, state, steps, **advance_options)
    return (time.perf_counter() - started) / max(steps, 1), state, builds


def engine_seconds_per_step(kernel_module: ModuleType, species, positions: np.ndarray, box, velocities=None, *,
                            steps: int = 2000, dt_fs: float = 0.5, threads: int = 1, skin_angstrom: float = 1.0,
                            lead_steps: int = 25, planned_steps: int = LONG_RUN_STEPS,
                            temperature_k: float = 300.0) -> float:
    """Seconds per step of the engine alone: NVE steps from one frame (:func:`nve_from_frame`) as a run of
    ``planned_steps`` steps takes them between its outputs (:func:`advance`: compiled blocks; a long run's
    pass leaves out the energies, see ``simulate.integrate.uses_forces_only``), on ``threads`` Numba threads
    (the count is put back after), timed after ``lead_steps`` untimed ones (:func:`time_steps`). Machines are
    noisy: this is one timing, not a benchmark (see ``benchmarks/bench_simulate.py``)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        integrator, state = nve_from_frame(kernel_module, species, positions, box, velocities, dt_fs=dt_fs,
                                           skin_angstrom=skin_angstrom, temperature_k=temperature_k)
        seconds, _, _ = time_steps(integrator, state, steps, lead_steps=lead_steps, planned_steps=planned_steps)
        return seconds
    finally:
        numba.set_num_threads(previous)
