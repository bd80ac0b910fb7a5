"""``python -m autocompress``: the ``autocompress`` command (same options, messages and exit codes),
for environments where the script is not on PATH."""
from autocompress.cli import main

if __name__ == "__main__":
    main()
