//! End-to-end tests: the real `creditd` binary over real sockets (HTTP and WebSocket), one
//! server process per test, on SQLite and — when `CREDITS_TEST_DATABASE_URL` is set — on
//! PostgreSQL (issue 7).

mod helpers;

mod access;
mod accounts;
mod auth;
mod cli;
mod docs;
mod hostile;
mod input;
mod ledger;
mod live;
mod restart;
mod reviews;
mod server;
mod teams;
