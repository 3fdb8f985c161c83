#!/usr/bin/env python3
"""How many recordUsage writes SQLite itself can make durable, with no Rust in the way.

Copies a database a `creditd` + `credits-loadgen` run left behind (so the schema, the
indexes and their sizes are the service's own), then repeats what one group commit does
for each of K wallets picked at random: the fenced UPDATE of the wallet row with its
snapshot, one ledger row, one usage row, all in one `BEGIN IMMEDIATE … COMMIT` in WAL
mode. Prints the time per transaction and the writes per second it implies.

    python3 docs/bench/sqlite_ceiling.py /tmp/bench/bench.db [-k 32] [-n 300]
        [--synchronous FULL] [--autocheckpoint 1000] [--random-ids] [--drop INDEX ...]

`--drop` removes indexes from the copy first, to price each one; `--random-ids` gives usage
rows random ids (as before `new_ordered_id`) instead of rising ones.
"""
import argparse
import os
import random
import shutil
import sqlite3
import tempfile
import time


def run(args):
    work = tempfile.mkdtemp()
    path = os.path.join(work, "copy.db")
    shutil.copy(args.database, path)
    db = sqlite3.connect(path, isolation_level=None)
    for index in args.drop:
        db.execute(f"DROP INDEX {index}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={args.synchronous}")
    db.execute(f"PRAGMA wal_autocheckpoint={args.autocheckpoint}")
    wallets = [r[0] for r in db.execute("SELECT id FROM wallets")]
    ledger_cols = [r[1] for r in db.execute("PRAGMA table_info(ledger)")]
    usage_cols = [r[1] for r in db.execute("PRAGMA table_info(usage_events)")]
    ledger_row = db.execute("SELECT * FROM ledger ORDER BY rowid DESC LIMIT 1").fetchone()
    usage_row = db.execute("SELECT * FROM usage_events LIMIT 1").fetchone()
    snapshot = db.execute("SELECT snapshot FROM wallets LIMIT 1").fetchone()[0]
    seq = dict(db.execute("SELECT wallet_id, MAX(seq) FROM ledger GROUP BY wallet_id"))
    started = time.perf_counter()
    for _ in range(args.n):
        db.execute("BEGIN IMMEDIATE")
        for w in random.sample(wallets, args.k):
            seq[w] = seq.get(w, 0) + 1
            db.execute(
                "UPDATE wallets SET version = version + 1, seq = ?, snapshot = ? WHERE id = ?",
                (seq[w], snapshot, w),
            )
            row = list(ledger_row)
            row[ledger_cols.index("wallet_id")] = w
            row[ledger_cols.index("seq")] = seq[w]
            row[ledger_cols.index("idempotency_key")] = os.urandom(8).hex()
            db.execute(f"INSERT INTO ledger VALUES ({','.join('?' * len(row))})", row)
            row = list(usage_row)
            if args.random_ids:
                row[usage_cols.index("id")] = "use_" + os.urandom(16).hex()
            else:
                row[usage_cols.index("id")] = f"use_{time.time_ns():020x}{os.urandom(12).hex()}"
            row[usage_cols.index("wallet_id")] = w
            row[usage_cols.index("seq")] = seq[w]
            row[usage_cols.index("idempotency_key")] = os.urandom(8).hex()
            db.execute(f"INSERT INTO usage_events VALUES ({','.join('?' * len(row))})", row)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    shutil.rmtree(work)
    return elapsed / args.n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database")
    parser.add_argument("-k", type=int, default=32, help="wallets per transaction")
    parser.add_argument("-n", type=int, default=300, help="transactions")
    parser.add_argument("--synchronous", default="FULL")
    parser.add_argument("--autocheckpoint", type=int, default=1000)
    parser.add_argument("--random-ids", action="store_true")
    parser.add_argument("--drop", nargs="*", default=[], metavar="INDEX")
    args = parser.parse_args()
    per = run(args)
    print(
        f"SQLite {sqlite3.sqlite_version}, {args.k} wallets per transaction: "
        f"{per * 1000:.1f} ms per transaction, {args.k / per:,.0f} writes/s"
    )


if __name__ == "__main__":
    main()
