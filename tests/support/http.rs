//! A one-shot HTTP server on loopback: the archive publisher of URL-source tests.

use std::io::{Read, Write};
use std::thread::JoinHandle;

/// Serves `body` at `http://127.0.0.1:PORT{path}` to the first client, then stops. Join the
/// handle to know it was fetched.
pub fn serve_once(path: &str, body: Vec<u8>) -> (String, JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(&body);
    });
    (url, handle)
}
