//! A minimal keep-alive HTTP/1.1 client for the benches: no client library between the
//! measurement and the server, one request in flight per connection.
// Each bench includes this file and uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A keep-alive HTTP/1.1 connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The headers of the last response (names in lower case).
    pub headers: Vec<(String, String)>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Connection {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
            headers: Vec::new(),
        }
    }

    /// Posts a JSON body with a bearer key; returns the status and the response body.
    pub fn post(&mut self, path: &str, key: &str, body: &str) -> (u16, Vec<u8>) {
        self.send("POST", path, key, body)
    }

    /// Gets `path` with a bearer key; returns the status and the response body.
    pub fn get(&mut self, path: &str, key: &str) -> (u16, Vec<u8>) {
        self.send("GET", path, key, "")
    }

    /// The last response's header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn send(&mut self, method: &str, path: &str, key: &str, body: &str) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tvs\r\nContent-Type: application/json\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.headers.clear();
        self.writer.write_all(head.as_bytes()).expect("send head");
        self.writer.write_all(body.as_bytes()).expect("send body");
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                self.headers
                    .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("a length");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        if !chunked {
            let mut body = vec![0u8; length];
            self.reader.read_exact(&mut body).expect("body");
            return (status, body);
        }
        // Bodies of unknown length (a wasi:http guest's) come in chunks.
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.reader.read_line(&mut size).expect("chunk size");
            let size =
                usize::from_str_radix(size.trim_end().split(';').next().unwrap_or(""), 16).expect("a chunk size");
            let mut chunk = vec![0u8; size + 2];
            self.reader.read_exact(&mut chunk).expect("chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
        (status, body)
    }
}

/// Serves `app` on an ephemeral loopback port from a background tokio runtime (for the life of
/// the process) and returns the address.
pub fn serve_in_background(app: std::sync::Arc<tvs_server::http::App>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("address")).expect("send address");
            tvs_server::http::serve(app, listener).await.expect("serve");
        });
    });
    rx.recv().expect("the server's address")
}
