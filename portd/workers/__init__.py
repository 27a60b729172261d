"""Worker processes: one daemon serving its listeners from several processes.

* ``parent``: the process ``portd serve`` runs as with ``[daemon] workers`` above 1;
* ``pool``: starting, watching and asking worker processes;
* ``child``: a worker process (``python -m portd.workers.child``);
* ``channel``: the line between a worker and its parent;
* ``sockets``: which sockets each worker slot serves (``reuse_port``);
* ``ids``, ``tally``: connection ids and connection counts shared by the workers.
"""
