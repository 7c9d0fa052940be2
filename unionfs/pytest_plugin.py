"""pytest plugin: the ``union_tree`` fixture (throw-away copy-on-write trees per test)."""
