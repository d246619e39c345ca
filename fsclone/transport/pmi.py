"""Whether this MPI can use the process-management interface (PMI) srun started the task with,
asked before MPI_Init: an MPI that cannot aborts the whole job inside MPI_Init, with a page of
its own text and exit 1, the code for "items failed".

srun says what it offers (``SLURM_MPI_TYPE``: pmix, pmi2; unset for ``--mpi=none``, where only
Slurm's PMI-1 library can reach it). Open MPI 4 says what it has through the MPI tool interface,
which works before MPI_Init: each component of its ``pmix`` framework registers a version
variable, ``pmix_<name>_major_version``; ``ext*`` and ``pmix*`` speak PMIx, ``s1`` PMI-1, ``s2``
PMI-2. Other MPIs, other launchers and other Open MPI versions are not judged here; the size
check after MPI_Init (:class:`fsclone.transport.mpi.MpiJob`) still catches a launch where each
task came up alone.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Mapping
from pathlib import Path

from fsclone.errors import TransportError

#: the interfaces, as srun's --mpi names them and as people do
NAMES = {"pmix": "PMIx", "pmi2": "PMI-2", "none": "PMI-1"}
_COMPONENT = re.compile(rb"pmix_(\w+?)_major_version")


def offered(env: Mapping[str, str]) -> str | None:
    """What srun started this task with (a key of NAMES), or None: not a task of an srun step
    (mpirun's ranks have no SLURM_STEP_NUM_TASKS, also inside an allocation), or an interface
    not judged here."""
    if "SLURM_STEP_NUM_TASKS" not in env:
        return None
    kind = env.get("SLURM_MPI_TYPE", "none").split("_")[0]  # pmix_v4 is PMIx too
    return kind if kind in NAMES else None


def interface(component: str) -> str | None:
    """The interface an Open MPI pmix component speaks (a key of NAMES), if any."""
    if component.startswith(("ext", "pmix")):
        return "pmix"
    return {"s1": "none", "s2": "pmi2"}.get(component)


def open_mpi_interfaces(libmpi: ctypes.CDLL) -> set[str]:
    """The interfaces Open MPI 4 (loaded, not initialized) can use, from its MPI_T variables."""
    provided = ctypes.c_int()
    if libmpi.MPI_T_init_thread(0, ctypes.byref(provided)) != 0:
        return set(NAMES)  # cannot ask: do not judge
    try:
        count = ctypes.c_int()
        libmpi.MPI_T_cvar_get_num(ctypes.byref(count))
        found: set[str] = set()
        for index in range(count.value):
            name, size = ctypes.create_string_buffer(256), ctypes.c_int(256)
            ints = [ctypes.c_int() for _ in range(4)]  # desc_len 0: no description wanted
            handles = [ctypes.c_void_p() for _ in range(2)]  # datatype, enumtype
            libmpi.MPI_T_cvar_get_info(index, name, ctypes.byref(size), ctypes.byref(ints[0]),
                                       ctypes.byref(handles[0]), ctypes.byref(handles[1]), None,
                                       ctypes.byref(ints[1]), ctypes.byref(ints[2]),
                                       ctypes.byref(ints[3]))
            match = _COMPONENT.fullmatch(name.value)
            kind = interface(match[1].decode()) if match else None
            if kind:
                found.add(kind)
        return found
    finally:
        libmpi.MPI_T_finalize()


def loaded_libmpi() -> ctypes.CDLL | None:
    """The MPI library this process has loaded (mpi4py's), found in its memory map."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if Path(path).name.startswith("libmpi.so"):
            return ctypes.CDLL(path)
    return None


def check(env: Mapping[str, str], library_version: str) -> None:
    """Raise TransportError with what to do if srun offers this task an interface that this
    MPI (``MPI.Get_library_version()``, loaded but not initialized) has no client for."""
    kind = offered(env)
    if kind is None or not library_version.startswith("Open MPI v4."):
        return
    libmpi = loaded_libmpi()
    has = open_mpi_interfaces(libmpi) if libmpi is not None else set(NAMES)
    if kind in has:
        return
    has_names = ", ".join(NAMES[k] for k in NAMES if k in has) or "none srun offers"
    launches = [f"srun --mpi={k}" for k in NAMES if k in has] + ["mpirun inside the allocation"]
    raise TransportError(f"srun --mpi={kind} started this task, but this Open MPI has no "
                         f"{NAMES[kind]} client (it has {has_names}): launch with "
                         f"{', or '.join(launches)}")
