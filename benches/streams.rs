//! Streaming benchmark: N concurrent server-sent-event streams from a local upstream, read directly and
//! through an hfgate process, in alternating rounds. Reports the per-event latency (receive time − send
//! time, both taken in this process on one clock) of each path, what hfgate adds at p50/p99, and hfgate's
//! resident memory idle and with all N streams open. `bench/streams.sh` builds, pins and runs it; see
//! bench/README.md, "Streaming".

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hfgate::jose::{Algorithm, SigningKey, unix_now};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

const AUDIENCE: &str = "hfgate-bench";
/// Streams being opened at once; the rest wait, so neither listener's accept backlog overflows.
const OPENING_AT_ONCE: usize = 64;

const USAGE: &str = "\
Usage: streams [--streams N] [--interval-ms MS] [--warmup S] [--duration S] [--rounds R]
               [--hfgate PATH] [--hfgate-cpu LIST] [--hfgate-realtime] [--workdir DIR]

Opens N concurrent SSE streams (each sending one event every MS milliseconds) directly to a local
upstream, then through hfgate, R times, and prints per-event latency and hfgate's memory per open stream.
  --streams N        concurrent streams per path [1000]
  --interval-ms MS   time between two events of one stream [100]
  --warmup S         seconds after all streams are open before measuring [5]
  --duration S       seconds measured per path and round [15]
  --rounds R         rounds of (direct, through hfgate) [3]
  --hfgate PATH      the hfgate binary [target/release/hfgate]
  --hfgate-cpu LIST  run hfgate under `taskset -c LIST` (e.g. 0) [not pinned]
  --hfgate-realtime  run hfgate under `chrt -f 10` (SCHED_FIFO), so other processes on its core
                     cannot delay its wake-ups: separates scheduling delay from hfgate's own
  --workdir DIR      config, audit file and hfgate's log [$TMPDIR/hfgate-streams]";

#[derive(Debug, Clone)]
struct Options {
    streams: usize,
    interval: Duration,
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    hfgate: PathBuf,
    hfgate_cpu: Option<String>,
    hfgate_realtime: bool,
    workdir: PathBuf,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
        let mut options = Options {
            streams: 1000,
            interval: Duration::from_millis(100),
            warmup: Duration::from_secs(5),
            measure: Duration::from_secs(15),
            rounds: 3,
            hfgate: PathBuf::from("target/release/hfgate"),
            hfgate_cpu: None,
            hfgate_realtime: false,
            workdir: std::env::temp_dir().join("hfgate-streams"),
        };
        fn number(name: &str, value: Option<String>) -> anyhow::Result<u64> {
            let value = value.with_context(|| format!("{name} needs a value"))?;
            match value.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => bail!("{name} must be a positive integer, got {value:?}"),
            }
        }
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--streams" => options.streams = number("--streams", args.next())? as usize,
                "--interval-ms" => options.interval = Duration::from_millis(number("--interval-ms", args.next())?),
                "--warmup" => options.warmup = Duration::from_secs(number("--warmup", args.next())?),
                "--duration" => options.measure = Duration::from_secs(number("--duration", args.next())?),
                "--rounds" => options.rounds = number("--rounds", args.next())? as usize,
                "--hfgate" => options.hfgate = PathBuf::from(args.next().context("--hfgate needs a path")?),
                "--hfgate-cpu" => options.hfgate_cpu = Some(args.next().context("--hfgate-cpu needs a CPU list")?),
                "--hfgate-realtime" => options.hfgate_realtime = true,
                "--workdir" => options.workdir = PathBuf::from(args.next().context("--workdir needs a directory")?),
                // `cargo bench` passes --bench to every benchmark binary.
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        Ok(options)
    }
}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("streams: {err:#}");
            return ExitCode::from(2);
        }
    };
    // Like hfgate, one worker per CPU this process may run on: pinned by the script, that is one.
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("streams: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(err) => {
            eprintln!("streams: {err:#}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------------------------------- clock

/// One clock for the upstream (send) and the clients (receive): microseconds since the first call.
fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

// ---------------------------------------------------------------------------------------- upstream

/// The SSE body: one event per tick, stamped with the time it is handed to the connection.
struct EventBody {
    ticker: tokio::time::Interval,
    seq: u64,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.ticker.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.seq += 1;
                // The shape and size (about 210 bytes) of an OpenAI-style chat completion chunk.
                let event = format!(
                    "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\
                     \"model\":\"bench/stream\",\"seq\":{},\"sent_us\":{},\"choices\":[{{\"index\":0,\
                     \"delta\":{{\"content\":\" token\"}},\"finish_reason\":null}}]}}\n\n",
                    self.seq,
                    now_us()
                );
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
        }
    }
}

type UpstreamBody = UnsyncBoxBody<Bytes, Infallible>;

struct Upstream {
    jwks: Bytes,
    interval: Duration,
}

fn query_number(query: &str, name: &str) -> Option<u64> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

async fn upstream_handle(
    upstream: Arc<Upstream>,
    request: Request<Incoming>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let plain = |status: StatusCode, body: Bytes, content_type: &'static str| {
        let mut response = Response::new(Full::new(body).boxed_unsync());
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        response
    };
    let response = match request.uri().path() {
        "/jwks.json" => plain(StatusCode::OK, upstream.jwks.clone(), "application/json"),
        "/stream" => {
            // Stream i of n starts i/n of an interval late, so the events of all streams spread evenly.
            let query = request.uri().query().unwrap_or("");
            let (i, n) = (query_number(query, "i").unwrap_or(0), query_number(query, "n").unwrap_or(1).max(1));
            let offset = upstream.interval.mul_f64((i % n) as f64 / n as f64);
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, upstream.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut response = Response::new(EventBody { ticker, seq: 0 }.boxed_unsync());
            let headers = response.headers_mut();
            headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/event-stream"));
            headers.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-cache"));
            response
        }
        _ => plain(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"), "text/plain"),
    };
    Ok(response)
}

async fn serve_upstream(listener: TcpListener, upstream: Arc<Upstream>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| upstream_handle(upstream.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

// ----------------------------------------------------------------------------------------- clients

/// What one stream saw: (receive time, latency) per event, both in microseconds.
#[derive(Debug, Default)]
struct StreamResult {
    samples: Vec<(u64, u32)>,
    /// Events missing from the sequence (a gap in `seq`).
    gaps: u64,
    error: Option<String>,
}

/// Reads `"name":123` from an event.
fn field(event: &[u8], name: &[u8]) -> Option<u64> {
    let at = event.windows(name.len()).position(|w| w == name)? + name.len();
    let digits = event[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&event[at..at + digits]).ok()?.parse().ok()
}

/// Opens one stream on its own connection and reads it until `stop`. `ready` is released and `opened`
/// counted when the first event has arrived.
async fn run_stream(
    target: SocketAddr,
    path: String,
    token: Option<String>,
    ready: Arc<Semaphore>,
    opened: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> StreamResult {
    let mut result = StreamResult::default();
    let permit = ready.acquire_owned().await;
    let response = async {
        let tcp = TcpStream::connect(target).await.context("connect")?;
        tcp.set_nodelay(true).context("nodelay")?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let connection = tokio::spawn(connection);
        let mut request = Request::get(path).header(hyper::header::HOST, target.to_string());
        request = request.header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
        anyhow::Ok((response, connection))
    };
    let (response, connection) = match tokio::time::timeout(Duration::from_secs(30), response).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => {
            result.error = Some(format!("{err:#}"));
            return result;
        }
        Err(_) => {
            result.error = Some("no response headers within 30 s".into());
            return result;
        }
    };
    if response.status() != StatusCode::OK {
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        result.error = Some(format!("status {status}: {}", String::from_utf8_lossy(&body).trim()));
        connection.abort();
        return result;
    }
    let mut body = response.into_body();
    let mut pending: Vec<u8> = Vec::with_capacity(512);
    let mut last_seq = 0u64;
    let mut permit = permit.ok();
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let received = now_us();
                    let Ok(data) = frame.into_data() else { continue };
                    pending.extend_from_slice(&data);
                    while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                        let event = &pending[..end];
                        if let (Some(seq), Some(sent)) = (field(event, b"\"seq\":"), field(event, b"\"sent_us\":")) {
                            if last_seq != 0 && seq > last_seq + 1 {
                                result.gaps += seq - last_seq - 1;
                            }
                            last_seq = seq;
                            let latency = received.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
                            result.samples.push((received, latency));
                        }
                        pending.drain(..end + 2);
                    }
                    if permit.take().is_some() {
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Some(Err(err)) => {
                    result.error = Some(format!("stream broke: {err}"));
                    break;
                }
                None => {
                    result.error = Some("stream ended".into());
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Dropping the body and the connection closes the socket: the client going away.
    drop(body);
    connection.abort();
    result
}

/// Latency figures of one path over the measured window.
#[derive(Debug)]
struct PathFigures {
    events: usize,
    p50: u32,
    p99: u32,
    p999: u32,
    max: u32,
    gaps: u64,
    open_time: Duration,
    /// Share of the benchmark's core, and of hfgate's, that other processes used while measured.
    bench_core_others: Option<f64>,
    hfgate_core_others: Option<f64>,
}

/// hfgate's resident memory and CPU while the streams were open.
#[derive(Debug, Default)]
struct ProcessSamples {
    rss_kib: Vec<u64>,
    cpu_seconds: Option<f64>,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Opens `streams` streams to `target`, waits for all of them to deliver, lets them run through the
/// warm-up, measures, then closes them all. With `pid`, samples that process once a second.
async fn measure_path(
    options: &Options,
    target: SocketAddr,
    tokens: Option<&[String]>,
    pid: Option<u32>,
) -> anyhow::Result<(PathFigures, ProcessSamples)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let opened = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(options.streams);
    for i in 0..options.streams {
        let path = format!("/stream?i={i}&n={}", options.streams);
        let token = tokens.map(|t| t[i % t.len()].clone());
        tasks.push(tokio::spawn(run_stream(target, path, token, ready.clone(), opened.clone(), stop_rx.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(60) + options.interval * 2;
    while opened.load(Ordering::SeqCst) < options.streams {
        if Instant::now() > deadline || tasks.iter().any(|t| t.is_finished()) {
            let _ = stop_tx.send(true);
            let mut errors = Vec::new();
            for task in tasks {
                if let Some(err) = task.await.ok().and_then(|r| r.error) {
                    errors.push(err);
                }
            }
            let first = errors.first().cloned().unwrap_or_else(|| "timed out".into());
            bail!(
                "only {} of {} streams to {target} opened ({} failed; first error: {first})",
                opened.load(Ordering::SeqCst),
                options.streams,
                errors.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_time = started.elapsed();
    tokio::time::sleep(options.warmup).await;

    let mut samples = ProcessSamples::default();
    let cpu_before = pid.and_then(|p| cpu_seconds(&p.to_string()));
    let bench_core = CoreWatch::start("self");
    let hfgate_core = pid.and_then(|p| CoreWatch::start(&p.to_string()));
    let window_start = now_us();
    let window_end = window_start + options.measure.as_micros() as u64;
    while now_us() < window_end {
        tokio::time::sleep(Duration::from_secs(1).min(Duration::from_micros(window_end - now_us()))).await;
        if let Some(rss) = pid.and_then(rss_kib) {
            samples.rss_kib.push(rss);
        }
    }
    if let (Some(before), Some(after)) = (cpu_before, pid.and_then(|p| cpu_seconds(&p.to_string()))) {
        samples.cpu_seconds = Some(after - before);
    }
    let bench_core_others = bench_core.and_then(|w| w.others());
    let hfgate_core_others = hfgate_core.and_then(|w| w.others());

    let _ = stop_tx.send(true);
    let mut latencies = Vec::new();
    let mut gaps = 0;
    let mut errors = Vec::new();
    for task in tasks {
        let result = task.await.context("a stream task panicked")?;
        latencies.extend(result.samples.iter().filter(|(at, _)| (window_start..window_end).contains(at)).map(|s| s.1));
        gaps += result.gaps;
        if let Some(err) = result.error {
            errors.push(err);
        }
    }
    if let Some(first) = errors.first() {
        bail!("{} of {} streams to {target} broke while measured; first: {first}", errors.len(), options.streams);
    }
    latencies.sort_unstable();
    let figures = PathFigures {
        events: latencies.len(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        max: latencies.last().copied().unwrap_or(0),
        gaps,
        open_time,
        bench_core_others,
        hfgate_core_others,
    };
    Ok((figures, samples))
}

// ------------------------------------------------------------------------------------------ hfgate

/// The hfgate child process; killed if the benchmark stops early.
struct Hfgate {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    audit: PathBuf,
}

impl Drop for Hfgate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Hfgate {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM (hfgate drains and flushes its audit file), then waits for the exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        let status = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().context("kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("hfgate exited with {status} after SIGTERM:\n{}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("hfgate did not exit within 40 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?)
}

fn start_hfgate(options: &Options, upstream: SocketAddr) -> anyhow::Result<Hfgate> {
    std::fs::create_dir_all(&options.workdir)
        .with_context(|| format!("cannot create {}", options.workdir.display()))?;
    let (proxy, admin) = (free_port()?, free_port()?);
    let audit = options.workdir.join("audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let config = options.workdir.join("hfgate.toml");
    let text = format!(
        r#"# Written by benches/streams.rs.
[server]
listen = "{proxy}"
admin_listen = "{admin}"

[audit]
path = "{audit}"

[[issuer]]
name = "bench"
issuer = "http://{upstream}"
jwks_uri = "http://{upstream}/jwks.json"
audiences = ["{AUDIENCE}"]

[[route]]
name = "stream"
path = "/"
upstream = "http://{upstream}"
api = "generic"
credential = "none"
"#,
        audit = audit.display(),
    );
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    let log = options.workdir.join("hfgate.log");
    let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    // taskset and chrt exec what follows, so the child's pid is hfgate's.
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if let Some(cpu) = &options.hfgate_cpu {
        argv.extend(["taskset".into(), "-c".into(), cpu.into()]);
    }
    if options.hfgate_realtime {
        argv.extend(["chrt".into(), "-f".into(), "10".into()]);
    }
    argv.push(options.hfgate.clone().into_os_string());
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).arg("serve").arg("--config").arg(&config);
    let child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", options.hfgate.display()))?;
    // For the wrapper script, to stop hfgate should this process be killed before its own cleanup.
    let _ = std::fs::write(options.workdir.join("hfgate.pid"), child.id().to_string());
    Ok(Hfgate { child, proxy, admin, log, audit })
}

/// One request on a fresh connection: status and body.
async fn http_get(target: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<(StatusCode, Bytes)> {
    let work = async {
        let tcp = TcpStream::connect(target).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let connection = tokio::spawn(connection);
        let mut request = Request::get(path).header(hyper::header::HOST, target.to_string());
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        connection.abort();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), work).await.context("no answer within 5 s")?
}

async fn wait_ready(hfgate: &mut Hfgate) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = hfgate.child.try_wait()? {
            bail!("hfgate exited with {status} at start:\n{}", hfgate.log_tail());
        }
        if let Ok((StatusCode::OK, _)) = http_get(hfgate.admin, "/readyz", None).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("hfgate's /readyz did not answer 200 within 30 s:\n{}", hfgate.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU time of a process (`self` or a pid), in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// The CPU a process is pinned to, when it may run on exactly one.
fn pinned_cpu(pid: &str) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?.trim().parse().ok()
}

/// Busy time of one CPU (all but idle and iowait), in seconds.
fn cpu_busy(cpu: usize) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with(&format!("cpu{cpu} ")))?;
    // user nice system idle iowait irq softirq steal (guest time is already part of user).
    let fields: Vec<f64> = line.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    if fields.len() < 8 {
        return None;
    }
    Some((fields.iter().sum::<f64>() - fields[3] - fields[4]) / clock_ticks())
}

/// What other processes take of the core a pinned process runs on: a busy neighbour delays every
/// wake-up of the process by up to a scheduler slice, which shows in its tail latency.
struct CoreWatch {
    cpu: usize,
    pid: String,
    busy: f64,
    own: f64,
    started: Instant,
}

impl CoreWatch {
    fn start(pid: &str) -> Option<CoreWatch> {
        let cpu = pinned_cpu(pid)?;
        Some(CoreWatch {
            cpu,
            pid: pid.to_string(),
            busy: cpu_busy(cpu)?,
            own: cpu_seconds(pid)?,
            started: Instant::now(),
        })
    }

    /// The share of the core used by others since the start.
    fn others(&self) -> Option<f64> {
        let busy = cpu_busy(self.cpu)? - self.busy;
        let own = cpu_seconds(&self.pid)? - self.own;
        Some(((busy - own) / self.started.elapsed().as_secs_f64()).clamp(0.0, 1.0))
    }
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------- report

fn ms(us: u32) -> String {
    format!("{:.3} ms", f64::from(us) / 1000.0)
}

fn signed_ms(us: i64) -> String {
    format!("{:+.3} ms", us as f64 / 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn median(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    match values.len() {
        0 => 0,
        n => (values[(n - 1) / 2] + values[n / 2]) / 2,
    }
}

/// One round: the streams directly, then through hfgate.
#[derive(Debug)]
struct Round {
    direct: PathFigures,
    through: PathFigures,
    rss_idle: u64,
    rss_open: u64,
    rss_after: u64,
    cpu_seconds: Option<f64>,
}

impl Round {
    fn added_p50(&self) -> i64 {
        i64::from(self.through.p50) - i64::from(self.direct.p50)
    }

    fn added_p99(&self) -> i64 {
        i64::from(self.through.p99) - i64::from(self.direct.p99)
    }

    /// Other processes took more than this share of either core while the round was measured: their
    /// scheduling delays, not the path, then set the tail.
    fn disturbed(&self) -> bool {
        const LIMIT: f64 = 0.15;
        [self.direct.bench_core_others, self.through.bench_core_others, self.through.hfgate_core_others]
            .iter()
            .any(|share| share.is_some_and(|s| s > LIMIT))
    }

    fn per_stream_kib(&self, streams: usize) -> f64 {
        self.rss_open.saturating_sub(self.rss_idle) as f64 / streams as f64
    }
}

fn report(options: &Options, rounds: &[Round], audit_lines: usize, requests: usize) -> (String, bool) {
    let n = options.streams;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Streaming: {n} concurrent SSE streams, one event every {} ms per stream ({:.0} events/s in total)\n",
        options.interval.as_millis(),
        n as f64 / options.interval.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Per-event latency (receive − send, one clock), {} s measured per path and round after {} s of warm-up{}.\n",
        options.measure.as_secs(),
        options.warmup.as_secs(),
        if options.hfgate_realtime { "; hfgate ran with SCHED_FIFO priority 10 (chrt -f 10)" } else { "" }
    );
    out.push_str(
        "| round | path | events | p50 | p99 | p99.9 | max | lost | all open after | others on bench / hfgate core |\n",
    );
    out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (i, round) in rounds.iter().enumerate() {
        for (name, f) in [("direct", &round.direct), ("hfgate", &round.through)] {
            let share = |v: Option<f64>| v.map(|v| format!("{:.0} %", v * 100.0)).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "| {} | {name} | {} | {} | {} | {} | {} | {} | {:.1} s | {} / {} |",
                i + 1,
                f.events,
                ms(f.p50),
                ms(f.p99),
                ms(f.p999),
                ms(f.max),
                f.gaps,
                f.open_time.as_secs_f64(),
                share(f.bench_core_others),
                share(f.hfgate_core_others)
            );
        }
        let _ = writeln!(
            out,
            "| {} | **added** | | {} | **{}** | {} | | | | {} |",
            i + 1,
            signed_ms(round.added_p50()),
            signed_ms(round.added_p99()),
            signed_ms(i64::from(round.through.p999) - i64::from(round.direct.p999)),
            if round.disturbed() { "disturbed: others > 15 %" } else { "" }
        );
    }
    // The verdict uses the rounds no other process disturbed, when there are any.
    let calm: Vec<&Round> = rounds.iter().filter(|r| !r.disturbed()).collect();
    let (used, which) = if calm.is_empty() {
        (rounds.iter().collect::<Vec<_>>(), format!("all {} rounds (every one disturbed)", rounds.len()))
    } else {
        let which = format!("{} undisturbed round(s) of {}", calm.len(), rounds.len());
        (calm, which)
    };
    let med = |f: &dyn Fn(&Round) -> i64| median(used.iter().map(|r| f(r)).collect());
    let added_p99 = med(&|r| r.added_p99());
    let _ = writeln!(
        out,
        "\n| median of {} | p50 | p99 |\n|---|---:|---:|\n| direct | {} | {} |\n| through hfgate | {} | {} |\n| **added by hfgate** | {} | **{}** |\n",
        which,
        signed_ms(med(&|r| i64::from(r.direct.p50))).trim_start_matches('+'),
        signed_ms(med(&|r| i64::from(r.direct.p99))).trim_start_matches('+'),
        signed_ms(med(&|r| i64::from(r.through.p50))).trim_start_matches('+'),
        signed_ms(med(&|r| i64::from(r.through.p99))).trim_start_matches('+'),
        signed_ms(med(&|r| r.added_p50())),
        signed_ms(added_p99),
    );

    out.push_str("| round | hfgate VmRSS idle | with all streams open (max) | 2 s after closing | per open stream | hfgate CPU |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|\n");
    for (i, round) in rounds.iter().enumerate() {
        let cpu = round
            .cpu_seconds
            .map(|c| format!("{:.1} % of a core", 100.0 * c / options.measure.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} KiB | {cpu} |",
            i + 1,
            mib(round.rss_idle),
            mib(round.rss_open),
            mib(round.rss_after),
            round.per_stream_kib(n)
        );
    }
    let per_stream = rounds.iter().map(|r| r.per_stream_kib(n)).fold(0.0, f64::max);
    let p99_met = added_p99 < 2000;
    let memory_met = per_stream < 64.0;
    let verdict = |met: bool| if met { "met" } else { "NOT MET" };
    let _ = writeln!(out, "\n| requirement | measured | verdict |\n|---|---:|---|");
    let _ = writeln!(
        out,
        "| p99 added latency < 2 ms (median, as above) | {} | {} |",
        signed_ms(added_p99),
        verdict(p99_met)
    );
    let _ = writeln!(
        out,
        "| memory per open stream < 64 KiB (largest round) | {per_stream:.1} KiB | {} |\n",
        verdict(memory_met)
    );
    let audit_ok = audit_lines == requests;
    let _ = writeln!(
        out,
        "hfgate's audit file: {audit_lines} lines for {requests} requests{}.",
        if audit_ok { "" } else { " (MISMATCH)" }
    );
    let lost = rounds.iter().any(|r| r.direct.gaps + r.through.gaps > 0);
    (out, audit_ok && !lost)
}

// --------------------------------------------------------------------------------------------- run

async fn run(options: Options) -> anyhow::Result<bool> {
    now_us();
    // Per stream: the client's socket, the upstream's, and hfgate's two; plus slack.
    let needed = options.streams as u64 * 2 + 64;
    if let Some(limit) = open_files_limit()
        && limit < needed
    {
        bail!("the open files limit is {limit}; {} streams need {needed}: raise it with ulimit -n", options.streams);
    }
    if !options.hfgate.is_file() {
        bail!("no hfgate binary at {} (build it with cargo build --release)", options.hfgate.display());
    }

    let key = SigningKey::generate(Algorithm::ES256).context("cannot generate a key")?;
    let jwks = Bytes::from(json!({"keys": [key.public_jwk()]}).to_string());
    let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot bind the upstream")?;
    let upstream_addr = listener.local_addr()?;
    tokio::spawn(serve_upstream(listener, Arc::new(Upstream { jwks, interval: options.interval })));

    // One token per stream, as if each stream were another caller.
    let now = unix_now();
    let tokens = (0..options.streams)
        .map(|i| {
            let claims = json!({
                "iss": format!("http://{upstream_addr}"),
                "aud": AUDIENCE,
                "sub": format!("stream-{i}"),
                "groups": ["bench"],
                "iat": now,
                "exp": now + 3600,
            });
            key.sign_jwt(&json!({"typ": "JWT"}), &claims).context("cannot sign a token")
        })
        .collect::<anyhow::Result<Vec<String>>>()?;

    eprintln!(
        "streams: {} streams, one event every {} ms each; {} round(s) of {} s warm-up + {} s measured per path",
        options.streams,
        options.interval.as_millis(),
        options.rounds,
        options.warmup.as_secs(),
        options.measure.as_secs()
    );
    let mut hfgate = start_hfgate(&options, upstream_addr)?;
    wait_ready(&mut hfgate).await?;
    let pid = hfgate.pid();
    // The path is authenticated (no token: 401) and streams (a token: events arrive).
    let (status, _) = http_get(hfgate.proxy, "/stream?i=0&n=1", None).await.context("hfgate without a token")?;
    if status != StatusCode::UNAUTHORIZED {
        bail!("hfgate answered {status} to a request without a token; expected 401");
    }
    let warm =
        Options { streams: 10, warmup: Duration::from_secs(1), measure: Duration::from_secs(1), ..options.clone() };
    measure_path(&warm, hfgate.proxy, Some(&tokens[..10]), None).await.context("hfgate warm-up")?;

    // Direct and through hfgate alternate, so a noisy moment on a shared machine spoils one round, not
    // one path; the verdicts use the median round.
    let mut rounds = Vec::new();
    for round in 1..=options.rounds {
        eprintln!("streams: round {round}: direct to the upstream at {upstream_addr}");
        let (direct, _) = measure_path(&options, upstream_addr, None, None).await.context("direct")?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle = rss_kib(pid).context("cannot read hfgate's VmRSS")?;
        eprintln!("streams: round {round}: through hfgate at {} (VmRSS {rss_idle} KiB idle)", hfgate.proxy);
        let (through, samples) =
            measure_path(&options, hfgate.proxy, Some(&tokens), Some(pid)).await.context("through hfgate")?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = rss_kib(pid).unwrap_or(0);
        let rss_open = samples.rss_kib.iter().copied().max().unwrap_or(0);
        rounds.push(Round { direct, through, rss_idle, rss_open, rss_after, cpu_seconds: samples.cpu_seconds });
    }
    hfgate.stop()?;
    // Requests hfgate served: the unauthenticated check, the warm-up's 10 streams, the measured ones.
    let requests = 1 + 10 + options.streams * options.rounds;
    let (text, ok) = report(&options, &rounds, count_lines(&hfgate.audit), requests);
    print!("{text}");
    Ok(ok)
}
