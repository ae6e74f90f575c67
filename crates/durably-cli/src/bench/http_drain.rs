//! `http-during-drain`: is the HTTP layer responsive while the worker drains a backlog?
//!
//! Enqueues `--drain-jobs` one-step jobs (default 20,000), serves the router on a loopback
//! port, starts the worker and, until the last run completes, sends `GET
//! /api/durably/runs?limit=10` back to back (2 ms apart) over one keep-alive connection,
//! timing each request from write to the last body byte. Reports the request latency
//! percentiles (`http_p50_ms`, `http_p99_ms`, `http_max_ms`) besides the drain rate, and the
//! same request's latency on the full backlog before the worker starts (`idle_p50_ms`,
//! `idle_p99_ms`): the part of the latency that is the query itself, not the drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use durably::http::HttpOptions;
use durably::{Durably, EventType, TriggerOptions};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{BenchInput, Setup, bench_job, peak_rss_mb, percentiles, reset_peak_rss, round};

type BoxError = Box<dyn std::error::Error>;

/// One keep-alive HTTP/1.1 connection that sends GETs and reads `Content-Length` bodies.
struct Client {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Client {
    async fn connect(address: std::net::SocketAddr) -> Result<Client, BoxError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::new(stream),
            host: address.to_string(),
        })
    }

    /// Sends `GET path`; returns the status and the body length.
    async fn get(&mut self, path: &str) -> Result<(u16, usize), BoxError> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut status = 0u16;
        let mut length = 0usize;
        let mut first = true;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err("connection closed".into());
            }
            if first {
                status = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or("bad status line")?;
                first = false;
            } else if line == "\r\n" {
                break;
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, length))
    }
}

pub async fn run(
    setup: &mut Setup,
    concurrency: usize,
    jobs: u64,
) -> Result<serde_json::Value, BoxError> {
    reset_peak_rss();
    let durably = Durably::builder()
        .store(setup.fresh_store()?)
        .max_concurrent_runs(concurrency)
        .polling_interval(Duration::from_millis(50))
        .build()?;
    let handle = durably.register(bench_job("bench".into(), 1, Arc::new(AtomicU64::new(0))))?;
    durably.migrate().await?;
    for chunk_start in (0..jobs).step_by(1000) {
        let items = (chunk_start..(chunk_start + 1000).min(jobs))
            .map(|n| (BenchInput { n }, TriggerOptions::new()));
        handle.batch_trigger(items).await?;
    }

    let completed = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(Notify::new());
    let _listener = {
        let (completed, all_done) = (completed.clone(), all_done.clone());
        durably.on(EventType::RunComplete, move |_| {
            if completed.fetch_add(1, Ordering::SeqCst) + 1 == jobs {
                all_done.notify_one();
            }
        })
    };

    let app = axum::Router::new().nest(
        "/api/durably",
        durably::http::router(durably.clone(), HttpOptions::new()),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut client = Client::connect(address).await?;

    // baseline: the same request on the full backlog with the worker idle
    let mut idle = Vec::new();
    for _ in 0..50 {
        let request = Instant::now();
        if let Ok((200, _)) = client.get("/api/durably/runs?limit=10").await {
            idle.push(request.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (idle_p50, idle_p99) = percentiles(idle);

    let started = Instant::now();
    durably.start();
    let mut samples = Vec::new();
    let mut errors = 0u64;
    let done = all_done.notified();
    tokio::pin!(done);
    let deadline = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(deadline);
    loop {
        let request = Instant::now();
        tokio::select! {
            _ = &mut done => break,
            _ = &mut deadline => return Err("the drain did not finish within 10 minutes".into()),
            answer = client.get("/api/durably/runs?limit=10") => {
                match answer {
                    Ok((200, _)) => samples.push(request.elapsed().as_secs_f64() * 1000.0),
                    _ => errors += 1,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let process_s = started.elapsed().as_secs_f64();
    durably.stop().await;
    server.abort();

    let requests = samples.len();
    let max = samples.iter().copied().fold(0.0, f64::max);
    let (p50, p99) = percentiles(samples);
    Ok(json!({
        "workload": "http-during-drain",
        "backend": "sqlite",
        "concurrency": concurrency,
        "jobs": jobs,
        "steps_per_job": 1,
        "process_s": round(process_s),
        "jobs_per_s": round(jobs as f64 / process_s),
        "http_requests": requests,
        "http_errors": errors,
        "http_p50_ms": p50,
        "http_p99_ms": p99,
        "http_max_ms": round(max),
        "idle_p50_ms": idle_p50,
        "idle_p99_ms": idle_p99,
        "peak_rss_mb": peak_rss_mb(),
    }))
}
