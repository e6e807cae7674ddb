"""``python -m watcher`` is the ``proofwatch`` command."""

from watcher.cli.app import main

if __name__ == "__main__":
    main()
