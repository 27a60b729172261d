"""Looking at ports: the kernel's socket tables (sockdiag, procnet) and who holds each
socket (holders, owner); listings (ports) and service names (services); connect probes
(probe, scan, wait); and ``portd doctor`` (doctor, reachability, kernel, firewall with
nftables and iptables, findings, findings_firewall, report)."""
