"""Peer sandboxes for `benchmarks.sandbox`: shared programs, the Pyodide runner
(node), a python -c runner with a pipe protocol for external calls, and a peak
memory probe run in a fresh process per system."""
