"""securitylake-sink: lands Fluent Bit, Fluentd and Vector records in Amazon Security Lake as OCSF Parquet."""

__all__ = ["__version__"]

__version__ = "0.1.0"
