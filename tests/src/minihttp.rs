//! A tiny HTTP/1.1 server for the tests' stand-ins (a fake kmodforge server that
//! lies, a Debian archive that changes, a webhook receiver): one thread per
//! connection, one request per connection, answers from a handler.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

/// A request as the handler sees it.
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// What the handler answers: status and body.
pub type Answer = (u16, Vec<u8>);

/// Serves `handler` on a free loopback port until the process ends; returns the address.
pub fn serve<H>(handler: H) -> Result<SocketAddr>
where
    H: Fn(&Request) -> Answer + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a test HTTP server")?;
    let addr = listener.local_addr()?;
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &*handler);
            });
        }
    });
    Ok(addr)
}

fn answer(stream: TcpStream, handler: &dyn Fn(&Request) -> Answer) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let req = Request {
        method: parts.next().unwrap_or("GET").to_string(),
        path: parts.next().unwrap_or("/").to_string(),
        body,
    };
    let (status, out) = handler(&req);
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        out.len()
    )?;
    s.write_all(&out)?;
    s.flush()
}

/// A webhook receiver: records every POST's JSON body, answers 204.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    pub fn start() -> Result<Receiver> {
        let got = Arc::new(Mutex::new(Vec::new()));
        let got2 = got.clone();
        let addr = serve(move |r| {
            if r.method == "POST" {
                let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
                got2.lock().unwrap_or_else(|p| p.into_inner()).push(v);
            }
            (204, Vec::new())
        })?;
        Ok(Receiver {
            url: format!("http://{addr}/hook"),
            got,
        })
    }

    /// Every notice received so far.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
