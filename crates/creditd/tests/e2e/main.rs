//! End-to-end tests: the real `creditd` binary over real sockets (HTTP and WebSocket), on a
//! fresh SQLite file per test.

mod helpers;

mod api;
mod auth;
mod live;
mod operations;
