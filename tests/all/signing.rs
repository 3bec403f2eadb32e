//! `kelp key`, `kelp sign`, `kelp verify` and `kelp inspect` as a user types
//! them, and interop with the reference tool, `wasmsign2`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kelp_tests::artifacts::{HELLO, HELLO_P1};
use kelp_tests::binary;

use crate::registry::sha256;

const HELLO_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../sample-modules/hello/kelp.toml"
);
const HELLO_P1_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../sample-modules/hello-p1/kelp.toml"
);

/// The `wasmsign2` version `.ci/run` installs.
const WASMSIGN2_VERSION: &str = "0.2.8";

fn kelp<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(binary("kelp"))
        .args(args)
        .env_remove("KELP_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Asserts the command failed with exactly one `error:` line that mentions
/// every one of `needles`, and did not panic.
fn fails_with(o: Output, needles: &[&str]) -> String {
    let err = stderr(&o);
    assert!(!o.status.success(), "succeeded: {}", stdout(&o));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    err
}

/// A directory with a fresh key pair from `kelp key generate`.
struct Keys {
    dir: tempfile::TempDir,
    key_id: String,
}

impl Keys {
    fn generate() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let out = ok(kelp(&[
            "key".as_ref(),
            "generate".as_ref(),
            "-o".as_ref(),
            // Not there yet: `-o` creates it.
            dir.path().join("keys").as_os_str(),
        ]));
        let key_id = stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("key id:"))
            .unwrap()
            .trim()
            .to_owned();
        assert_eq!(key_id.len(), 24, "{}", stdout(&out));
        Keys { dir, key_id }
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("keys/kelp.key")
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("keys/kelp.pub")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Signs `input` into the key's directory as `name`, with `manifest`.
    fn sign(&self, input: &str, manifest: Option<&str>, name: &str) -> PathBuf {
        ok(self.sign_with(&self.secret(), input, manifest.map(Path::new), name));
        self.path(name)
    }

    /// `kelp sign --key <key>` of `input` into the key's directory as
    /// `name`, with `manifest`, whatever the outcome.
    fn sign_with(&self, key: &Path, input: &str, manifest: Option<&Path>, name: &str) -> Output {
        let mut args: Vec<std::ffi::OsString> = vec![
            "sign".into(),
            "--key".into(),
            key.into(),
            input.into(),
            "-o".into(),
            self.path(name).into(),
        ];
        if let Some(m) = manifest {
            args.extend(["--manifest".into(), m.into()]);
        }
        kelp(&args)
    }

    fn verify(&self, file: &Path) -> Output {
        verify(&[&self.public()], file)
    }
}

/// `kelp verify` of `file` with every one of `public_keys`.
fn verify(public_keys: &[&Path], file: &Path) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["verify".as_ref()];
    for key in public_keys {
        args.extend(["--public-key".as_ref(), key.as_os_str()]);
    }
    args.push(file.as_os_str());
    kelp(&args)
}

#[test]
fn signs_with_a_manifest_and_verifies_naming_the_signer() {
    let keys = Keys::generate();
    let signed = keys.sign(HELLO, Some(HELLO_MANIFEST), "hello.wasm");
    let out = ok(keys.verify(&signed));
    assert!(stdout(&out).contains(&format!("signed by key id {}", keys.key_id)));

    let out = ok(kelp(&[
        "inspect".as_ref(),
        signed.as_os_str(),
        "--output".as_ref(),
        "json".as_ref(),
    ]));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = std::fs::read(&signed).unwrap();
    let digest = sha256(&bytes);
    assert_eq!(info["digest"], digest.as_str());
    assert_eq!(info["kind"], "component");
    assert_eq!(info["manifest"]["name"], "hello");
    assert_eq!(info["manifest"]["kind"], "component");
    assert_eq!(info["manifest"]["memory"], 16 << 20);
    assert_eq!(info["signatures"][0]["key_id"], keys.key_id.as_str());
    assert_eq!(info["signatures"][0]["covers_contents"], true);

    let text = stdout(&ok(kelp(&["inspect".as_ref(), signed.as_os_str()])));
    assert!(
        text.contains("manifest:  hello 0.1.0 (component)"),
        "{text}"
    );
    assert!(text.contains(&digest), "{text}");
}

#[test]
fn one_flipped_byte_fails_verification() {
    let keys = Keys::generate();
    let signed = keys.sign(HELLO, Some(HELLO_MANIFEST), "hello.wasm");
    let mut bytes = std::fs::read(&signed).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let tampered = keys.path("tampered.wasm");
    std::fs::write(&tampered, &bytes).unwrap();
    fails_with(
        keys.verify(&tampered),
        &[
            "tampered.wasm",
            &format!("signature by key id {} does not verify", keys.key_id),
        ],
    );
}

#[test]
fn another_public_key_does_not_verify() {
    let (publisher, stranger) = (Keys::generate(), Keys::generate());
    let signed = publisher.sign(HELLO, None, "hello.wasm");
    fails_with(
        stranger.verify(&signed),
        &[
            "hello.wasm",
            "not signed by any of the given public keys",
            &publisher.key_id,
        ],
    );
}

#[test]
fn a_manifest_of_the_wrong_kind_is_refused() {
    let keys = Keys::generate();
    // Signing a component with a core module's manifest.
    let out = keys.sign_with(
        &keys.secret(),
        HELLO,
        Some(Path::new(HELLO_P1_MANIFEST)),
        "x.wasm",
    );
    fails_with(out, &["manifest says core module but file is a component"]);
    assert!(!keys.path("x.wasm").exists());

    // The header is outside the signature: swapping it keeps the signature
    // valid, and the signed manifest is what catches it.
    let signed = keys.sign(HELLO_P1, Some(HELLO_P1_MANIFEST), "p1.wasm");
    ok(keys.verify(&signed));
    let mut bytes = std::fs::read(&signed).unwrap();
    bytes[4..8].copy_from_slice(&[0x0d, 0x00, 0x01, 0x00]);
    let swapped = keys.path("swapped.wasm");
    std::fs::write(&swapped, &bytes).unwrap();
    fails_with(
        keys.verify(&swapped),
        &[
            "swapped.wasm",
            "manifest says core module but file is a component",
        ],
    );
}

#[test]
fn signed_services_still_run() {
    let keys = Keys::generate();
    let cache = tempfile::tempdir().unwrap();
    for (input, manifest, greeting) in [
        (
            HELLO,
            HELLO_MANIFEST,
            "Hello, world! Greetings from a WebAssembly component.\n",
        ),
        (
            HELLO_P1,
            HELLO_P1_MANIFEST,
            "Hello, world! Greetings from a WebAssembly core module.\n",
        ),
    ] {
        let signed = keys.sign(input, Some(manifest), "signed.wasm");
        let out = ok(kelp(&[
            "run".as_ref(),
            signed.as_os_str(),
            "--cache-dir".as_ref(),
            cache.path().as_os_str(),
        ]));
        assert_eq!(stdout(&out), greeting);
    }
}

#[test]
fn a_second_signer_adds_a_signature() {
    let (a, b) = (Keys::generate(), Keys::generate());
    let once = a.sign(HELLO, Some(HELLO_MANIFEST), "once.wasm");
    let twice = b.sign(once.to_str().unwrap(), None, "twice.wasm");
    let out = ok(verify(&[&a.public(), &b.public()], &twice));
    assert!(stdout(&out).contains(&a.key_id), "{}", stdout(&out));
    assert!(stdout(&out).contains(&b.key_id), "{}", stdout(&out));
    ok(a.verify(&twice));
}

#[test]
fn bad_inputs_get_one_clear_error() {
    let keys = Keys::generate();
    let not_wasm = keys.path("notes.wasm");
    std::fs::write(&not_wasm, "just some text\n").unwrap();
    fails_with(
        keys.verify(&not_wasm),
        &["notes.wasm", "not a WebAssembly file"],
    );
    fails_with(
        kelp(&["inspect".as_ref(), not_wasm.as_os_str()]),
        &["notes.wasm", "not a WebAssembly file"],
    );

    let signed = keys.sign(HELLO, Some(HELLO_MANIFEST), "hello.wasm");
    let bytes = std::fs::read(&signed).unwrap();
    let truncated = keys.path("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    fails_with(keys.verify(&truncated), &["truncated.wasm", "truncated"]);

    fails_with(
        keys.verify(Path::new(HELLO)),
        &["hello.wasm", "no signature section"],
    );
    fails_with(
        keys.verify(&keys.path("missing.wasm")),
        &["missing.wasm", "No such file"],
    );

    // A public key where the secret one belongs, and the other way round.
    let out = keys.sign_with(&keys.public(), HELLO, None, "x.wasm");
    fails_with(out, &["kelp.pub", "not a secret key file"]);
    let out = verify(&[&keys.secret()], &signed);
    fails_with(out, &["kelp.key", "not a public key file"]);

    let bad_manifest = keys.path("kelp.toml");
    std::fs::write(
        &bad_manifest,
        "name = \"hello\"\nversion = \"1\"\nkind = \"component\"\nmemroy = \"1MiB\"\n",
    )
    .unwrap();
    let out = keys.sign_with(&keys.secret(), HELLO, Some(&bad_manifest), "x.wasm");
    fails_with(out, &["kelp.toml", "memroy"]);

    // Keys are never overwritten.
    let out = kelp(&[
        "key".as_ref(),
        "generate".as_ref(),
        "--secret-key".as_ref(),
        keys.secret().as_os_str(),
        "--public-key".as_ref(),
        keys.path("other.pub").as_os_str(),
    ]);
    fails_with(out, &["kelp.key", "already exists"]);
}

/// The `wasmsign2` binary on PATH; fails the test, saying how to install it,
/// when it is missing.
fn wasmsign2() -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("wasmsign2"))
        .find(|p| p.is_file());
    let Some(bin) = found else {
        panic!(
            "`wasmsign2` is not on PATH; the interop tests need it: \
             cargo install --locked wasmsign2-cli --version {WASMSIGN2_VERSION}"
        );
    };
    Command::new(bin)
}

/// `wasmsign2 sign` of `input` into `output` with the secret key `secret`,
/// naming the key id of `public` (`-K`) when given.
fn wasmsign2_sign(input: &Path, output: &Path, secret: &Path, public: Option<&Path>) -> Output {
    let mut cmd = wasmsign2();
    cmd.arg("sign")
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(output)
        .arg("-k")
        .arg(secret);
    if let Some(public) = public {
        cmd.arg("-K").arg(public);
    }
    cmd.output().unwrap()
}

/// `wasmsign2 verify` of `file` with the public key `public`.
fn wasmsign2_verify(file: &Path, public: &Path) -> Output {
    wasmsign2()
        .arg("verify")
        .arg("-i")
        .arg(file)
        .arg("-K")
        .arg(public)
        .output()
        .unwrap()
}

#[test]
fn files_kelp_signs_verify_with_wasmsign2() {
    let keys = Keys::generate();
    let signed = keys.sign(HELLO, Some(HELLO_MANIFEST), "hello.wasm");
    let out = ok(wasmsign2_verify(&signed, &keys.public()));
    assert!(
        stdout(&out).contains("Signature is valid"),
        "{}",
        stdout(&out)
    );

    let stranger = Keys::generate();
    let out = wasmsign2_verify(&signed, &stranger.public());
    assert!(!out.status.success(), "wasmsign2 trusted the wrong key");
}

#[test]
fn files_wasmsign2_signs_verify_with_kelp() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("ws.key"), dir.path().join("ws.pub"));
    ok(wasmsign2()
        .arg("keygen")
        .arg("-k")
        .arg(&sk)
        .arg("-K")
        .arg(&pk)
        .output()
        .unwrap());

    // With a key id (`-K`) and without one.
    for (name, with_key_id) in [("with-id.wasm", true), ("without-id.wasm", false)] {
        let signed = dir.path().join(name);
        let key_id_from = with_key_id.then_some(pk.as_path());
        ok(wasmsign2_sign(Path::new(HELLO), &signed, &sk, key_id_from));
        let out = ok(verify(&[&pk], &signed));
        assert!(
            stdout(&out).contains("signed by key id"),
            "{}",
            stdout(&out)
        );
    }

    // Kelp signs what wasmsign2 signed, and both signatures hold for both
    // tools.
    let keys = Keys::generate();
    let both = keys.sign(
        dir.path().join("with-id.wasm").to_str().unwrap(),
        None,
        "both.wasm",
    );
    ok(verify(&[&pk], &both));
    ok(keys.verify(&both));
    ok(wasmsign2_verify(&both, &pk));
}

#[test]
fn keys_kelp_generates_sign_with_wasmsign2() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("a.key"), dir.path().join("a.pub"));
    ok(kelp(&[
        "key".as_ref(),
        "generate".as_ref(),
        "--secret-key".as_ref(),
        sk.as_os_str(),
        "--public-key".as_ref(),
        pk.as_os_str(),
    ]));
    let signed = dir.path().join("hello.wasm");
    ok(wasmsign2_sign(Path::new(HELLO), &signed, &sk, Some(&pk)));
    ok(verify(&[&pk], &signed));
}

/// `kelp run --public-key` runs only what that key signed.
#[test]
fn run_with_a_public_key_refuses_unsigned_and_tampered_files() {
    let keys = Keys::generate();
    let signed = keys.sign(HELLO, Some(HELLO_MANIFEST), "hello.signed.wasm");
    let public = keys.public();
    let run = |file: &Path| {
        kelp(&[
            "run".as_ref(),
            "--public-key".as_ref(),
            public.as_os_str(),
            file.as_os_str(),
        ])
    };
    let out = ok(run(&signed));
    assert!(
        stdout(&out).starts_with("Hello, world!"),
        "{}",
        stdout(&out)
    );

    fails_with(
        run(Path::new(HELLO)),
        &[
            HELLO,
            "is not signed by a trusted key",
            "no signature section",
        ],
    );

    let mut bytes = std::fs::read(&signed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = keys.path("tampered.wasm");
    std::fs::write(&tampered, bytes).unwrap();
    let err = fails_with(run(&tampered), &["is not signed by a trusted key"]);
    assert!(err.contains("tampered.wasm"), "{err}");

    // Signed, but by someone else.
    let stranger = Keys::generate();
    let theirs = stranger.sign(HELLO, Some(HELLO_MANIFEST), "theirs.wasm");
    fails_with(run(&theirs), &["is not signed by a trusted key"]);
}

/// A device given a trusted key runs the services that key signed and
/// refuses the rest, each with its reason, while the others keep running.
#[test]
fn kelpd_with_a_trusted_key_runs_only_signed_services() {
    let keys = Keys::generate();
    let signed = keys.sign(HELLO, Some(HELLO_MANIFEST), "hello.signed.wasm");
    let target = keys.path("local.toml");
    std::fs::write(
        &target,
        format!(
            "[services.signed]\nmodule = {:?}\nrestart = \"never\"\n\n[services.unsigned]\nmodule = {HELLO:?}\nrestart = \"never\"\n",
            signed.display().to_string()
        ),
    )
    .unwrap();
    let data = keys.path("var");
    let mut child = Command::new(binary("kelpd"))
        .arg("--local")
        .arg(&target)
        .arg("--data-dir")
        .arg(&data)
        .arg("--trusted-key")
        .arg(keys.public())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_path = data.join("status.json");
    let start = std::time::Instant::now();
    let states = loop {
        let status: serde_json::Value = std::fs::read(&status_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let state = |name: &str| {
            status["services"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
                .unwrap_or_default()
        };
        let (s, u) = (state("signed"), state("unsigned"));
        if s["state"] == "exited" && u["state"] == "failed" {
            break (s, u);
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "timed out: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(states.0["last_exit"]["code"], 0);
    let reason = states.1["last_exit"]["message"].as_str().unwrap();
    assert!(
        reason.contains("is not signed by a trusted key") && reason.contains("hello.wasm"),
        "{reason}"
    );
}
