//! Accepting connections and serving HTTP on them. Every connection gets a read timeout, so
//! one that sends nothing for that long between requests (an idle keep-alive connection, a
//! client gone without a FIN) is closed instead of holding a socket and a task for ever,
//! while a request being handled is never cut short by it; the same write timeout closes
//! one whose client stops taking what it is sent; and a request
//! head must arrive whole within the header timeout, so a client that trickles its headers
//! a byte at a time (slowloris) cannot hold one either. Live WebSockets are never idle
//! that long: their peers answer the server's pings.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_io_timeout::TimeoutStream;

pub struct IdleLimited {
    listener: TcpListener,
    idle: Duration,
}

impl IdleLimited {
    pub fn new(listener: TcpListener, idle: Duration) -> Self {
        IdleLimited { listener, idle }
    }

    async fn accept(&mut self) -> Pin<Box<TimeoutStream<TcpStream>>> {
        let (io, _) = axum::serve::Listener::accept(&mut self.listener).await;
        let mut io = TimeoutStream::new(io);
        io.set_read_timeout(Some(self.idle));
        // A client that stops taking a response (its window full) is gone too (found by
        // review: with reads paused while a request is served, nothing else ended it, and
        // the SIGTERM drain waited for it for ever).
        io.set_write_timeout(Some(self.idle));
        Box::pin(io)
    }
}

/// Serves `router` over HTTP/1.1 (with WebSocket upgrades), at most `max_connections` at
/// once (more wait in the listen backlog: each open connection can hold a response its
/// client has not read), until `stop` resolves; then
/// accepts nothing more, lets each connection finish the requests it is serving (idle
/// keep-alive connections close) and returns once they have, or after `drain` (a client
/// reading a response a few bytes at a time keeps resetting the write timeout: found by
/// review), leaving what is left to end with the process. Upgraded WebSockets are not
/// waited for: they run on tasks of their own.
pub async fn serve(
    mut listener: IdleLimited,
    router: Router,
    header_timeout: Duration,
    max_connections: usize,
    drain: Duration,
    stop: impl Future<Output = ()>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    // Dropped to tell connections to stop; each connection holds `done` until it ends.
    let (stopping, stop_rx) = watch::channel(());
    let (done, all_done) = watch::channel(());
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut stop => break,
        };
        let io = tokio::select! {
            io = listener.accept() => io,
            () = &mut stop => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut stop_rx = stop_rx.clone();
        let all_done = all_done.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            // Half-closed connections are served: hyper then stops reading the socket
            // while a request is handled (only to notice its client leaving), so the idle
            // timeout runs only between requests and a long call gets its answer.
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .half_close(true);
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop_rx.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop((slot, all_done));
        });
    }
    drop(listener);
    drop(stopping);
    drop(all_done);
    // Not for ever: a client reading a response a few bytes at a time keeps resetting the
    // write timeout (found by review), and the wallets are flushed only after this.
    if tokio::time::timeout(drain, done.closed()).await.is_err() {
        tracing::warn!(
            ?drain,
            "HTTP responses still being sent after the drain timeout: their connections are dropped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Found by review: the idle read timeout also ran while a request was being handled
    /// (hyper keeps reading the socket to notice a client that goes away), so a call that
    /// took longer than it (an `advanceClock` over many wallets, a `reloadPricing`) had its
    /// connection cut instead of getting its answer.
    #[tokio::test]
    async fn a_request_handled_for_longer_than_the_idle_timeout_gets_its_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done"
            }),
        );
        let idle = IdleLimited::new(listener, Duration::from_millis(300));
        tokio::spawn(serve(
            idle,
            router,
            Duration::from_secs(5),
            8,
            Duration::from_secs(30),
            std::future::pending(),
        ));
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with("done") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after {answer:?}");
            answer.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// A server whose one route, `/big`, answers `megabytes` MB, the sender that stops it,
    /// its task, and a client that has asked for `/big`.
    async fn serving_big(
        megabytes: usize,
        idle: Duration,
        drain: Duration,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
        TcpStream,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big = "x".repeat(megabytes * 1024 * 1024);
        let router = Router::new().route("/big", axum::routing::get(move || async move { big }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let limited = IdleLimited::new(listener, idle);
        let serving = tokio::spawn(serve(limited, router, idle, 8, drain, stopped));
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        (stop, serving, socket)
    }

    /// Found by review: once reads paused while a request is served, a client that stopped
    /// reading its response (its receive window full) held its connection for ever, and
    /// the SIGTERM drain, which waits for responses under way, never ended.
    #[tokio::test]
    async fn a_client_that_stops_reading_its_response_is_let_go() {
        let idle = Duration::from_millis(300);
        let (stop, serving, socket) = serving_big(32, idle, Duration::from_secs(30)).await;
        // Never read: the server's writes fill both sockets' buffers and stall.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the drain ends once the stalled response is given up")
            .unwrap();
        drop(socket);
    }

    /// Found by review: a client reading a long response a few bytes at a time resets the
    /// write timeout each time, and the drain waited for its response for as long as it
    /// took (hours), so the wallets were never flushed before a supervisor's SIGKILL.
    #[tokio::test]
    async fn the_drain_ends_after_its_deadline_whatever_a_slow_reader_does() {
        let idle = Duration::from_secs(5);
        let (stop, serving, mut socket) = serving_big(64, idle, Duration::from_secs(1)).await;
        // About 640 KB/s: the write never waits the 5 s of its timeout, and the 64 MB take
        // a hundred seconds.
        let reading = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while socket.read_exact(&mut buf).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the drain ends at its deadline")
            .unwrap();
        reading.abort();
    }
}
