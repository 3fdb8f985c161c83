#!/usr/bin/env python3
"""How many recordUsage writes SQLite itself can make durable, with no Rust in the way.

Copies a database a `creditd` + `credits-loadgen` run left behind (so the schema, the
indexes and their sizes are the service's own), then repeats what one group commit does
for each of K wallets picked at random: the fenced UPDATE of the wallet row with its
snapshot, one ledger row, one usage row, all in one `BEGIN IMMEDIATE … COMMIT` in WAL
mode. Prints the time per transaction and the writes per second it implies.

    python3 docs/bench/sqlite_ceiling.py /tmp/bench/bench.db [K=32] [transactions=60]
"""
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time


def run(source, k, transactions, synchronous):
    work = tempfile.mkdtemp()
    path = os.path.join(work, "copy.db")
    shutil.copy(source, path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    wallets = [r[0] for r in db.execute("SELECT id FROM wallets")]
    ledger_cols = [r[1] for r in db.execute("PRAGMA table_info(ledger)")]
    usage_cols = [r[1] for r in db.execute("PRAGMA table_info(usage_events)")]
    ledger_row = db.execute("SELECT * FROM ledger ORDER BY rowid DESC LIMIT 1").fetchone()
    usage_row = db.execute("SELECT * FROM usage_events LIMIT 1").fetchone()
    snapshot = db.execute("SELECT snapshot FROM wallets LIMIT 1").fetchone()[0]
    seq = dict(db.execute("SELECT wallet_id, MAX(seq) FROM ledger GROUP BY wallet_id"))
    started = time.perf_counter()
    for _ in range(transactions):
        db.execute("BEGIN IMMEDIATE")
        for w in random.sample(wallets, k):
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
            row[usage_cols.index("id")] = os.urandom(16).hex()
            row[usage_cols.index("wallet_id")] = w
            row[usage_cols.index("seq")] = seq[w]
            row[usage_cols.index("idempotency_key")] = os.urandom(8).hex()
            db.execute(f"INSERT INTO usage_events VALUES ({','.join('?' * len(row))})", row)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    shutil.rmtree(work)
    return elapsed / transactions


def main():
    source = sys.argv[1]
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    transactions = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    print(f"SQLite {sqlite3.sqlite_version}, {k} wallets per transaction")
    for synchronous in ("FULL", "NORMAL"):
        per = run(source, k, transactions, synchronous)
        print(f"synchronous={synchronous}: {per * 1000:.1f} ms per transaction, {k / per:,.0f} writes/s")


if __name__ == "__main__":
    main()
