//! A TCP proxy in front of an ensemble that the test can cut, to partition one
//! participant from ZooKeeper while the ensemble itself stays healthy.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    /// Bytes flow only while this is false.
    partitioned: bool,
    /// New connections are closed at once (a host that refuses them).
    refusing: bool,
    /// Connections opened under an older generation are closed.
    generation: u64,
    /// How long server→client bytes are held before they are passed on
    /// (a slow link in one direction; client→server bytes are not delayed).
    downstream_delay: Duration,
}

/// One listening port per upstream server, all controlled together.
pub struct Proxy {
    addrs: Vec<SocketAddr>,
    control: watch::Sender<Control>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:<free port> to each of `upstreams`.
    pub fn start(upstreams: &[SocketAddr]) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let (control, _) = watch::channel(Control {
            partitioned: false,
            refusing: false,
            generation: 0,
            downstream_delay: Duration::ZERO,
        });
        let mut addrs = Vec::new();
        for &upstream in upstreams {
            // Bound here (not with block_on) so tests on a runtime can start proxies.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
            listener.set_nonblocking(true).unwrap();
            addrs.push(listener.local_addr().unwrap());
            let control = control.subscribe();
            runtime.spawn(async move {
                let listener = TcpListener::from_std(listener).expect("proxy listener");
                while let Ok((client, _)) = listener.accept().await {
                    let _ = client.set_nodelay(true);
                    tokio::spawn(forward(client, upstream, control.clone()));
                }
            });
        }
        Proxy { addrs, control, runtime: Some(runtime) }
    }

    /// A connect string that reaches the ensemble through this proxy.
    pub fn connect_string(&self) -> String {
        self.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Stops all traffic: connections stay open but silent, as in a network
    /// partition, and new connections are accepted but never answered.
    pub fn partition(&self) {
        self.control.send_modify(|c| c.partitioned = true);
    }

    /// Lets traffic flow again. Connections held during the partition are
    /// closed, as their TCP peers would have given up on them.
    pub fn heal(&self) {
        self.control.send_modify(|c| {
            c.partitioned = false;
            c.refusing = false;
            c.generation += 1;
        });
    }

    /// Closes every current connection and refuses new ones (closes them
    /// at once) until healed: the client keeps failing to connect, so its
    /// reconnect backoff grows.
    pub fn refuse(&self) {
        self.control.send_modify(|c| {
            c.refusing = true;
            c.generation += 1;
        });
    }

    /// Whether traffic is currently cut.
    pub fn is_partitioned(&self) -> bool {
        self.control.borrow().partitioned
    }

    /// Closes every current connection at once (the clients reconnect).
    pub fn reset(&self) {
        self.control.send_modify(|c| c.generation += 1);
    }

    /// Delays every server→client byte by `delay` from now on (zero: none),
    /// keeping order; client→server bytes still pass at once, so the
    /// client's writes commit while it hears of everything late.
    pub fn delay_downstream(&self, delay: Duration) {
        self.control.send_modify(|c| c.downstream_delay = delay);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut control: watch::Receiver<Control>) {
    let born = control.borrow().generation;
    if control.borrow().refusing {
        return;
    }
    if control.borrow().partitioned {
        // Accept, then say nothing until healed; then hang up.
        let _ = control.wait_for(|c| !c.partitioned).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.shutdown().await;
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let cut = tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut server_write) => false,
        _ = copy_delayed(&mut server_read, &mut client_write, control.clone()) => false,
        _ = control.wait_for(|c| c.partitioned || c.generation != born) => true,
    };
    if cut {
        // Hold both sockets open and silent until the partition heals.
        let _ = control.wait_for(|c| !c.partitioned).await;
    }
}

/// Copies `from` to `to`, holding each chunk for the delay in force when it
/// was read. Bytes read before `from` closed are still delivered.
async fn copy_delayed(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    control: watch::Receiver<Control>,
) {
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let at = Instant::now() + control.borrow().downstream_delay;
                    if queue.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The reader ends (dropping `queue`) at EOF or once the writer is gone;
    // the writer drains what was read before it.
    tokio::join!(read, write);
}
