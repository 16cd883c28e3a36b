"""A persistent write-behind dict on SQLite: page-visit counters that survive restarts.

    python examples/persistent_dict_sqlite.py [FILE.db]

Run it twice: the second run starts from the counts the first one left. Writes go to
memory at dict speed; a background thread saves them in batches (one transaction per
batch), and `close()` (the end of the `with` block) saves whatever is left.
"""

from __future__ import annotations

import sys

import lazycache


def main(path: str) -> None:
    with lazycache.open(f"sqlite:///{path}", table="visits") as visits:
        for page in ["/", "/about", "/", "/pricing", "/"]:
            # Read-modify-write, atomic; a key not in memory is read through from the file.
            visits.update_entry(page, lambda count: count + 1, default=0)
        for page in ["/", "/about", "/pricing"]:
            print(f"{page:10} {visits[page]}")
        print(f"pending writes before close: {visits.pending}")
    print(f"saved to {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lazycache-example.db")
