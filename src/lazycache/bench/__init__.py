"""The benchmark kit behind ``lazycache bench``: lazycache against dict and other caches.

Not part of the library: ``import lazycache`` never imports it. Its layers, each
importing only the ones below it:

* ``kit``: what every section shares (contenders, workloads, timing, progress, output);
* the sections, one module each, which import the kit and never each other:
  ``hotpaths`` (ops: ns/op of the dict operations and a mixed workload), ``threads``
  (reader threads, with and without a writer), ``latency`` (one set while the writer
  flushes), ``memory`` (bytes per entry), ``store`` (``--store URL``: flush throughput to a
  database) and ``redis`` (``--store redis://...``);
* ``run`` (the in-process sections of one run, as a whole) and ``plot`` (``--plot``);
* ``command``: the ``lazycache bench`` subcommand, which ``lazycache.cli`` registers.
"""
