"""The Chrome-trace file of one rank (the "JSON array" format of chrome://tracing and Perfetto).

Layout of the file, one event per line, each line written with one ``os.write`` (so it is on disk
for a reader at once, and lines from different threads never interleave)::

    [
    {"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "allreduce.x"}},
    {"name": "process_sort_index", "ph": "M", "pid": 1, "tid": 1, "args": {"sort_index": 1}},
    {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "MainThread"}},
    {"ph": "B", "name": "ENQUEUE_ALLREDUCE", "ts": 5066771, "pid": 1, "tid": 1},
    {"ph": "E", "ts": 5066830, "pid": 1, "tid": 1},
    ]

* ``pid`` numbers tensor names (rows in the viewer) from 1 in order of first use, ``tid`` numbers OS
  threads from 1 in order of first use; ``ts`` is ``time.monotonic_ns() // 1000``: microseconds of the
  system's monotonic clock, so the files of ranks on one machine share one time axis.
* While the program runs the last line ends with ``,`` (Chrome and Perfetto accept that; so does
  :func:`bluefog.timeline.load`).  :meth:`TimelineWriter.close` replaces that comma with the closing
  ``]``, so a finished file is plain JSON.
"""

import json
import os
import threading
import time

_CLOSED_TAIL = b"\n]\n"


class TimelineWriter:
    """Writes begin / end events of named spans to ``path`` (truncated when opened).

    Every method may be called from any thread.  After :meth:`close`, calls do nothing.

    Example::

        tl = TimelineWriter("/tmp/tl0.json")
        token = tl.begin("x", "COMPUTE")
        tl.end("x", token)
        tl.close()
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._lock = threading.Lock()
        self._pids = {}          # tensor name -> pid
        self._tids = {}          # thread ident -> tid
        self._labelled = set()   # (pid, tid) pairs whose thread_name is written
        self._quoted = {}        # activity -> its JSON string
        self._enqueued = {}      # engine request -> tid of its open ENQUEUE span
        self._events = 0
        self._fd = None
        self._open(truncate=True)

    # ------------------------------------------------------------------ file
    def _open(self, truncate: bool):
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        fd = os.open(self.path, flags, 0o644)
        if truncate:
            os.write(fd, b"[\n")
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self):
        """Write the closing ``]`` (turning the file into valid JSON) and close it."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                if self._events:
                    os.ftruncate(fd, os.fstat(fd).st_size - 2)   # drop the last ",\n"
                os.write(fd, _CLOSED_TAIL if self._events else b"]\n")
            finally:
                os.close(fd)

    def reopen(self) -> bool:
        """Continue a file this writer closed (same pids and tids); False if the file changed."""
        with self._lock:
            if self._fd is not None:
                return True
            tail = _CLOSED_TAIL if self._events else b"]\n"
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            except OSError:
                return False
            size = os.fstat(fd).st_size
            if size < len(tail) or os.pread(fd, len(tail), size - len(tail)) != tail:
                os.close(fd)
                return False
            os.ftruncate(fd, size - len(tail))
            os.write(fd, b",\n" if self._events else b"\n")
            self._fd = fd
            return True

    # ------------------------------------------------------------------ events
    def _write(self, text: str):
        os.write(self._fd, text.encode())
        self._events += 1

    def _tid(self) -> int:
        ident = threading.get_ident()
        tid = self._tids.get(ident)
        if tid is None:
            tid = self._tids[ident] = len(self._tids) + 1
        return tid

    def _pid(self, name: str, tid: int) -> int:
        pid = self._pids.get(name)
        if pid is None:
            pid = self._pids[name] = len(self._pids) + 1
            self._write('{"name": "process_name", "ph": "M", "pid": %d, "tid": %d, "args": '
                        '{"name": %s}},\n' % (pid, tid, json.dumps(str(name))))
            self._write('{"name": "process_sort_index", "ph": "M", "pid": %d, "tid": %d, "args": '
                        '{"sort_index": %d}},\n' % (pid, tid, pid))
        if (pid, tid) not in self._labelled:
            self._labelled.add((pid, tid))
            self._write('{"name": "thread_name", "ph": "M", "pid": %d, "tid": %d, "args": '
                        '{"name": %s}},\n' % (pid, tid, json.dumps(threading.current_thread().name)))
        return pid

    def begin(self, name: str, activity: str):
        """Open span ``activity`` on row ``name`` in this thread; returns a token for :meth:`end`."""
        ts = time.monotonic_ns() // 1000
        with self._lock:
            if self._fd is None:
                return None
            tid = self._tid()
            pid = self._pid(name, tid)
            quoted = self._quoted.get(activity)
            if quoted is None:
                quoted = self._quoted[activity] = json.dumps(str(activity))
            self._write('{"ph": "B", "name": %s, "ts": %d, "pid": %d, "tid": %d},\n'
                        % (quoted, ts, pid, tid))
        return tid

    def end(self, name: str, token=None):
        """Close the innermost open span of row ``name`` on the thread ``token`` names (default:
        the calling thread)."""
        ts = time.monotonic_ns() // 1000
        with self._lock:
            if self._fd is None:
                return
            tid = self._tid() if token is None else token
            pid = self._pid(name, tid)
            self._write('{"ph": "E", "ts": %d, "pid": %d, "tid": %d},\n' % (ts, pid, tid))

    # ------------------------------------------------------------------ engine hooks
    def enqueued(self, request):
        """``ENQUEUE_<activity>`` opens on the submitting thread; :meth:`finished` closes it."""
        token = self.begin(request.name, "ENQUEUE_" + request.activity)
        if token is not None:
            self._enqueued[request] = token

    def finished(self, request):
        token = self._enqueued.pop(request, None)
        if token is not None:
            self.end(request.name, token)

    def processing(self, requests, kernel):
        """Wrap a kernel in the ``MPI_<activity>`` span of each request it serves (one, or a list of
        fused ones): opened now on this thread, closed when the kernel returns, fails or is dropped
        (on whichever thread that happens)."""
        if not isinstance(requests, (list, tuple)):
            requests = (requests,)
        opened = [(req.name, self.begin(req.name, "MPI_" + req.activity)) for req in requests]
        return self._traced(opened, kernel)

    def _traced(self, opened, kernel):
        try:
            return (yield from kernel)
        finally:
            for name, token in opened:
                self.end(name, token)
