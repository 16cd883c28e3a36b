"""What the sections of ``lazycache bench`` share, each concern in one module:

* ``contenders``: the mappings compared (dict, both lazycache cores, other caches), how
  each is built, settled and closed, and ``Unavailable`` for one that cannot run here;
* ``workload``: the keys of one size, and the mixed workload's Zipf-distributed operations;
* ``timing``: running with the garbage collector off, the generated timed loops, and the
  best and spread of repeated runs (``Runs``);
* ``progress``: the progress bar and the one-line status shown on a terminal;
* ``output``: numbers as text, plain-text tables that fit 120 columns, the environment.

The kit imports the library and the standard library only: never a section, never the CLI.
"""
