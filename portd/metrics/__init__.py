"""Prometheus metrics: what portd counts, in the text format scrapers read.

* ``histogram``: the connection-duration histogram a listener keeps (cheap to observe);
* ``exposition``: a status snapshot (one process's, or the workers' summed) rendered as
  the Prometheus text format or OpenMetrics;
* ``server``: the ``/metrics`` endpoint, a tiny HTTP/1.1 server on its own socket;
* ``process``: CPU, memory and descriptors of a process, from /proc.

portd renders the format itself instead of using prometheus_client: every number
already lives in the listeners' counters (``portd status`` reads the same ones), the
client's import costs ~100 ms on a small machine, and its multi-process mode (one
mmap file per process and metric, process metrics dropped, a directory to clean up
after each dead worker) fits a daemon whose workers already report to their parent.
Nothing here is imported unless ``[daemon] metrics`` is set, except ``histogram``.
"""
