"""Talking to OCI registries: the client (``client``), where and as whom (``config``), and the
operations built on it: ``pull``, ``push``, ``search``."""
