"""Helpers shared by the benchmark scripts: environment facts, timing, JSON and a text table.

Benchmarks run on machines without the project installed (a GPU host with its own Python and no
TensorFlow), so this module imports only the standard library and numpy at top level; every
framework is imported lazily and reported as missing rather than failing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import importlib.metadata
import json
import os
import platform
import shlex
import socket
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

VERSIONED = (
    "numpy", "keras", "keras-rs", "jax", "jaxlib", "torch", "tensorflow", "fuxictr", "optree",
    "ml_dtypes", "pandas", "pyarrow", "pydantic",
)


def ensure_repo_on_path() -> None:
    """Make ``saviorrec`` and the stage packages importable without installing the project."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def library_versions(names: Sequence[str] = VERSIONED) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """Host and accelerator facts, from whichever frameworks are already imported."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "accelerators": [],
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["accelerators"].append({
                "framework": "torch", "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
            })
    jax = sys.modules.get("jax")
    if jax is not None:
        with contextlib.suppress(Exception):
            info["jax_backend"] = jax.default_backend()
            info["accelerators"] += [
                {"framework": "jax", "name": getattr(d, "device_kind", str(d))}
                for d in jax.devices() if d.platform != "cpu"
            ]
    names = [a["name"] for a in info["accelerators"]]
    info["device_name"] = names[0] if names else f"cpu ({platform.processor() or 'unknown'})"
    return info


def run_header(argv: Sequence[str]) -> dict[str, Any]:
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *argv]),
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cwd": os.getcwd(),
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("KERAS_", "XLA_", "JAX_", "CUDA_VISIBLE", "TF_CPP"))},
    }


def source_stamp(paths: Sequence[str], root: Path = REPO_ROOT) -> str:
    """SHA-256 over the ``.py`` and ``.yaml`` files under ``paths`` (files or folders relative to
    ``root``), names and contents: a cached benchmark world built by other code has another."""
    import hashlib

    digest = hashlib.sha256()
    for rel in paths:
        target = root / rel
        files = [target] if target.is_file() else sorted(
            f for f in target.rglob("*") if f.suffix in (".py", ".yaml") and f.is_file())
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write then rename, so a reader (or a benchmark killed by a timeout) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def update_json_atomic(path: Path, update: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Replace the JSON object in ``path`` by ``update(object)`` (``{}`` when there is no file),
    under a lock file in the temp folder, then an atomic rename: benchmarks that each write their
    own keys of one results file never drop each other's. Returns what was written."""
    import fcntl
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with (Path(tempfile.gettempdir()) / f"saviorrec-{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = update(json.loads(path.read_text()) if path.is_file() else {})
        write_json_atomic(path, data)
    return data


def update_key_atomic(path: Path, key: str, value: dict[str, Any]) -> None:
    """Set ``key`` of the JSON object in ``path``, the other keys as they are."""
    update_json_atomic(path, lambda data: {**data, key: value})


COUNT_SUFFIXES = {"k": 10**3, "M": 10**6}  # the labels of sizes: 200k, 10M


def parse_count(text: str) -> int:
    """``"200k"`` -> 200_000, ``"10M"`` -> 10_000_000, ``"5000"`` -> 5000 (suffixes are case
    sensitive: m is not M)."""
    number, suffix = (text[:-1], text[-1]) if text[-1:] in COUNT_SUFFIXES else (text, "")
    try:
        value = float(number) * COUNT_SUFFIXES.get(suffix, 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a count such as 5000, 200k or 10M") from None
    if value != int(value) or value < 1:
        raise ValueError(f"{text!r} is not a whole positive count")
    return int(value)


def count_label(n: int) -> str:
    """The inverse of parse_count for round counts: 10_000_000 -> "10M", 200_000 -> "200k"."""
    if n % 10**6 == 0:
        return f"{n // 10**6}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def machine_load() -> dict[str, Any]:
    """The machine's load when called: ``uptime``'s line and the 1, 5 and 15 minute averages."""
    import subprocess

    return {"uptime": subprocess.run(["uptime"], capture_output=True, text=True,
                                     check=False).stdout.strip(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


@dataclass
class Timing:
    """Wall-clock figures of one measured loop of ``steps`` batches of ``batch_size`` samples."""

    batch_size: int
    steps: int
    seconds: float
    first_call_s: float | None = None  # warm-up call(s) incl. tracing / compilation
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.batch_size * self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def ms_per_batch(self) -> float:
        return 1e3 * self.seconds / self.steps if self.steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch_size": self.batch_size,
            "steps": self.steps,
            "seconds": float(f"{self.seconds:.9g}"),  # significant digits: tiny loops keep precision
            "ms_per_batch": round(self.ms_per_batch, 4),
            "samples_per_s": round(self.samples_per_s, 1),
        }
        if self.first_call_s is not None:
            out["first_call_s"] = round(self.first_call_s, 4)
            # Compile estimate: the warm-up call minus one steady-state step.
            out["compile_s_est"] = round(max(self.first_call_s - self.ms_per_batch / 1e3, 0.0), 4)
        return {**out, **self.extra}


def time_loop(
    step: Callable[[int], Any],
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    sync: Callable[[Any], None],
) -> Timing:
    """Run ``step(i)`` ``warmup`` times (the first timed as the compile call), then ``steps`` times.

    ``sync`` blocks until the device has finished the work behind a step's return value, so
    asynchronous dispatch (JAX, CUDA) is not mistaken for speed.
    """
    start = time.perf_counter()
    out = step(0)
    sync(out)
    first = time.perf_counter() - start
    for i in range(1, warmup):
        out = step(i)
    sync(out)
    start = time.perf_counter()
    for i in range(steps):
        out = step(warmup + i)
    sync(out)
    return Timing(batch_size, steps, time.perf_counter() - start, first_call_s=first)


def cycle(items: Sequence[Any]) -> Iterator[Any]:
    while True:
        yield from items


class _StubMeta(type):
    """Class attributes of a stub are stubs too: ``stub.a.b`` never fails."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{cls.__name__}.{name}")


def _stub_class(name: str) -> type:
    """A class standing in for any name of a missing module: callable, subclassable, inert."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def getattr_(self: Any, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _stub_class(f"{name}.{attr}")

    return _StubMeta(name, (), {"__init__": init, "__getattr__": getattr_})


class _StubModule(types.ModuleType):
    """A module stand-in whose every attribute is a stub class."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _stub_class(f"{self.__name__}.{name}")


@contextlib.contextmanager
def stub_missing_modules(names: Sequence[str]) -> Iterator[list[str]]:
    """Within the block, a module of ``names`` that cannot be imported is a stub; yields their names.

    Use only in a benchmark process, around the import of a library that imports these at the
    top but never calls them on the code path being measured (FuxiCTR's metrics import polars
    and scikit-learn; its preprocessing imports ray). The stubs are removed from ``sys.modules``
    on exit, so later optional-dependency probes (``try: import pandas``) see the truth. The
    yielded list belongs in the results so a reader knows.
    """
    stubbed: list[str] = []
    added: list[str] = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if sys.modules.get(prefix) is None:
                    module = _StubModule(prefix)
                    module.__path__ = []  # lets `import a.b.c` walk through the stub
                    sys.modules[prefix] = module
                    added.append(prefix)
                    if i > 1:
                        setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], module)
            stubbed.append(name)
    try:
        yield stubbed
    finally:
        for prefix in added:
            sys.modules.pop(prefix, None)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table; floats with thousands separators."""

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return str(value)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def table_differences(left: Any, right: Any, keys: Sequence[str], *, rtol: float = 1e-6,
                      atol: float = 1e-6) -> dict[str, Any]:
    """Compare two pyarrow tables by VALUE, not by count: ``{"equal", "rows", "columns"}``.

    Both are sorted by ``keys`` (then by their other integer, string and timestamp columns, so
    that rows with equal keys line up), and every column of ``left`` is compared with the column
    of that name in ``right``: exactly for integers, strings, booleans and timestamps, within
    ``atol + rtol * |right|`` for floats; a list column row by row in length, then its flattened
    values by the same rule. ``columns`` holds only the columns that differ (or are missing),
    each with its count of differing rows, the largest absolute float difference and the keys
    of the first differing row. Engines' row orders differ, so nothing here depends on order.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def is_list(t: pa.DataType) -> bool:
        return pa.types.is_list(t) or pa.types.is_large_list(t)

    def exact_sortable(t: pa.DataType) -> bool:
        return (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_timestamp(t)
                or pa.types.is_boolean(t))

    result: dict[str, Any] = {"equal": False, "rows": [left.num_rows, right.num_rows],
                              "columns": {}}
    if set(left.column_names) != set(right.column_names):
        for name in sorted(set(left.column_names) ^ set(right.column_names)):
            result["columns"][name] = {"missing_in": "right" if name in left.column_names
                                       else "left"}
        return result
    if left.num_rows != right.num_rows:
        return result
    order = list(keys) + [n for n in left.column_names
                          if n not in keys and exact_sortable(left.schema.field(n).type)]
    left = left.take(pc.sort_indices(left, [(n, "ascending") for n in order]))
    right = right.take(pc.sort_indices(right, [(n, "ascending") for n in order]))

    def compare(a: pa.Array, b: pa.Array) -> tuple[np.ndarray, float | None]:
        """Per element: differs? and the largest absolute difference of floats."""
        if pa.types.is_floating(a.type):
            x = a.to_numpy(zero_copy_only=False).astype(np.float64)
            y = b.to_numpy(zero_copy_only=False).astype(np.float64)
            close = np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
            diff = np.abs(x - y)
            return ~close, float(np.nanmax(diff)) if diff.size else 0.0
        if a.type != b.type:
            b = b.cast(a.type)
        same = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
        both_null = np.asarray(pc.and_(a.is_null(), b.is_null()))
        return ~(same | both_null), None

    for name in left.column_names:
        a, b = left[name].combine_chunks(), right[name].combine_chunks()
        if is_list(a.type):
            lengths_a = pc.fill_null(pc.list_value_length(a), -1).to_numpy()
            lengths_b = pc.fill_null(pc.list_value_length(b), -1).to_numpy()
            bad = lengths_a != lengths_b
            max_diff = None
            if not bad.any():
                flat_bad, max_diff = compare(pc.list_flatten(a), pc.list_flatten(b))
                parents = pc.list_parent_indices(a).to_numpy()
                bad = np.zeros(len(a), bool)
                np.logical_or.at(bad, parents[flat_bad], True)
        else:
            bad, max_diff = compare(a, b)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            result["columns"][name] = {
                "rows_differing": int(bad.sum()), "max_abs_diff": max_diff,
                "first_row": {k: left[k][first].as_py() for k in keys},
            }
    result["equal"] = not result["columns"]
    return {**result, "columns": {k: {**v, "first_row": {kk: str(vv) for kk, vv in
                                                        v.get("first_row", {}).items()}}
                                  for k, v in result["columns"].items()}}
