"""``pyunion build``: images from a Containerfile or Dockerfile, one layer per step.

* ``dockerfile``: the file's syntax (directives, continuations, comments, instructions, forms);
* ``words``: docker's variable substitution and word splitting;
* ``ignore``: ``.containerignore`` / ``.dockerignore`` patterns;
* ``context``: what COPY/ADD copy (context, another stage or image, ADD's archives and URLs),
  their cache digest, and their layer written straight from the sources;
* ``cache``: the build cache (a step's image by its parent and its instruction);
* ``layers``: a RUN's upper moved into the store as its layer; blobs gzipped on every CPU;
* ``squash``: ``--squash``, the build's layers merged into one;
* ``builder``: the stages and steps: each RUN in a runc container over a pyunion mount of the
  layers so far, whose upper becomes the step's layer.
"""
