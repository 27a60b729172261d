"""Handlers: the contract (base.py), the registry (registry.py), one module per built-in."""
