"""Adapters for local mode: one process, blobs in files, state in SQLite, builds on threads."""
