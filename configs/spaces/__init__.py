"""Search spaces for tune.py: one get_space() per file (see lstm.py)."""
