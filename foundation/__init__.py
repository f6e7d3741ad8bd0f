"""The ground floor: what every other layer builds on, importing nothing of nearline's own.

Settings, the wire codec and limits, the Kafka and Faust adapters (and the broker
workarounds they need), metrics, the event-loop monitor, and the link a worker shares with
its serving processes. The layers above, from the bottom: the attribute store and the model;
the tables; the agents; the application (worker, serving, web, console, CLI); the simulator.
"""
