"""Jobs: self-describing directories run by detached worker processes (see runner.py)."""
