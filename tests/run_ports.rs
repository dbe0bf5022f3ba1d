//! Published ports through the user-space proxy: every `-p` form, tcp and udp, `-P`, many
//! concurrent connections, and the host port closed once the container stops.

mod common;
mod run_fixtures;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use run_fixtures::{free_tcp_port, free_udp_port, Container};
use serde_json::json;

fn echo_image(root: &Path) {
    let echo = run_fixtures::echo_server();
    run_fixtures::busybox_image_with(
        root,
        "echo",
        json!({
            "Cmd": ["sh", "-c", "/echo tcp 7000 & /echo tcp 7001 & /echo udp 7002 & wait"],
            "ExposedPorts": {"7000/tcp": {}, "7002/udp": {}},
        }),
        &[(echo.as_path(), "/echo")],
    );
}

/// One TCP round trip; None while nothing answers yet.
fn tcp_echo(addr: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let writer = {
        let mut s = s.try_clone().ok()?;
        let payload = payload.to_vec();
        std::thread::spawn(move || {
            let ok = s.write_all(&payload).is_ok();
            let _ = s.shutdown(std::net::Shutdown::Write);
            ok
        })
    };
    let mut back = Vec::new();
    s.read_to_end(&mut back).ok()?;
    writer.join().ok()?.then_some(back)
}

fn udp_echo(addr: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    s.send_to(payload, addr).ok()?;
    let mut buf = vec![0u8; 65536];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

fn wait_tcp(addr: SocketAddr) {
    run_fixtures::eventually(10, || (tcp_echo(addr, b"ping")? == b"ping").then_some(()))
        .unwrap_or_else(|| panic!("nothing echoes on {addr}"));
}

#[test]
fn every_publish_form_tcp_and_udp() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    echo_image(r);
    let (explicit, all_ifaces) = (free_tcp_port(), free_tcp_port());
    // A range of two free consecutive ports.
    let range_start = loop {
        let p = free_tcp_port();
        if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let udp_explicit = free_udp_port();
    let p_explicit = format!("127.0.0.1:{explicit}:7000");
    let p_all = format!("{all_ifaces}:7000/tcp");
    let p_range = format!("127.0.0.1:{range_start}-{}:7000-7001", range_start + 1);
    let p_udp = format!("127.0.0.1:{udp_explicit}:7002/udp");
    let c = Container::run(
        r,
        &[
            "-p",
            &p_explicit,
            "-p",
            &p_all,
            "-p",
            "127.0.0.1::7000",
            "-p",
            "7001",
            "-p",
            &p_range,
            "-p",
            &p_udp,
            "-p",
            "127.0.0.1::7002/udp",
            "-P",
            "echo",
        ],
    );
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    wait_tcp(at(explicit));
    assert_eq!(tcp_echo(at(all_ifaces), b"all").unwrap(), b"all");
    assert_eq!(tcp_echo(at(range_start), b"r0").unwrap(), b"r0");
    assert_eq!(tcp_echo(at(range_start + 1), b"r1").unwrap(), b"r1");
    let ports = common::kiln_ok(r, &["port", &c.id]);
    let lines: Vec<&str> = ports.lines().collect();
    assert!(
        lines.contains(&format!("7000/tcp -> 127.0.0.1:{explicit}").as_str()),
        "{ports}"
    );
    assert!(
        lines.contains(&format!("7000/tcp -> 0.0.0.0:{all_ifaces}").as_str()),
        "{ports}"
    );
    assert!(
        lines.contains(&format!("7002/udp -> 127.0.0.1:{udp_explicit}").as_str()),
        "{ports}"
    );
    // ip::port, containerPort alone, and -P got free ports; every one of them echoes.
    let mut tcp_ports = 0;
    let mut udp_ports = 0;
    for l in &lines {
        let (spec, addr) = l.split_once(" -> ").unwrap();
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        assert_ne!(port, 0);
        if spec.ends_with("/udp") {
            let got = run_fixtures::eventually(5, || udp_echo(at(port), spec.as_bytes()));
            assert_eq!(got.as_deref(), Some(spec.as_bytes()), "udp via {l}");
            udp_ports += 1;
        } else {
            assert_eq!(
                tcp_echo(at(port), l.as_bytes()).unwrap(),
                l.as_bytes(),
                "{l}"
            );
            tcp_ports += 1;
        }
    }
    // explicit, all, ::7000, 7001, range x2 = 6 tcp; explicit, ::7002 = 2 udp (-P adds only
    // exposed ports not published otherwise, as docker).
    assert_eq!((tcp_ports, udp_ports), (6, 2), "{ports}");
    let ps = common::kiln_ok(r, &["ps"]);
    assert!(
        ps.contains(&format!("127.0.0.1:{explicit}->7000/tcp")),
        "{ps}"
    );
    let udp = common::kiln_ok(r, &["port", &c.id, "7002/udp"]);
    assert!(
        udp.lines()
            .any(|l| l == format!("127.0.0.1:{udp_explicit}")),
        "{udp}"
    );
    assert_eq!(udp.lines().count(), 2, "{udp}");

    // Several UDP clients at once keep their own sessions.
    let clients: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let msg = format!("udp client {i}");
                udp_echo(at(udp_explicit), msg.as_bytes()).map(|b| b == msg.as_bytes())
            })
        })
        .collect();
    let ok = clients
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|r| *r == Some(true))
        .count();
    assert!(
        ok >= 18,
        "only {ok}/20 UDP clients got their echo (loopback UDP loses little)"
    );

    // Stopped: every host port is closed (and free to bind again).
    common::kiln_ok(r, &["stop", "-t", "1", &c.id]);
    for p in [explicit, range_start, range_start + 1] {
        assert!(TcpStream::connect(at(p)).is_err(), "port {p} still accepts");
        assert!(TcpListener::bind(at(p)).is_ok(), "port {p} is still bound");
    }
    assert!(UdpSocket::bind(at(udp_explicit)).is_ok());
    assert_eq!(common::kiln_ok(r, &["port", &c.id]), "");
}

#[test]
fn two_hundred_concurrent_connections_no_data_lost_or_mixed() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    echo_image(r);
    let c = Container::run(r, &["-p", "127.0.0.1::7000", "echo"]);
    let addr = SocketAddr::from(([127, 0, 0, 1], c.host_port("7000/tcp")));
    wait_tcp(addr);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(200));
    let threads: Vec<_> = (0..200u32)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // 64 KiB to 320 KiB of a pattern unique to this connection.
                let len = 65536 + (i as usize % 5) * 65536;
                let payload: Vec<u8> = (0..len)
                    .map(|j| (i as usize * 31 + j * 7 + j / 251) as u8)
                    .collect();
                barrier.wait();
                let back = tcp_echo(addr, &payload);
                back.as_deref() == Some(&payload[..])
            })
        })
        .collect();
    let good = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(
        good, 200,
        "every connection gets exactly its own bytes back"
    );
}

#[test]
fn a_taken_host_port_fails_the_run() {
    common::require_root();
    let root = common::temp_root();
    let r = root.path();
    echo_image(r);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let spec = format!("127.0.0.1:{port}:7000");
    let o = common::kiln(r, &["run", "--rm", "-p", &spec, "echo"]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&port.to_string()) && err.contains("taken"),
        "{err}"
    );
    let o = common::kiln(r, &["run", "--rm", "-p", "80/sctp", "echo"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(common::kiln_ok(r, &["ps", "-a", "-q"]), "");
}
