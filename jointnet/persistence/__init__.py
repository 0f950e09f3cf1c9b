"""Persistence and views: snapshots (msgpack files), `diff`, read-only views and Graphviz render."""
