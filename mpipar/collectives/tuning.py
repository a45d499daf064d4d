"""Measured decision tables for ``algorithm="auto"``: size ranges -> algorithm, per op.

MPI libraries choose their collective algorithms from thresholds measured on
the machine (Open MPI's ``coll_tuned`` fixed decision rules and its dynamic
rules file, MPICH's CVARs and JSON tuning files). mpipar does the same:
``python -m mpipar.bench tune`` times every hand-written algorithm of each op
over message sizes at one world size p and writes a table

    {"format": "mpipar-tuning", "version": 1, "world_size": p,
     "host": ..., "mpi_library": ..., "dtype": "float32",
     "rules": {"allreduce": [{"below": 4096, "algorithm": "recursive_doubling"},
                             {"below": null, "algorithm": "ring"}], ...},
     "cost_model": {...} (optional: the calibrated constants)}

Rule i applies to payloads n < below (and >= the previous rule's below); the
last rule has below null. ``auto`` on a communicator of p ranks uses, in order:

1. the file named by the environment variable ``MPIPAR_TUNING`` (``off`` or an
   empty value: no table at all);
2. else the per-user cache ``$XDG_CACHE_HOME/mpipar/tuning/<host>-<mpi>-p<p>.json``
   (``~/.cache`` without XDG_CACHE_HOME), which ``bench tune`` writes by default;
3. else -- or for an op the table leaves out, or a communicator of another size
   than the table's -- the cost model (the table's ``cost_model`` if it has one,
   otherwise the default constants).

Every rank must choose alike, so rank 0 of the communicator reads and checks the
file and broadcasts the table (or the problem) once per communicator; it is kept
as an MPI attribute of the communicator (``MPI_Comm_set_attr``), freed with it.
A file named in ``MPIPAR_TUNING`` that is missing or not a valid table is an
error, the same ``ValueError`` on every rank: you asked for it. A cache file that
is not valid is ignored with one warning from rank 0: a stale cache must not
stop a job.
"""
import json
import os
import re
import socket
import warnings

from mpi4py import MPI

FORMAT, VERSION = "mpipar-tuning", 1
ENV = "MPIPAR_TUNING"

_KEYVAL = []  # the attribute key, created on first use
# the communicator object asked about last and its answer, one tuple (rebinding it is atomic,
# so threads on two communicators cannot pair one's object with the other's answer): the
# attribute look-up costs 0.4 us, a third of a small message's Python
_LAST = (None, None)


def library_slug(version=None):
    """'MPICH Version: 4.2.1' -> 'mpich-4.2.1'; 'Open MPI v4.1.6, ...' -> 'open-mpi-v4.1.6'."""
    first = (version or MPI.Get_library_version()).splitlines()[0].split(",")[0]
    first = re.sub(r"\bversion:?", "", first, flags=re.I)
    return re.sub(r"[^a-z0-9.]+", "-", first.lower()).strip("-")[:40] or "mpi"


def cache_path(p, host=None, library=None):
    """Where ``bench tune`` writes, and ``auto`` looks for, the table of p ranks on this host."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = f"{host or socket.gethostname()}-{library or library_slug()}-p{p}.json"
    return os.path.join(root, "mpipar", "tuning", name)


def problem(table):
    """What is wrong with a decision table (parsed JSON), or None."""
    from . import ALGORITHMS  # not at the top: this module is imported by the package
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        return f"not an mpipar tuning table (no \"format\": \"{FORMAT}\")"
    if table.get("version") != VERSION:
        return f"version {table.get('version')!r} is not {VERSION}"
    p = table.get("world_size")
    if not (isinstance(p, int) and p >= 1):
        return f"world_size {p!r} is not a positive integer"
    rules = table.get("rules")
    if not isinstance(rules, dict) or not rules:
        return "no \"rules\" (op -> list of {below, algorithm})"
    for op, ranges in rules.items():
        if op not in ALGORITHMS:
            return f"unknown op {op!r}; choose from {', '.join(ALGORITHMS)}"
        if not isinstance(ranges, list) or not ranges:
            return f"{op}: the rules must be a non-empty list"
        last = 0
        for i, rule in enumerate(ranges):
            if not isinstance(rule, dict) or rule.get("algorithm") not in ALGORITHMS[op]:
                name = rule.get("algorithm") if isinstance(rule, dict) else rule
                return f"{op}: rule {i}: algorithm {name!r} is not one of {', '.join(ALGORITHMS[op])}"
            below, final = rule.get("below"), i == len(ranges) - 1
            if final and below is not None:
                return f"{op}: the last rule must have \"below\": null (it covers every larger size)"
            if not final and not (isinstance(below, int) and below > last):
                return f"{op}: rule {i}: \"below\" must be an integer above {last}, not {below!r}"
            last = below
    return None


def read(path):
    """(table, problem) for a JSON file: the parsed table if valid, else None and why."""
    try:
        with open(path) as f:
            table = json.load(f)
    except OSError as e:
        return None, f"cannot read it: {e.strerror or e}"
    except ValueError as e:
        return None, f"not JSON: {e}"
    why = problem(table)
    return (None, why) if why else (table, None)


def write(path, table):
    """Check and write a table (making the cache's folders); the path."""
    why = problem(table)
    if why:
        raise ValueError(f"internal error: a bad tuning table: {why}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    return path


def _find(p):
    """On rank 0: (table or None, error or None, warning or None) for p ranks."""
    named = os.environ.get(ENV)
    if named is not None:
        if named.strip().lower() in ("", "off", "none"):
            return None, None, None
        table, why = read(named)
        return table, (f"{ENV}={named}: {why}" if why else None), None
    path = cache_path(p)
    if not os.path.exists(path):
        return None, None, None
    table, why = read(path)
    return table, None, (f"ignoring the tuning cache {path}: {why}; delete it or run "
                         f"'python -m mpipar.bench tune' again" if why else None)


def table_for(comm):
    """{"table": the decision table ``auto`` uses on ``comm`` (None: the cost model
    decides), "model": its CostModel or None, "choices": auto's choices so far}.

    Collective on the first call per communicator (rank 0 reads, every rank gets
    its answer); later calls are a dictionary look-up."""
    global _LAST
    last = _LAST
    if last[0] is comm:
        return last[1]
    if not _KEYVAL:
        _KEYVAL.append(MPI.Comm.Create_keyval())
    found = comm.Get_attr(_KEYVAL[0])
    if found is None:
        p = comm.Get_size()
        answer = _find(p) if comm.Get_rank() == 0 else None
        table, error, warning = comm.bcast(answer, root=0) if p > 1 else answer
        if warning and comm.Get_rank() == 0:
            warnings.warn(warning, RuntimeWarning, stacklevel=3)
        if error:
            raise ValueError(error)
        found = {"table": table if table and table["world_size"] == p else None, "model": None,
                 "choices": {}}  # auto's remembered choices: (op, bytes) -> algorithm
        if found["table"] and isinstance(found["table"].get("cost_model"), dict):
            from ..measure.cost_model import CostModel
            found["model"] = CostModel.from_dict(found["table"]["cost_model"])
        comm.Set_attr(_KEYVAL[0], found)
    _LAST = (comm, found)
    return found


_MODELS = {}  # (MPIPAR_TUNING, XDG_CACHE_HOME, p) -> the table's CostModel or None


def model_for(p):
    """The calibrated cost model saved in the decision table for p ranks (the file
    ``MPIPAR_TUNING`` names, else the cache), or None: what the ledger predicts with.

    Read by this process alone, once per place and p, and any problem only means no
    model: a prediction need not agree across ranks, unlike the choice of algorithm."""
    key = (os.environ.get(ENV), os.environ.get("XDG_CACHE_HOME"), p)
    if key not in _MODELS:
        try:
            table, error, _ = _find(p)
        except (OSError, ValueError):
            table, error = None, "unreadable"
        saved = table.get("cost_model") if table and not error and table["world_size"] == p else None
        model = None
        if isinstance(saved, dict):
            from ..measure.cost_model import CostModel
            try:
                model = CostModel.from_dict(saved)
            except TypeError:  # constants of another version
                model = None
        _MODELS[key] = model
    return _MODELS[key]


def decision(comm, op, nbytes):
    """What ``auto`` runs for an n-byte ``op`` on ``comm`` by its table -- the rule's
    algorithm, or the table's own cost model's best -- or None (no table for it)."""
    found = table_for(comm)
    if found["table"] is None:
        return None
    return choose(found["table"], op, nbytes) or (
        found["model"].best(op, comm.Get_size(), nbytes) if found["model"] else None)


def forget(comm):
    """Drop the table kept on ``comm``: the next ``auto`` call looks again (tests, bench tune)."""
    global _LAST
    _LAST = (None, None)
    if _KEYVAL and comm.Get_attr(_KEYVAL[0]) is not None:
        comm.Delete_attr(_KEYVAL[0])


def choose(table, op, nbytes):
    """The algorithm ``table``'s rules give for an n-byte ``op``, or None (op not in it)."""
    for rule in table["rules"].get(op, ()):
        if rule["below"] is None or nbytes < rule["below"]:
            return rule["algorithm"]
    return None


def rules_text(table):
    """The table as decision rules, in the style of Open MPI's coll_tuned_decision_fixed.c."""
    from ..measure.units import format_bytes  # not at the top: measure imports collectives
    lines = [f"/* mpipar decision rules: {table['world_size']} rank(s), {table.get('host', '?')}, "
             f"{table.get('mpi_library', '?')}, {table.get('dtype', '?')} */"]
    for op, ranges in table["rules"].items():
        lines.append(f"{op}:  /* communicator_size == {table['world_size']} */")
        for i, rule in enumerate(ranges):
            if rule["below"] is None:
                cond = "else" if i else "always"
            else:
                cond = (f"{'if' if i == 0 else 'else if'} (total_dsize < {rule['below']})"
                        f"  /* {format_bytes(rule['below'])} */")
            lines.append(f"    {cond:<44} algorithm = {rule['algorithm']};")
    return "\n".join(lines)
