"""What one method did on one workload, as a typed record, and how records are stored.

A :class:`BenchRecord` is what :mod:`quantbook.sweep` returns for every method it runs and what
``make bench`` saves. Files are written atomically (a temporary file, then a rename), so a
failed write never leaves a truncated JSON behind, and NaN is stored as ``null``, never as the
bare ``NaN`` that strict JSON readers refuse.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FLOAT_FAMILY = "float32"


@dataclass(frozen=True)
class BenchRecord:
    """Size, quality and (optionally) speed of one model quantized by one method.

    Attributes:
        model: the workload's name (``"gpt"``, ``"minilm"``).
        method: the method's label (``"float32"`` for the reference).
        family: the method's family, stored from its config (``"dynamic (eager)"``).
        metric: the quality metric's name (``"perplexity"``, ``"lee_pearson"``).
        value: the metric of this model; ``float_value`` that of the float32 model.
        size_bytes: the serialized state dict; ``size_ratio`` relative to float32.
        quantized_bytes_ratio: serialized bytes of the converted modules over their float32
            bytes (``None`` for float32).
        converted: how many modules the method converted.
        secondary: other quality figures, e.g. ``{"cosine_mean": 0.99}``.
        latency_ms: median latency of the workload's timed call (``None`` when not timed);
            ``latency_p10_ms`` / ``latency_p90_ms`` its spread.
        float_latency_ms: the float32 model's median, timed in the same alternating rounds.
        speedup: ``float_latency_ms / latency_ms``.
        threads: torch threads during timing; ``cpu`` the processor.
        compile_s: wall seconds of a compiled model's first call, which compiles it (``None``
            for a model run eagerly).
        compiled_float_latency_ms: the float32 model compiled, timed in the same rounds
            (``None`` unless the sweep compiles).
        speedup_vs_compiled: ``compiled_float_latency_ms / latency_ms``: the speed-up that
            compiling the float model alone does not give.
        rounds: the timed rounds behind the medians (fewer than asked where a time bound cut
            them; ``None`` when not timed, or in runs that did not record it).
    """

    model: str
    method: str
    family: str
    metric: str
    value: float
    float_value: float
    size_bytes: int
    size_ratio: float
    quantized_bytes_ratio: float | None = None
    converted: int = 0
    secondary: Mapping[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    float_latency_ms: float | None = None
    speedup: float | None = None
    threads: int | None = None
    cpu: str | None = None
    compile_s: float | None = None
    compiled_float_latency_ms: float | None = None
    speedup_vs_compiled: float | None = None
    rounds: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(model, method)``: unique within one run."""
        return self.model, self.method

    def quality(self, name: str) -> float:
        """The metric (under its name) or a secondary figure, e.g. ``quality("cosine_mean")``."""
        if name == self.metric:
            return self.value
        if name not in self.secondary:
            raise KeyError(f"{name!r} is not recorded for {self.key}: choose from "
                           f"{[self.metric, *self.secondary]}")
        return self.secondary[name]


def _clean(value: object) -> object:
    """JSON-ready: NaN and inf become ``None``; mappings and sequences are cleaned inside."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(payload: object, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``payload`` as strict JSON to ``path`` through a temporary file and a rename.

    A write that fails (disk full, a value JSON cannot hold) leaves the old file intact. The
    file gets the permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes 0600).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(payload), indent=1, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_records(records: Iterable[BenchRecord], path: str | pathlib.Path, *,
                 machine: dict, repeats: int | None = None,
                 seconds: float | None = None, **settings: object) -> pathlib.Path:
    """Write records with the machine that measured them; return the path.

    ``settings``: more of the run's conditions, stored beside ``repeats`` (``make bench``:
    ``max_timing_s``, ``timed_articles`` and ``compile_cache``, inductor's compiled-graph
    cache hits and misses, which say whether its compile seconds are a warm cache's).
    """
    clash = sorted(set(settings) & {"created", "machine", "repeats", "seconds", "records"})
    if clash:
        raise ValueError(f"settings {clash} would overwrite the run's own fields: rename them")
    records = list(records)
    bad = [type(r).__name__ for r in records if not isinstance(r, BenchRecord)]
    if bad:
        raise TypeError(f"records holds {bad[0]} items: expected BenchRecord")
    payload = {"created": datetime.date.today().isoformat(), "machine": machine,
               "repeats": repeats, "seconds": seconds,
               **settings,
               "records": [dataclasses.asdict(r) for r in records]}
    return write_json_atomic(payload, path)


FIELDS = tuple(f.name for f in dataclasses.fields(BenchRecord))
REQUIRED = tuple(f.name for f in dataclasses.fields(BenchRecord)
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _record(data: dict, path: pathlib.Path) -> BenchRecord:
    missing = [name for name in REQUIRED if name not in data]
    unknown = [name for name in data if name not in FIELDS]
    if missing or unknown:
        raise ValueError(f"path={str(path)!r} holds records of another format (missing "
                         f"{missing}, unknown {unknown}): re-run `make bench`")
    data = dict(data)
    for name in ("value", "float_value"):
        if data[name] is None:
            data[name] = math.nan  # stored as null: the metric was NaN
    data["secondary"] = {k: math.nan if v is None else v
                         for k, v in (data.get("secondary") or {}).items()}
    return BenchRecord(**data)


def load_records(path: str | pathlib.Path) -> tuple[dict, list[BenchRecord]]:
    """Read what :func:`save_records` wrote: ``(meta, records)``, meta without the records."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r} holds no bench results: run `make bench` "
                                "to measure them")
    payload = json.loads(path.read_text())
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise ValueError(f"path={str(path)!r} holds no bench records (no 'records' list): "
                         "run `make bench` to write a run")
    return ({k: v for k, v in payload.items() if k != "records"},
            [_record(r, path) for r in payload["records"]])
