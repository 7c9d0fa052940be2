"""Containers: an image's layers as pyunion lowers under an upper of the container's own.

``session`` is one run of a container, in one place: under the container's lock it mounts the
rootfs, sets up the network, writes the bundle, runs the runtime and records what happens, and
undoes it all; ``start``, ``stop``, ``kill``, ``restart``, ``rm`` go through it. It uses:
``records`` (the store's database), ``rootfs`` (the mount), ``network``/``slirp``, ``bundle``
(the OCI runtime bundle), ``runtime`` (the runc/crun binary's command lines), ``logs``.
``lifecycle`` creates containers, ``monitor`` is a detached container's process (it runs a
session), ``changes`` reads the upper (diff), ``commit`` turns the upper into a new layer.
"""
