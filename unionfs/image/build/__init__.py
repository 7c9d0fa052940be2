"""``pyunion build``: images from a Containerfile or Dockerfile, one layer per step.

* ``dockerfile``: the file's syntax (directives, continuations, comments, instructions, forms);
* ``words``: docker's variable substitution and word splitting;
* ``ignore``: ``.containerignore`` / ``.dockerignore`` patterns;
* ``context``: the build context's files as COPY/ADD see them, and their cache digest;
* ``cache``: the build cache (a step's image by its parent and its instruction);
* ``builder``: the stages and steps: each RUN in a runc container over a pyunion mount of the
  layers so far, each COPY/ADD into such a mount; the step's upper becomes its layer.
"""
