//! The CLI reference page of the book, `docs/src/cli.md`, rendered from the
//! same clap definitions `kelp --help` prints, and a test that fails when
//! the page and the code disagree.

use clap::CommandFactory as _;

/// The page, relative to this crate.
const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/src/cli.md");

/// The whole page: an introduction, then the long help of `kelp` and of
/// every subcommand, depth first, each under a heading of its full name.
fn render() -> String {
    let mut cli = crate::Cli::command();
    cli.build();
    let mut page = String::from(
        "# CLI reference\n\
         \n\
         <!-- Generated from the code: do not edit by hand. -->\n\
         \n\
         Every `kelp` command with its `--help`, as the code defines it. The page is\n\
         checked by `cargo test -p kelp-cli`, which fails when it differs from the\n\
         code; after changing a command, regenerate it with\n\
         \n\
         ```sh\n\
         KELP_BLESS=1 cargo test -p kelp-cli cli_reference\n\
         ```\n",
    );
    section(&mut cli, "kelp", &mut page);
    page
}

fn section(cmd: &mut clap::Command, name: &str, page: &mut String) {
    // Values from this machine's environment (a token, a key path) belong
    // in no page.
    let mut cmd = std::mem::take(cmd).mut_args(|arg| arg.hide_env_values(true));
    let help = cmd.render_long_help().to_string();
    page.push_str(&format!(
        "\n## {name}\n\n```text\n{}\n```\n",
        help.trim_end()
    ));
    for sub in cmd.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_name = format!("{name} {}", sub.get_name());
        section(sub, &sub_name, page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_reference_matches_the_code() {
        let rendered = render();
        if std::env::var_os("KELP_BLESS").is_some() {
            std::fs::write(PAGE, &rendered).unwrap();
            return;
        }
        let current = std::fs::read_to_string(PAGE).unwrap_or_default();
        if current != rendered {
            let line = current
                .lines()
                .zip(rendered.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| current.lines().count().min(rendered.lines().count()));
            panic!(
                "docs/src/cli.md differs from the commands' --help (first at line {}: \
                 the page has {:?}, the code gives {:?}); regenerate it with \
                 `KELP_BLESS=1 cargo test -p kelp-cli cli_reference`",
                line + 1,
                current.lines().nth(line).unwrap_or(""),
                rendered.lines().nth(line).unwrap_or(""),
            );
        }
    }
}
