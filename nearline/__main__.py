"""``python -m nearline``: the ``nearline`` command."""

from nearline.cli import main

if __name__ == "__main__":
    main()
