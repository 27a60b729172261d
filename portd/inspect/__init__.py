"""Looking at ports: who listens where (ports), who holds one (owner), service names
(services), and probing remote ones (probe, scan, wait)."""
