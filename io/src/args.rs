//! Command-line parsing shared by the binaries: a bad argument is one line on stderr.

use clap::error::ErrorKind;
use clap::{ArgMatches, Command, FromArgMatches};

/// Parses `command`'s arguments into `T`. Help and version print as clap prints them; a
/// bad argument prints one line (clap's first, with where to read more) and exits with 2.
pub fn parse_or_exit<T: FromArgMatches>(command: Command) -> T {
    let name = command.get_name().to_string();
    let parsed = command
        .try_get_matches()
        .and_then(|m: ArgMatches| T::from_arg_matches(&m));
    match parsed {
        Ok(args) => args,
        Err(e) => exit_with(&name, e),
    }
}

/// Prints `e` as [`parse_or_exit`] does and exits.
pub fn exit_with(name: &str, e: clap::Error) -> ! {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            eprintln!("{} (see {name} --help)", one_line(&e));
            std::process::exit(2)
        }
    }
}

/// clap's error as one line: its first, without colour.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("error: invalid arguments")
        .trim_end()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    #[command(name = "tool")]
    struct Args {
        #[arg(long, value_parser = clap::value_parser!(u64).range(5..=3600))]
        interval: Option<u64>,
    }

    #[test]
    fn a_bad_value_is_one_line_naming_the_flag_and_the_bounds() {
        let e = Args::command()
            .try_get_matches_from(["tool", "--interval", "1"])
            .expect_err("below the range");
        let line = one_line(&e);
        assert!(line.starts_with("error:"), "{line}");
        assert!(
            line.contains("--interval") && line.contains("5..=3600"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
