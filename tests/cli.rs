//! The `eventgate` command line: test-pattern, key, serve and genconfig (the first hour:
//! `genconfig` writes a configuration that `serve --config` runs with, its printed key and
//! curl line work, and the README's configuration block loads as written).

use crate::sources_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventgate_protocol::header::encode_base64;

const BIN: &str = env!("CARGO_BIN_EXE_eventgate");

/// The command with no EVENTGATE_* variables inherited from the environment.
fn eventgate() -> Command {
    without_eventgate_variables(Command::new(BIN))
}

fn without_eventgate_variables(mut command: Command) -> Command {
    for (name, _) in std::env::vars() {
        if name.starts_with("EVENTGATE_") {
            command.env_remove(name);
        }
    }
    command.env("EVENTGATE_LOG", "warn");
    command
}

fn test_pattern(pattern: &str, event: &str) -> (Option<i32>, String, String) {
    let output = eventgate()
        .args(["test-pattern", "--pattern", pattern, "--event", event])
        .output()
        .expect("run eventgate");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn test_pattern_true_false_invalid() {
    let event = r#"{"source":"orders","detail":{"price":12.5}}"#;
    let (code, stdout, _) = test_pattern(
        r#"{"source":["orders"],"detail":{"price":[{"numeric":[">",10]}]}}"#,
        event,
    );
    assert_eq!((code, stdout.trim()), (Some(0), "true"));
    let (code, stdout, _) = test_pattern(r#"{"source":["billing"]}"#, event);
    assert_eq!((code, stdout.trim()), (Some(1), "false"));
    let (code, stdout, stderr) = test_pattern(r#"{"detail":{"n":[{"numeric":[">"]}]}}"#, event);
    assert_eq!(code, Some(2), "stdout {stdout:?} stderr {stderr:?}");
    assert!(stdout.trim().is_empty());
    assert!(stderr.contains("invalid pattern"), "{stderr}");
    let (code, _, stderr) = test_pattern(r#"{"source":["orders"]}"#, "not json");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("invalid event"), "{stderr}");
}

#[test]
fn key_prints_the_api_key() {
    let output = eventgate()
        .args(["key", "--stack-id", "S-123", "--app-version", "V-9"])
        .output()
        .expect("run eventgate");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        encode_base64(b"V-9:S-123")
    );
    let output = eventgate()
        .args(["key", "--stack-id", "S-123"])
        .output()
        .expect("run eventgate");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        encode_base64(b"S-123")
    );
}

#[test]
fn serve_with_a_bad_config_exits_64() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("eventgate-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "dev = true\nno_such_key = 1\n").expect("write config");
    let output = eventgate()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run eventgate");
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        output.status.code(),
        Some(64),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_key"));

    // A config file that does not exist is a configuration error too.
    let output = eventgate()
        .args(["serve", "--config", "/nonexistent/eventgate.toml"])
        .output()
        .expect("run eventgate");
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn serve_dev_prints_the_address_and_key() {
    let mut child = eventgate()
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn eventgate serve");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.starts_with("api key: ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let outcome = (|| {
        let first = lines.first().ok_or("no output")?;
        let address = first
            .strip_prefix("listening on http://127.0.0.1:")
            .ok_or_else(|| format!("first line is {first:?}"))?;
        let port: u16 = address
            .parse()
            .map_err(|_| format!("no port in {first:?}"))?;
        if port == 0 {
            return Err("port 0 printed".to_owned());
        }
        let key = lines
            .iter()
            .find_map(|l| l.strip_prefix("api key: "))
            .ok_or_else(|| format!("no api key line in {lines:?}"))?;
        if key.trim().is_empty() {
            return Err("empty api key".to_owned());
        }
        // The server really listens there.
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("cannot connect to port {port}: {e}"))?;
        Ok::<(), String>(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    if let Err(message) = outcome {
        panic!("{message}; output: {lines:?}");
    }
}

/// Started with a soft open-file limit of 256, the server raises it to the hard limit.
#[cfg(target_os = "linux")]
#[test]
fn serve_raises_its_soft_open_file_limit_to_the_hard_one() {
    let mut child = without_eventgate_variables(Command::new("sh"))
        .arg("-c")
        .arg(format!(
            "ulimit -S -n 256 && exec {BIN} serve --dev --listen 127.0.0.1:0"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let mut first = String::new();
    let read = child
        .stdout
        .take()
        .map(|stdout| BufReader::new(stdout).read_line(&mut first));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(read, Some(Ok(n)) if n > 0), "no output: {read:?}");
    assert!(first.starts_with("listening on "), "{first}");
    let limits = limits.expect("read /proc/<pid>/limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open-files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert_eq!(numbers[0], numbers[1], "soft limit not raised: {line}");
    assert_ne!(numbers[0], "256", "{line}");
}

/// A file under the test target directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("eventgate-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every configuration error exits 64 naming its key, before anything is printed on stdout
/// (a script waiting for `listening on` must not think the server started).
#[test]
fn config_errors_name_their_key_and_exit_64_before_the_first_line() {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = TempFile::new("cert.pem", &generated.cert.pem());
    let garbage = TempFile::new("garbage.pem", "not a certificate\n");
    let redis = "kind = \"redis_streams\"\nurl = \"redis://127.0.0.1:1/\"\nstreams = [\"s\"]\ngroup = \"g\"\nconsumer = \"c\"";
    /// A configuration file, extra environment variables, what stderr must name.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "dev = true\nstack_id = \"sha256:1234\"\n".into(),
            vec![],
            vec!["stack_id", "64 hex digits"],
        ),
        (
            "dev = true\ningest_tokens = [\"fine\", \"sha256:xyz\"]\n".into(),
            vec![],
            vec!["ingest_tokens (entry 2)"],
        ),
        (
            format!("dev = true\n[[sources]]\nname = \"orders\"\n{redis}\n[[sources]]\nname = \"users\"\n{redis}\nbatch = 5\n"),
            vec![],
            vec!["[[sources]] entry 2 (\"users\")", "batch"],
        ),
        (
            "dev = true\n[[sources]]\nname = \"certs\"\nkind = \"amqp\"\nurl = \"amqp://127.0.0.1:1/%2f\"\nexchange = \"x\"\nqueue = \"q\"\nca_file = \"/nonexistent/ca.pem\"\n".into(),
            vec![],
            vec!["[[sources]] entry 1 (\"certs\")", "ca_file", "/nonexistent/ca.pem"],
        ),
        (
            "dev = true\n[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n".into(),
            vec![],
            vec!["tls.cert", "/nonexistent/cert.pem"],
        ),
        (
            format!("dev = true\n[tls]\ncert = {:?}\nkey = \"/nonexistent/key.pem\"\n", cert.path()),
            vec![],
            vec!["tls.key", "/nonexistent/key.pem"],
        ),
        (
            format!("dev = true\n[tls]\ncert = {:?}\nkey = {:?}\n", garbage.path(), garbage.path()),
            vec![],
            vec!["tls.cert", "no PEM certificate"],
        ),
        (
            "dev = true\n".into(),
            vec![("EVENTGATE_LOG_FORMAT", "xml")],
            vec!["log_format", "xml"],
        ),
        (
            "dev = true\ndrain_period = \"forever\"\n".into(),
            vec![],
            vec!["drain_period", "forever"],
        ),
        (
            format!("dev = true\n[[sources]]\nname = \"orders\"\n{redis}\n[[sources]]\nname = \"things\"\nkind = \"nats_jetstream\"\nurl = \"::nats\"\nstream = \"S\"\nsubjects = [\"s.>\"]\ndurable = \"d\"\n"),
            vec![],
            vec!["[[sources]] entry 2 (\"things\")", "url", "::nats"],
        ),
        (
            "dev = true\n[cluster]\nbackend = \"redis\"\nurl = \"bogus\"\n".into(),
            vec![],
            vec!["cluster.url", "bogus"],
        ),
        (
            "dev = true\nlisten = \"127.0.0.1:99999\"\n".into(),
            vec![],
            vec!["listen"],
        ),
    ];
    for (index, (config, environment, needles)) in cases.iter().enumerate() {
        let file = TempFile::new(&format!("case-{index}.toml"), config);
        let output = eventgate()
            .args(["serve", "--config", &file.path()])
            .envs(environment.iter().copied())
            .output()
            .expect("run eventgate");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{config}\nstderr: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "{config}\nprinted before failing: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{config}\n{needle:?} not in: {stderr}"
            );
        }
    }
}

/// A spawned `eventgate serve`, its stdout and stderr collected as they come.
struct Running {
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// `eventgate serve ARGS` with these variables set (`None`: removed).
    fn serve(args: &[&str], environment: &[(&str, Option<&str>)]) -> Running {
        let mut command = eventgate();
        command.arg("serve").args(args);
        for (name, value) in environment {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        Running::start(command)
    }

    fn start(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn eventgate serve");
        let mut readers = Vec::new();
        let mut collect = |stream: Box<dyn std::io::Read + Send>| {
            let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = buffer.clone();
            readers.push(std::thread::spawn(move || {
                let mut stream = stream;
                let mut chunk = [0u8; 4096];
                while let Ok(read) = stream.read(&mut chunk) {
                    if read == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend_from_slice(&chunk[..read]);
                }
            }));
            buffer
        };
        let stdout = collect(Box::new(child.stdout.take().expect("stdout")));
        let stderr = collect(Box::new(child.stderr.take().expect("stderr")));
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn text(buffer: &std::sync::Mutex<Vec<u8>>) -> String {
        String::from_utf8_lossy(
            &buffer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }

    /// Waits until stdout (or stderr) holds `needle`; panics with both after 20 s.
    fn wait_for(&self, on_stderr: bool, needle: &str) -> String {
        let buffer = if on_stderr {
            &self.stderr
        } else {
            &self.stdout
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = Self::text(buffer);
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never came; stdout: {}\nstderr: {}",
                Self::text(&self.stdout),
                Self::text(&self.stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port of the `listening on http://127.0.0.1:PORT` line.
    fn port(&self) -> u16 {
        let text = self.wait_for(false, "\n");
        let first = text.lines().next().unwrap_or_default();
        first
            .strip_prefix("listening on http://127.0.0.1:")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("first line is {first:?}"))
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(self) -> (Option<i32>, Vec<u8>, Vec<u8>) {
        self.sigterm();
        self.wait_exit()
    }

    /// Waits (at most 30 s) for the exit; returns the exit code, stdout and stderr.
    fn wait_exit(mut self) -> (Option<i32>, Vec<u8>, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "no exit 30 s after SIGTERM; stderr: {}",
                    Self::text(&self.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let take = |buffer: &std::sync::Mutex<Vec<u8>>| {
            std::mem::take(
                &mut *buffer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        };
        (status.code(), take(&self.stdout), take(&self.stderr))
    }
}

impl Running {
    fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `EVENTGATE_LOG_FORMAT=json`: every log line on stderr is a JSON object. With `--dev`'s
/// default filter, each accepted event is logged with the number of connections it
/// matched, and a refused entry with its message. Nothing written to the pipes holds an
/// escape byte.
#[test]
fn json_logs_are_json_lines_and_dev_mode_logs_events() {
    let running = Running::serve(
        &["--dev", "--listen", "127.0.0.1:0"],
        &[
            ("EVENTGATE_LOG", None),
            ("EVENTGATE_LOG_FORMAT", Some("json")),
        ],
    );
    let port = running.port();
    let (status, _) = http(
        port,
        "POST",
        "/events",
        r#"[{"source":"orders","detail-type":"created","detail":{"n":1}},{"source":"orders","detail":{"n":2}}]"#,
    );
    assert_eq!(status, 200);
    running.wait_for(true, "ingest refused");
    running.wait_for(true, "event dispatched");
    let (code, stdout, stderr) = running.terminate();
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&stderr));
    assert!(
        !stdout.contains(&0x1b) && !stderr.contains(&0x1b),
        "escape bytes in a pipe"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&stderr)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    assert!(lines
        .iter()
        .all(|line| line["level"].is_string() && line["timestamp"].is_string()));
    let dispatched = lines
        .iter()
        .find(|line| line["message"] == "event dispatched")
        .expect("an event dispatched line");
    assert_eq!(dispatched["source"], "orders");
    assert_eq!(dispatched["detail_type"], "created");
    assert_eq!(dispatched["connections"], 0);
    let refused = lines
        .iter()
        .find(|line| line["message"] == "ingest refused")
        .expect("an ingest refused line");
    assert_eq!(refused["code"], "invalid_argument");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("detail-type")),
        "{refused}"
    );
}

/// Text logs into a pipe (a file, `docker logs`, journald) carry no colour codes.
#[test]
fn text_logs_into_a_pipe_have_no_escape_bytes() {
    let running = Running::serve(
        &["--dev", "--listen", "127.0.0.1:0"],
        &[("EVENTGATE_LOG", Some("info"))],
    );
    // SIGTERM right after the first line: handled (exit 0), not the default action.
    running.port();
    let (code, stdout, stderr) = running.terminate();
    assert_eq!(code, Some(0));
    let text = String::from_utf8_lossy(&stderr);
    assert!(text.contains(" INFO "), "{text}");
    assert!(
        !stdout.contains(&0x1b) && !stderr.contains(&0x1b),
        "{text:?}"
    );
}

/// After SIGTERM the server keeps answering for `drain_period`: `/readyz` says 503
/// `draining` instead of the connection being refused; then it exits 0.
#[test]
fn sigterm_drains_with_readyz_503_then_exits_0() {
    let running = Running::serve(
        &["--dev", "--listen", "127.0.0.1:0"],
        &[("EVENTGATE_DRAIN_PERIOD", Some("3s"))],
    );
    let port = running.port();
    assert_eq!(http(port, "GET", "/readyz", "").0, 200);
    running.sigterm();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = http(port, "GET", "/readyz", "");
        if status != 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let (code, _, stderr) = running.wait_exit();
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&stderr));
}

/// A clean SIGTERM with an AMQP source connected logs no ERROR (lapin's `invalid channel
/// state: Closing` was one): the source closes its channels, then the connection.
#[test]
fn sigterm_with_an_amqp_source_logs_no_error() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if !runtime.block_on(sources_common::broker_available(
        "rabbitmq",
        "127.0.0.1:5672",
    )) {
        return;
    }
    let config = TempFile::new(
        "amqp.toml",
        "dev = true\nlisten = \"127.0.0.1:0\"\n[[sources]]\nkind = \"amqp\"\nname = \"certs\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nexchange = \"eventgate-cli-sigterm\"\nqueue = \"eventgate-cli-sigterm\"\n",
    );
    let running = Running::serve(
        &["--config", &config.path()],
        &[("EVENTGATE_LOG", Some("info"))],
    );
    running.wait_for(true, "connected to amqp");
    let (code, _, stderr) = running.terminate();
    let text = String::from_utf8_lossy(&stderr);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("source stopped"), "{text}");
    assert!(
        !text.lines().any(|line| line.contains("ERROR")),
        "an ERROR on a clean shutdown: {text}"
    );
}

/// A second SIGTERM (or Ctrl-C) during a long drain exits at once, with code 1.
#[test]
fn a_second_sigterm_cuts_the_drain_short() {
    let running = Running::serve(
        &["--dev", "--listen", "127.0.0.1:0"],
        &[("EVENTGATE_DRAIN_PERIOD", Some("10m"))],
    );
    let port = running.port();
    running.sigterm();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(port, "GET", "/readyz", "").0 == 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http(port, "GET", "/readyz", "").0, 503, "draining");
    let (code, _, stderr) = running.terminate();
    let text = String::from_utf8_lossy(&stderr);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("second signal"), "{text}");
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "eventgate-genconfig-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// One HTTP/1.1 request over a plain socket; returns the status code and the body.
fn http_raw(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Kills the server when the test ends, passing or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn genconfig_writes_a_configuration_that_serves() {
    let dir = scratch_dir();
    let path = dir.join("eventgate.toml");
    let output = eventgate()
        .args(["genconfig", "--output"])
        .arg(&path)
        .output()
        .expect("run genconfig");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let text = std::fs::read_to_string(&path).expect("the file was written");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"))
            .to_owned()
    };
    let key = line("api key: ");
    let curl = line("publish: ");
    let token = curl
        .split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a bearer token in the curl line")
        .to_owned();
    assert!(text.contains(&token), "the printed token is the file's");

    // The key is base64("<app version id>:<stack id>") of the file's values.
    let value: toml::Table = toml::from_str(&text).expect("the file is TOML");
    let stack_id = value["stack_id"].as_str().expect("stack_id");
    let app_version = value["app_version_ids"][0].as_str().expect("app version");
    assert_eq!(
        key,
        eventgate_protocol::header::api_key(stack_id, Some(app_version))
    );

    // A second run does not overwrite it.
    let again = eventgate()
        .args(["genconfig", "--output"])
        .arg(&path)
        .output()
        .expect("run genconfig again");
    assert_ne!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&path).expect("file"), text);

    // `serve --config` starts with it and answers.
    let mut child = eventgate()
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("first line");
    let port: u16 = first
        .trim()
        .strip_prefix("listening on http://127.0.0.1:")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("first line {first:?}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, _) = loop {
        let answer = http_raw(
            port,
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        );
        if answer.0 == 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200);

    // The printed token publishes; a wrong one does not.
    let body = r#"{"source":"demo","detail-type":"hello","detail":{"n":1}}"#;
    let publish = |token: &str| {
        http_raw(
            port,
            &format!(
                "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
                 Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, answer) = publish(&token);
    assert_eq!(status, 200, "{answer}");
    let (status, _) = publish("not-the-token");
    assert_eq!(status, 403);
    drop(server);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn genconfig_prints_to_stdout_with_a_dash() {
    let output = eventgate()
        .args(["genconfig", "--output", "-", "--listen", "0.0.0.0:9000"])
        .output()
        .expect("run genconfig");
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    let config = eventgate::config::load(Some(&text), Vec::new(), Vec::new()).expect("loads");
    assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("api key: "), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:9000/events"), "{stderr}");
}

/// The ```toml block under "## Configuration" in README.md, as a user would copy it.
fn readme_configuration_block() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .expect("a Configuration section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a toml block");
    block.to_owned()
}

#[test]
fn the_readme_configuration_block_loads_as_written() {
    let block = readme_configuration_block();
    let config = eventgate::config::load(Some(&block), Vec::new(), Vec::new())
        .unwrap_or_else(|error| panic!("{error}\n{block}"));
    assert!(!config.dev);
    assert!(config.tls.is_none(), "TLS needs files: keep it commented");
    assert!(config.stack_id.is_some());
    assert!(!config.ingest_tokens.is_empty());
    assert!(!config.sources.is_empty() && config.cluster.is_some());
}
