//! The TCP listener `serve` accepts on: every connection gets a read timeout, so one that
//! sends nothing for that long (an idle keep-alive connection, a client gone without a FIN,
//! a header that never ends) is closed instead of holding a socket and a task for ever.
//! Live WebSockets are never idle that long: their peers answer the server's pings.

use std::pin::Pin;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;

pub struct IdleLimited {
    listener: TcpListener,
    idle: Duration,
}

impl IdleLimited {
    pub fn new(listener: TcpListener, idle: Duration) -> Self {
        IdleLimited { listener, idle }
    }
}

impl axum::serve::Listener for IdleLimited {
    type Io = Pin<Box<TimeoutStream<TcpStream>>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        let mut io = TimeoutStream::new(io);
        io.set_read_timeout(Some(self.idle));
        (Box::pin(io), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
