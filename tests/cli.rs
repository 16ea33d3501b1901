//! The `meshlet` binary: `check`, `run` with SIGTERM, the `registry` operator commands, and
//! `doctor`, `stat` and `tap` against a real Redis and a running meshlet.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_meshlet");

/// Whether one `billing` instance shows up in the registry within 10 s.
async fn billing_registers(redis: &RedisServer) -> bool {
    let mut conn = redis.conn();
    eventually(Duration::from_secs(10), || {
        let n: u64 = redis::cmd("ZCARD")
            .arg("mesh:svc:billing")
            .query(&mut conn)
            .unwrap_or(0);
        async move { n == 1 }
    })
    .await
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn check_accepts_the_example_and_demo_configs() {
    // Under --strict: the examples show no setting `meshlet check` warns about.
    for file in ["config/meshlet.yaml", "config/demo.yaml"] {
        let out = Command::new(BIN)
            .args(["check", "--strict", "--config", file])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
}

#[test]
fn check_names_file_line_column_field_and_expectation() {
    let f = write_config(
        "service:\n  name: orders\ndefaults:\n  retry:\n    attempts: 3\n    backof: 100ms\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected_prefix = format!(
        "meshlet: {}:6:5: defaults.retry: unknown field `backof`",
        f.path().display()
    );
    assert!(err.starts_with(&expected_prefix), "{err}");
    assert!(
        err.contains("expected one of") && err.contains("`backoff`"),
        "{err}"
    );

    let f = write_config(
        "service:\n  name: orders\nregistry:\n  redis: \"${MESHLET_CLI_TEST_UNSET}\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(f.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":4:") && err.contains("MESHLET_CLI_TEST_UNSET"),
        "{err}"
    );
}

#[test]
fn the_config_path_comes_from_meshlet_config_when_not_given() {
    let f = write_config("service: {name: orders}\n");
    let out = Command::new(BIN)
        .arg("check")
        .env("MESHLET_CONFIG", f.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sigterm_deregisters_drains_and_exits_zero() {
    let redis = RedisServer::start();
    let app = Upstream::start("app").await;
    let (inbound, outbound, api, telemetry) = (free_port(), free_port(), free_port(), free_port());
    let f = write_config(&format!(
        "service: {{name: billing, app: \"http://{}\"}}\nworkers: 1\nshutdown_grace: 3s\nlisten: {{outbound: 127.0.0.1:{outbound}, inbound: 127.0.0.1:{inbound}, api: 127.0.0.1:{api}, telemetry: 127.0.0.1:{telemetry}}}\nregistry:\n  redis: {}\n",
        app.addr,
        redis.url()
    ));
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(f.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(billing_registers(&redis).await, "registered itself");
    let in_flight = tokio::spawn(async move {
        let addr = format!("127.0.0.1:{inbound}").parse().unwrap();
        get_host(addr, "billing", "/slow/700").await
    });
    assert!(eventually(Duration::from_secs(2), || async { app.hits() == 1 }).await);
    // The shell's own `kill` builtin: no extra package needed.
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "meshlet did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request finished");
    let mut conn = redis.conn();
    let n: u64 = redis::cmd("ZCARD")
        .arg("mesh:svc:billing")
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, 0, "deregistered");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("\"deregistered\"") || stderr.contains("deregistered"),
        "{stderr}"
    );
    assert!(
        stderr.lines().all(|l| l.starts_with('{')),
        "json log lines: {stderr}"
    );
}

#[tokio::test]
async fn registry_commands_register_list_and_deregister() {
    let redis = RedisServer::start();
    let url = redis.url();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("registry")
            .args(["--redis", &url])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&[
        "register",
        "--service",
        "search",
        "--address",
        "127.0.0.1:7700",
        "--id",
        "s-1",
        "--protocol",
        "h2",
    ]);
    let listed = run(&["list"]);
    assert!(
        listed.contains("search")
            && listed.contains("s-1")
            && listed.contains("127.0.0.1:7700")
            && listed.contains("h2"),
        "{listed}"
    );
    let mut conn = redis.conn();
    let protocol: String = redis::cmd("HGET")
        .arg("mesh:inst:search:s-1")
        .arg("protocol")
        .query(&mut conn)
        .unwrap();
    assert_eq!(protocol, "h2");
    run(&["deregister", "--service", "search", "--id", "s-1"]);
    assert!(!run(&["list"]).contains("s-1"));
}

/// Runs `meshlet ARGS` with piped output, without blocking the test's runtime (the
/// in-process sidecar's API and telemetry servers live on it).
async fn meshlet(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(args)
            .env_remove("MESHLET_CONFIG")
            .env_remove("NO_COLOR")
            .output(),
    )
    .await
    .expect("meshlet finished within 30s")
    .unwrap()
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn doctor_explains_a_stopped_redis_in_one_line() {
    let closed = free_port();
    let (outbound, api, telemetry) = (free_port(), free_port(), free_port());
    let f = write_config(&format!(
        "service: {{name: orders}}\nlisten: {{outbound: 127.0.0.1:{outbound}, api: 127.0.0.1:{api}, telemetry: 127.0.0.1:{telemetry}}}\nregistry: {{redis: \"redis://127.0.0.1:{closed}/0\"}}\n"
    ));
    let out = meshlet(&["doctor", "--config", f.path().to_str().unwrap()]).await;
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains('\x1b'), "piped output is plain: {text:?}");
    let about_redis: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refused") && l.to_lowercase().contains("redis"))
        .collect();
    assert_eq!(
        about_redis,
        [format!(
            "✗ redis        redis://127.0.0.1:{closed}/0 refused the connection (is redis-server running?)"
        )],
        "{text}"
    );
    // What needs Redis is skipped, not failed again for the same cause.
    assert!(text.lines().any(|l| l.starts_with("- clock ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("✓ config ")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "✗ outbound     127.0.0.1:{outbound} refused the connection"
        ))),
        "{text}"
    );
}

#[tokio::test]
async fn doctor_passes_every_check_against_a_running_meshlet() {
    let redis = RedisServer::start();
    let app = RecordingApp::ok().await;
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let f = write_config(&format!(
        "service: {{name: billing, app: \"http://{}\", health: /healthz, health_interval: 200ms}}\nworkers: 1\nlisten: {{outbound: 127.0.0.1:{}, inbound: 127.0.0.1:{}, api: 127.0.0.1:{}, telemetry: 127.0.0.1:{}}}\nregistry: {{redis: \"{}\"}}\n",
        app.addr, ports[0], ports[1], ports[2], ports[3], redis.url()
    ));
    let sidecar = sidecar_from_file(f.path()).await;
    until_ready(&sidecar).await;
    assert!(billing_registers(&redis).await, "registered itself");
    let out = meshlet(&["doctor", "-c", f.path().to_str().unwrap()]).await;
    let text = stdout_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let names = [
        "config",
        "outbound",
        "inbound",
        "api",
        "telemetry",
        "redis",
        "registration",
        "app",
        "clock",
    ];
    assert_eq!(lines.len(), names.len() + 1, "{text}");
    for (line, name) in lines.iter().zip(names) {
        assert!(
            line.starts_with(&format!("✓ {name:<12} ")),
            "{name}: {text}"
        );
    }
    let id = &sidecar.shared.instance_id;
    assert!(
        lines[6].contains(&format!("billing/{id} at 127.0.0.1:{}, up", ports[1])),
        "{text}"
    );
    assert!(lines[5].contains("(redis "), "{text}");
    assert!(lines[7].contains("/healthz answered 200"), "{text}");
    assert_eq!(lines[9], "9 passed", "{text}");
    assert!(app.recording.all().iter().any(|r| r.path == "/healthz"));
    sidecar.shutdown().await;
}

#[tokio::test]
async fn doctor_fails_on_a_missing_config_and_rejects_bad_arguments() {
    let out = meshlet(&["doctor", "--config", "/nonexistent/meshlet.yaml"]).await;
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.starts_with("✗ config       ") && first.contains("/nonexistent/meshlet.yaml"),
        "{text}"
    );
    assert_eq!(
        text.lines().count(),
        2,
        "the config line and the summary: {text}"
    );

    let out = meshlet(&["doctor"]).await;
    assert_eq!(out.status.code(), Some(2), "no --config is a usage error");
    let out = meshlet(&["tap", "--rate", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "--rate 0 is a usage error");
}

/// A meshlet calling `inventory` (a static entry) whose API `stat` and `tap` ask.
async fn caller_of_inventory(upstream: &Upstream) -> meshlet::sidecar::Sidecar {
    sidecar(&format!(
        "service: {{name: orders}}\nworkers: 1\nregistry: {{static: {{inventory: [\"{}\"]}}}}\n",
        upstream.addr
    ))
    .await
}

#[tokio::test]
async fn stat_piped_prints_one_table_and_exits() {
    let upstream = Upstream::start("inventory").await;
    let caller = caller_of_inventory(&upstream).await;
    let api = caller.addresses.api.to_string();
    // The first look starts the meshlet's sampler (docs/metrics.md): no window figures yet.
    let out = meshlet(&["stat", "--api", &api]).await;
    assert_eq!(out.status.code(), Some(0));
    let before = stdout_of(&out);
    let row = before.lines().find(|l| l.starts_with("inventory "));
    let cells: Vec<&str> = row.unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        cells.get(3),
        Some(&"-"),
        "no success rate without requests: {before}"
    );
    for _ in 0..3 {
        let answer = get_via(caller.addresses.outbound, "http://inventory/items").await;
        assert_eq!(answer.status, 200);
    }
    let out = meshlet(&["stat", "--api", &api]).await;
    let text = stdout_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains('\x1b'), "piped output is plain: {text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("orders  up "), "{text}");
    assert!(
        lines[1].starts_with("NAME")
            && lines[1].contains("BREAKER")
            && lines[1].ends_with("LIMITED"),
        "{text}"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with("inventory "))
        .unwrap_or_else(|| panic!("no inventory row: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "out", "{text}");
    assert_eq!(cells[3], "100.00%", "three 200s: {text}");
    assert_eq!(cells[6], "closed", "{text}");
    assert_eq!(cells[7], "1/0/0", "one static endpoint, up: {text}");

    // Nothing listens: one line on stderr, exit 1.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = meshlet(&["stat", "--api", &dead]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dead) && err.contains("refused the connection"),
        "{err}"
    );
    caller.shutdown().await;
}

#[tokio::test]
async fn tap_piped_shows_each_request_as_a_line() {
    use tokio::io::AsyncBufReadExt;
    let upstream = Upstream::start("inventory").await;
    let caller = caller_of_inventory(&upstream).await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["tap", "--api", &caller.addresses.api.to_string()])
        .args(["--service", "inventory"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The tap only sees requests after it connected: send until one shows, at most 50.
    let mut seen = None;
    for _ in 0..50 {
        let answer = get_via(caller.addresses.outbound, "http://inventory/items?secret=1").await;
        assert_eq!(answer.status, 200);
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await
        {
            seen = line.unwrap();
            break;
        }
    }
    let line = seen.expect("a tap line within 50 requests");
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cells[1..5],
        ["out", "inventory", "GET", "/items"],
        "{line}"
    );
    assert_eq!(cells[5], "200", "{line}");
    assert!(
        cells[6].ends_with("ms") || cells[6].ends_with('s'),
        "{line}"
    );
    assert_eq!(cells[7..9], ["1", "attempt"], "{line}");
    assert_eq!(cells[9], upstream.addr.to_string(), "{line}");
    assert!(!line.contains("secret"), "the query is never shown: {line}");
    child.kill().await.unwrap();
    caller.shutdown().await;
}

/// GET `path` with Host `inventory` through the outbound listener; `None` until it answers.
async fn try_get(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let req = http::Request::get(path)
        .header("host", "inventory")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .ok()?;
    let answer = tokio::time::timeout(Duration::from_secs(2), send(addr, req)).await;
    answer.ok()?.ok().map(|a| a.status.as_u16())
}

/// A one-worker `caller` config on free ports with `inventory` at `app`, and its outbound
/// port.
fn caller_config(app: &Upstream) -> (tempfile::NamedTempFile, u16) {
    let (outbound, api, telemetry) = (free_port(), free_port(), free_port());
    let f = write_config(&format!(
        "service: {{name: caller}}\nworkers: 1\nshutdown_grace: 1s\nlisten: {{outbound: 127.0.0.1:{outbound}, api: 127.0.0.1:{api}, telemetry: 127.0.0.1:{telemetry}}}\nregistry: {{static: {{inventory: [\"{}\"]}}}}\n",
        app.addr
    ));
    (f, outbound)
}

/// With the default log level (an access line per request) lines go through the log
/// buffer (docs/metrics.md, "Logs"): each shows up on stderr within about a second, and a
/// clean exit after SIGTERM writes every line still buffered, whole.
#[tokio::test]
async fn default_logging_shows_access_lines_within_a_second_and_all_of_them_on_exit() {
    let app = Upstream::start("inventory").await;
    let (f, outbound) = caller_config(&app);
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(f.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stderr read line by line on a thread, each line with the time it arrived.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let addr = format!("127.0.0.1:{outbound}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async move {
            try_get(addr, "/ready-probe").await == Some(200)
        })
        .await,
        "meshlet answers"
    );

    // One request: its access line arrives within the flush period (1 s) and some slack.
    let asked = Instant::now();
    assert_eq!(try_get(addr, "/one").await, Some(200));
    let mut seen = Vec::new();
    let arrived = loop {
        let left = Duration::from_secs(3).saturating_sub(asked.elapsed());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                let hit = line.contains("\"path\":\"/one\"");
                seen.push(line);
                if hit {
                    break at;
                }
            }
            Err(_) => panic!("no access line for /one within 3 s; stderr so far: {seen:?}"),
        }
    };
    assert!(
        arrived.duration_since(asked) < Duration::from_millis(1600),
        "the access line took {:?}",
        arrived.duration_since(asked)
    );

    // Many requests, then SIGTERM at once: every line is on stderr after the clean exit.
    const MANY: usize = 300;
    for i in 0..MANY {
        assert_eq!(try_get(addr, &format!("/many/{i}")).await, Some(200));
    }
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "meshlet did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    reader.join().unwrap(); // stderr closed: everything written was read
    seen.extend(rx.try_iter().map(|(_, line)| line));
    for line in &seen {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "a whole JSON line: {line}"
        );
    }
    let mut paths: Vec<&str> = seen
        .iter()
        .filter(|l| l.contains("\"meshlet::access\""))
        .filter_map(|l| l.split("\"path\":\"/many/").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(
        paths.len(),
        MANY,
        "one access line per request after the exit"
    );
}

/// stderr of a `meshlet run` started with `env` and `args` that answered one request for
/// `/probe` and then `/seen`, after its clean exit.
async fn stderr_after_one_request(env: &[(&str, &str)], args: &[&str]) -> String {
    let app = Upstream::start("inventory").await;
    let (f, outbound) = caller_config(&app);
    let mut child = Command::new(BIN)
        .args(args)
        .args(["run", "--config"])
        .arg(f.path())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut all);
        all
    });
    let addr = format!("127.0.0.1:{outbound}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async move {
            try_get(addr, "/probe").await == Some(200)
        })
        .await,
        "meshlet answers"
    );
    assert_eq!(try_get(addr, "/seen").await, Some(200));
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "meshlet did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.join().unwrap()
}

/// The access line's own JSON encoder (docs/metrics.md, "Logs") still obeys `RUST_LOG`, and
/// the pretty format still writes it through `tracing`.
#[tokio::test]
async fn access_lines_follow_rust_log_and_the_pretty_format() {
    let off = stderr_after_one_request(&[("RUST_LOG", "info,meshlet::access=off")], &[]).await;
    assert!(
        off.contains("\"level\":\"INFO\""),
        "other lines stay: {off}"
    );
    assert!(!off.contains("meshlet::access"), "no access line: {off}");

    let pretty =
        stderr_after_one_request(&[("RUST_LOG", "info")], &["--log-format", "pretty"]).await;
    let line = pretty
        .lines()
        .find(|l| l.contains("meshlet::access") && l.contains("/seen"))
        .unwrap_or_else(|| panic!("an access line for /seen: {pretty}"));
    assert!(!line.starts_with('{'), "pretty, not JSON: {line}");
}
