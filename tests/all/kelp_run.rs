//! `kelp run`, as a user types it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use kelp_tests::artifacts::{COUNTER, CRASHY, HELLO, HELLO_P1, MEMHOG};
use kelp_tests::binary;

fn kelp(args: &[&str]) -> Output {
    kelp_cmd(args).output().unwrap()
}

fn kelp_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("kelp"));
    cmd.args(args)
        .env_remove("KELP_LOG")
        .env_remove("KELP_ALLOCATOR");
    cmd
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn runs_a_component_and_prints_its_greeting() {
    let cache = tempfile::tempdir().unwrap();
    let out = kelp(&["run", HELLO, "--cache-dir", cache.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Hello, world! Greetings from a WebAssembly component.\n"
    );
    assert_eq!(stderr(&out), "");
}

#[test]
fn passes_env_and_args_and_exits_with_the_service_status() {
    let out = kelp(&["run", HELLO_P1, "--env", "EXIT_CODE=3", "--", "Kelp"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Hello, Kelp! Greetings from a WebAssembly core module.\n"
    );
    assert!(
        stderr(&out).contains("exited with code 3"),
        "{}",
        stderr(&out)
    );

    let out = kelp(&["run", HELLO, "-e", "NAME=fleet", "--arg", "device"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).starts_with("Hello, device!"),
        "{}",
        stdout(&out)
    );
    let out = kelp(&["run", HELLO, "-e", "NAME=fleet"]);
    assert!(
        stdout(&out).starts_with("Hello, fleet!"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn stops_a_service_at_its_memory_limit() {
    let out = kelp(&["run", MEMHOG, "--memory", "16MiB"]);
    assert_eq!(out.status.code(), Some(137));
    assert!(
        stderr(&out).contains("`memhog` memory limit 16 MiB exceeded"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("memhog: holding 12 MiB"));
    assert!(!stdout(&out).contains("memhog: holding 16 MiB"));
}

#[test]
fn restarts_on_failure_as_asked() {
    let out = kelp(&[
        "run",
        CRASHY,
        "--restart",
        "on-failure:2",
        "--env",
        "CRASH_AFTER_MS=0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out).matches("crashy: up").count(),
        3,
        "{}",
        stdout(&out)
    );
}

#[test]
fn data_persists_between_runs() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    assert_eq!(stdout(&kelp(&["run", COUNTER, "--data", dir])), "count=1\n");
    assert_eq!(stdout(&kelp(&["run", COUNTER, "--data", dir])), "count=2\n");
    // Without --data, /data is fresh each time.
    assert_eq!(stdout(&kelp(&["run", COUNTER])), "count=1\n");
    assert_eq!(stdout(&kelp(&["run", COUNTER])), "count=1\n");
}

#[test]
fn the_second_run_uses_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let run = || {
        kelp_cmd(&["run", HELLO, "--cache-dir", dir])
            .env("KELP_LOG", "kelp_runtime=debug")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success());
    assert!(stderr(&first).contains("compiled"), "{}", stderr(&first));
    let second = run();
    assert!(second.status.success());
    assert!(!stderr(&second).contains("compiled"), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("compile cache hit"),
        "{}",
        stderr(&second)
    );
}

/// Each bad input: one clear error naming the file and the reason, a non-zero
/// exit, and no panic.
#[test]
fn bad_inputs_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    std::fs::write(p("notes.wasm"), "these are not instructions").unwrap();
    let hello = std::fs::read(HELLO).unwrap();
    std::fs::write(p("truncated.wasm"), &hello[..hello.len() / 3]).unwrap();
    let imports = wat::parse_str(
        r#"(component
             (import "acme:lasers/fire@1.0.0" (instance (export "fire" (func))))
           )"#,
    )
    .unwrap();
    std::fs::write(p("lasers.wasm"), imports).unwrap();
    let library = wat::parse_str("(component)").unwrap();
    std::fs::write(p("library.wasm"), library).unwrap();
    std::fs::write(p("empty.wasm"), b"").unwrap();

    let cases = [
        (p("notes.wasm"), "is not a WebAssembly file"),
        (p("truncated.wasm"), "is not a valid WebAssembly component"),
        (p("lasers.wasm"), "acme:lasers/fire@1.0.0"),
        (p("library.wasm"), "must export `wasi:cli/run`"),
        (p("empty.wasm"), "the file is empty"),
        (p("missing.wasm"), "No such file or directory"),
        (dir.path().to_str().unwrap().to_owned(), "it is a directory"),
    ];
    for (file, reason) in cases {
        let out = kelp(&["run", &file]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        assert!(err.starts_with("error: "), "{file}: {err}");
        assert!(err.contains(&format!("`{file}`")), "{file}: {err}");
        assert!(err.contains(reason), "{file}: expected `{reason}` in {err}");
        assert_eq!(err.lines().count(), 1, "{file}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn limit_address_space(cmd: &mut Command, bytes: u64) {
    // SAFETY: setrlimit is async-signal-safe, which is all pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// A board with little address space (a 39-bit VA, or a ulimit): the pool
/// does not fit, and the engine falls back to the on-demand allocator.
#[test]
fn falls_back_to_on_demand_where_the_pool_does_not_fit() {
    let mut cmd = kelp_cmd(&["run", HELLO]);
    cmd.env("KELP_LOG", "kelp_runtime=debug");
    limit_address_space(&mut cmd, 2 << 30);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("Hello, world!"));
    assert!(
        stderr(&out).contains("pooling allocator unavailable"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("allocator=on-demand"),
        "{}",
        stderr(&out)
    );

    // Asking for pooling there is an error that says why.
    let mut cmd = kelp_cmd(&["run", HELLO, "--allocator", "pooling"]);
    limit_address_space(&mut cmd, 2 << 30);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot create the pooling allocator"),
        "{}",
        stderr(&out)
    );

    // With room, auto picks pooling.
    let out = kelp_cmd(&["run", HELLO])
        .env("KELP_LOG", "kelp_runtime=debug")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("allocator=pooling"),
        "{}",
        stderr(&out)
    );
}
