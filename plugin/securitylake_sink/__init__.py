"""securitylake-sink: lands Fluent Bit, Fluentd and Vector records in Amazon Security Lake as OCSF Parquet."""

import os

__all__ = ["__version__"]

__version__ = "0.1.0"

# Arrow allocates through the system malloc (see memory.py), chosen here because Arrow reads this
# before its first allocation; a value already in the environment wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
