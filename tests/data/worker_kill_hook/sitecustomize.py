"""Test hook, on PYTHONPATH only in tests/data/test_hostile_export.py: an ingestion worker process that is given a
file named ``IMG_WORKER_KILL`` kills itself with SIGKILL before reading it, as the out-of-memory killer would.

It patches ``mlvicx_monai.data.ingest.read_source`` when the interpreter starts; the kill happens only in a child
process (``multiprocessing.parent_process()``), never in the job's main process.
"""

import multiprocessing
import os
import signal

try:
    import mlvicx_monai.data.ingest as _ingest
except Exception:  # not this project's interpreter
    _ingest = None

if _ingest is not None:
    _read_source = _ingest.read_source

    def read_source(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)) == "IMG_WORKER_KILL" and multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return _read_source(path, *args, **kwargs)

    _ingest.read_source = read_source
