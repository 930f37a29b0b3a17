//! The `eventgate` command line: test-pattern, key, serve and genconfig (the first hour:
//! `genconfig` writes a configuration that `serve --config` runs with, its printed key and
//! curl line work, and the README's configuration block loads as written).

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

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "eventgate-genconfig-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// One HTTP/1.1 request over a plain socket; returns the status code and the body.
fn http(port: u16, request: &str) -> (u16, String) {
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
        let answer = http(
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
        http(
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
