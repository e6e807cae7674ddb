"""Running it: the daemon and its locks, the per-process ``Watcher``, the status server."""
