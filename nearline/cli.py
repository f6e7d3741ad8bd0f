"""The ``nearline`` command: the application's commands and the simulator's ``simulate``.

It sits above both so neither imports the other: the simulator drives the application.
"""

from nearline.app.cli import main
from nearline.simulation.cli import simulate

main.add_command(simulate)

__all__ = ["main"]

if __name__ == "__main__":
    main()
