"""Image archives: reading them (sources, formats), unpacking layers, generating layers, saving.

Unpacking (``unpack``) and generating (``generate``) are kept apart, as umoci does: one turns
hostile input into a layer directory, the other turns a trusted directory into a tar.
"""
