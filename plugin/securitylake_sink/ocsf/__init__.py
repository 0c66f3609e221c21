"""ocsf stage."""
