"""Randomized, model-checked fault injection for lazycache (in the spirit of Jepsen and FoundationDB's simulation).

- `model`: what the store must hold at the end: the last acknowledged write of every key,
  except keys reported through an exception, `on_write_error` or a log line naming them.
- `faults`: the nemesis: a TCP proxy that cuts, delays and resets connections; a slow store;
  values the serializer rejects, oversized values, constraint violations, hostile keys.
- `stores`: one scenario per store (SQLite, PostgreSQL, MariaDB, Redis; key-value or rows).
- `runner`: worker threads, a monitor thread, the nemesis, close/reopen and fork; the checker.
- `crash`: a writing process killed with SIGKILL, with and without the journal.
- `__main__`: `python -m chaos --minutes N` (what `make chaos` runs): fresh seeds until time
  is up, a replay command per failure, the totals at the end.
"""
