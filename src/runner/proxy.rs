//! Published ports without bridges or NAT: a user-space proxy listens on the host address and,
//! for each TCP connection (or UDP client), opens a socket *inside* the container's network
//! namespace (a blocking-pool thread that has `setns`'d into it creates it) connected to the
//! container's loopback, then copies bytes both ways.
//!
//! The host sockets are bound by [`bind`] before the container starts (a taken port fails the
//! run early and `ip::port` learns its port), and closed when the [`Proxy`] stops, right after
//! the container exits.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::config::{PortBinding, PortRequest, Proto};

/// How long a UDP client's session lives without traffic.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// A host socket bound for one published port.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

fn bind_one(ip: IpAddr, port: u16, proto: Proto) -> std::io::Result<(Listener, u16)> {
    let addr = SocketAddr::new(ip, port);
    match proto {
        Proto::Tcp => {
            let l = std::net::TcpListener::bind(addr)?;
            let port = l.local_addr()?.port();
            Ok((Listener::Tcp(l), port))
        }
        Proto::Udp => {
            let s = std::net::UdpSocket::bind(addr)?;
            let port = s.local_addr()?.port();
            Ok((Listener::Udp(s), port))
        }
    }
}

/// Binds the host side of every requested port (port 0 = any free port; a host port range
/// takes its first free port).
pub fn bind(requests: &[PortRequest]) -> Result<(Vec<PortBinding>, Vec<Listener>)> {
    let mut bindings = Vec::new();
    let mut listeners = Vec::new();
    for r in requests {
        let (first, last) = r.host_ports.unwrap_or((0, 0));
        let lowest = crate::rootless::check::unprivileged_port_start();
        if crate::rootless::in_userns() && first != 0 && first < lowest {
            bail!(
                "publishing port {}/{}: host port {first} is below \
                 net.ipv4.ip_unprivileged_port_start ({lowest}), which kiln running rootless \
                 cannot bind: choose a host port of {lowest} or more, or (as root) lower the \
                 sysctl",
                r.container_port,
                r.proto
            );
        }
        let mut last_err = None;
        let mut bound = None;
        for port in first..=last {
            match bind_one(r.host_ip, port, r.proto) {
                Ok(b) => {
                    bound = Some(b);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some((listener, port)) = bound else {
            let err = last_err.map(|e| e.to_string()).unwrap_or_default();
            let ports = if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            };
            bail!(
                "publishing port {}/{}: cannot bind {}:{ports}: {err} (the port is taken: choose \
                 another host port, or leave it out to get a free one)",
                r.container_port,
                r.proto,
                r.host_ip
            );
        };
        bindings.push(PortBinding {
            container_port: r.container_port,
            proto: r.proto,
            host_ip: r.host_ip,
            host_port: port,
        });
        listeners.push(listener);
    }
    Ok((bindings, listeners))
}

/// A running proxy; dropping or stopping it closes every host port.
pub struct Proxy {
    runtime: Option<tokio::runtime::Runtime>,
}

thread_local! {
    static IN_CONTAINER_NETNS: Cell<bool> = const { Cell::new(false) };
}

/// Moves the calling thread (a blocking-pool thread of the proxy's runtime, used only for this)
/// into the container's network namespace, once.
fn enter_netns(netns: &File) -> std::io::Result<()> {
    if IN_CONTAINER_NETNS.get() {
        return Ok(());
    }
    // SAFETY: setns on an fd we hold open; affects only this thread.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    IN_CONTAINER_NETNS.set(true);
    Ok(())
}

fn container_loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

impl Proxy {
    /// Starts forwarding each listener to its port on the loopback of the network namespace
    /// `netns` (an open `/proc/PID/ns/net`).
    pub fn start(bindings: &[PortBinding], listeners: Vec<Listener>, netns: File) -> Result<Proxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(64)
            .thread_name("kiln-proxy")
            .enable_io()
            .enable_time()
            .build()
            .context("starting the port proxy")?;
        let netns = Arc::new(netns);
        for (b, l) in bindings.iter().zip(listeners) {
            let netns = netns.clone();
            let port = b.container_port;
            match l {
                Listener::Tcp(l) => {
                    l.set_nonblocking(true)?;
                    let l = {
                        let _guard = runtime.enter();
                        tokio::net::TcpListener::from_std(l)?
                    };
                    runtime.spawn(tcp_accept_loop(l, netns, port));
                }
                Listener::Udp(s) => {
                    s.set_nonblocking(true)?;
                    let s = {
                        let _guard = runtime.enter();
                        tokio::net::UdpSocket::from_std(s)?
                    };
                    runtime.spawn(udp_loop(Arc::new(s), netns, port));
                }
            }
        }
        Ok(Proxy {
            runtime: Some(runtime),
        })
    }

    /// Closes every host port and drops every proxied connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn tcp_accept_loop(listener: tokio::net::TcpListener, netns: Arc<File>, port: u16) {
    loop {
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(_) => {
                // Out of descriptors or the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let netns = netns.clone();
        tokio::spawn(async move {
            let upstream = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                enter_netns(&netns)?;
                let s = std::net::TcpStream::connect(container_loopback(port))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await;
            let Ok(Ok(upstream)) = upstream else {
                return; // nothing listens in the container: the client sees the close
            };
            let Ok(mut upstream) = tokio::net::TcpStream::from_std(upstream) else {
                return;
            };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<tokio::net::UdpSocket>>>>;

async fn udp_loop(host: Arc<tokio::net::UdpSocket>, netns: Arc<File>, port: u16) {
    let sessions: Sessions = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = host.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let existing = sessions.lock().ok().and_then(|s| s.get(&client).cloned());
        let upstream = match existing {
            Some(u) => u,
            None => {
                let netns = netns.clone();
                let made = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                    enter_netns(&netns)?;
                    let s = std::net::UdpSocket::bind(container_loopback(0))?;
                    s.connect(container_loopback(port))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .await;
                let Ok(Ok(s)) = made else { continue };
                let Ok(s) = tokio::net::UdpSocket::from_std(s) else {
                    continue;
                };
                let s = Arc::new(s);
                if let Ok(mut map) = sessions.lock() {
                    map.insert(client, s.clone());
                }
                tokio::spawn(udp_replies(
                    s.clone(),
                    host.clone(),
                    client,
                    sessions.clone(),
                ));
                s
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

/// Sends the container's replies back to one client until the session is idle.
async fn udp_replies(
    upstream: Arc<tokio::net::UdpSocket>,
    host: Arc<tokio::net::UdpSocket>,
    client: SocketAddr,
    sessions: Sessions,
) {
    let mut buf = vec![0u8; 65536];
    // Ends when idle, or when the container refused (ICMP port unreachable).
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
        let _ = host.send_to(&buf[..n], client).await;
    }
    if let Ok(mut map) = sessions.lock() {
        map.remove(&client);
    }
}
