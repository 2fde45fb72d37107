//! The binary's own surface, without a coordinator: help, usage errors, exit codes. (This test
//! also makes `cargo test --workspace` build `target/debug/payctl`, which the end-to-end tests in
//! `tests/tests/payctl.rs` run.)

use std::process::Command;

fn payctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_payctl"))
        .args(args)
        .env_remove("PAYCTL_API_KEY")
        .env_remove("PAYCTL_KEY_FILE")
        .env_remove("PAYCTL_SERVER")
        .output()
        .expect("run payctl")
}

#[test]
fn help_documents_the_exit_codes_and_the_key() {
    let help = payctl(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "PAYCTL_API_KEY",
        "--key-file",
        "Exit codes:",
        "3  refused",
        "4  failed",
        "5  `pay --wait`",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
}

#[test]
fn usage_errors_exit_2_before_any_call() {
    // No such flag: the key is never a flag.
    let flag = payctl(&["--api-key", "pk_secret", "status"]);
    assert_eq!(flag.status.code(), Some(2));
    // Exactly one decision.
    let both = payctl(&[
        "resolve",
        "o-1",
        "--charged",
        "--not-charged",
        "--note",
        "n",
    ]);
    assert_eq!(both.status.code(), Some(2));
    // An amount finer than the currency allows, found before connecting (nothing listens on
    // port 9 of this machine; a connection attempt would exit 4).
    let amount = payctl(&[
        "--server",
        "http://127.0.0.1:9",
        "pay",
        "--order",
        "o-1",
        "--amount",
        "1.001",
        "--currency",
        "EUR",
        "--customer",
        "c",
        "--method",
        "pm_card_visa",
    ]);
    assert_eq!(amount.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&amount.stderr).contains("--amount"));
}
