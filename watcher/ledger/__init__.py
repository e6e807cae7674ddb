"""Use cases over the store: settlement, invoices, renewals, attach, proof, queries, export.

Each module sequences reads and writes around the pure rules of ``watcher.domain``; a state
change and the outbox events it causes commit in one transaction.
"""
