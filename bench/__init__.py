"""The pyunion benchmark (``make bench`` / ``python -m bench``); see bench/run.py."""
