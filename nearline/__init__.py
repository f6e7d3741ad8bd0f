"""nearline: near-real-time personalization on Kafka, Faust, RocksDB, Starlette and PyTorch.

The distribution installs one namespace, layered from the bottom up (a lower layer never
imports a higher one; ``tests/unit/test_layers.py`` checks it):

- :mod:`nearline.foundation`: settings, codec, limits, Kafka and Faust adapters, metrics;
- :mod:`nearline.attribute_store` and :mod:`nearline.model`: item attributes, rankers;
- :mod:`nearline.tables`: the changelog-backed RocksDB online store;
- :mod:`nearline.agents`: the Faust agents that apply actions, outcomes and erasures;
- :mod:`nearline.app`: the worker, serving processes, HTTP API, console and CLI;
- :mod:`nearline.simulation`: the simulator, a tool that drives the product;
- :mod:`nearline.cli`: the ``nearline`` command, which puts the two command sets together.
"""

__version__ = "0.1.0"
