"""Containers: an image's layers as pyunion lowers under an upper of the container's own.

``records`` keeps them in the store's database, ``rootfs`` mounts them, ``bundle`` writes the
OCI runtime bundle, ``runtime`` drives runc, ``changes`` reads the upper (diff), ``commit``
turns the upper into a new layer, ``monitor`` waits for a detached container's process.
"""
