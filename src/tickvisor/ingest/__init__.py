"""Tick import: histdata, TrueFX, Dukascopy and plain csv tick files into ``ticks``.

``tickvisor import FILE --format FORMAT`` is a thin shell around
:func:`import_file`. The modules behind it each do one job:

* :mod:`~tickvisor.ingest.reader` cuts the bytes into numbered lines and fields;
* :mod:`~tickvisor.ingest.formats` describes the formats and parses a batch;
* :mod:`~tickvisor.ingest.validate` holds the rules and the quarantine records;
* :mod:`~tickvisor.ingest.writer` writes a batch, per database, in one transaction;
* :mod:`~tickvisor.ingest.importer` runs an import and sums it up.
"""

from tickvisor.ingest.formats import FORMATS, ImportArgumentError, TickFileError
from tickvisor.ingest.importer import (
    DEFAULT_BATCH_SIZE,
    ImportSummary,
    TickFile,
    import_file,
    import_ticks,
    open_tick_file,
)
from tickvisor.ingest.validate import REASONS, TS_MAX_MS, TS_MIN_MS

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FORMATS",
    "REASONS",
    "TS_MAX_MS",
    "TS_MIN_MS",
    "ImportArgumentError",
    "ImportSummary",
    "TickFile",
    "TickFileError",
    "import_file",
    "import_ticks",
    "open_tick_file",
]
